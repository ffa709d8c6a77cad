"""API tokens and roles: what a token looks like, how it is hashed, and a short-lived cache of checks.

A token is `protssl_<id>_<secret>`: a public 16-hex id (what `protssl token list` shows and
`revoke` takes) and 32 random bytes (urlsafe base64). The store keeps only the sha256 of the whole
token; the secret is printed once, when it is made. Roles are ordered: `read` may embed and
classify, `write` may also change classifiers, `admin` may do everything, token management included.
The store (`protssl.store.tokens`) holds the rows; the server's interceptor asks a `TokenVerifier`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from protssl.errors import AuthenticationError, InvalidInputError

if TYPE_CHECKING:
    import datetime as dt

__all__ = [
    "ROLES",
    "TOKEN_ENV",
    "Role",
    "StoredToken",
    "TokenVerifier",
    "check_role",
    "new_token",
    "role_allows",
    "token_id_of",
    "token_sha256",
]

Role = Literal["read", "write", "admin"]
ROLES: tuple[Role, ...] = ("read", "write", "admin")
"""From least to most: each role may do what the ones before it may."""

TOKEN_ENV = "PROTSSL_TOKEN"
"""The environment variable the SDK reads a token from when it is given none."""

_PREFIX = "protssl_"
_TOKEN = re.compile(r"protssl_([0-9a-f]{16})_[A-Za-z0-9_-]{43}")


@dataclass(frozen=True)
class StoredToken:
    """A token's row: never its secret, only the sha256 of the whole token."""

    id: str
    name: str
    role: Role
    secret_sha256: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def check_role(role: str) -> Role:
    """`role` if it is one of ROLES, else InvalidInputError naming them."""
    if role not in ROLES:
        raise InvalidInputError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    return role  # type: ignore[return-value]


def role_allows(have: Role, need: Role) -> bool:
    """Whether a token of role `have` may make a call that needs `need`."""
    return ROLES.index(have) >= ROLES.index(need)


def new_token() -> tuple[str, str]:
    """A fresh (token id, token): 64 bits of id, 256 bits of secret."""
    token_id = secrets.token_hex(8)
    return token_id, f"{_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"


def token_id_of(given: str) -> str:
    """The token id `given` names: itself (hex, either case), or the id inside a whole token
    (`protssl_<id>_<secret>`, what a user holding one is likely to paste)."""
    whole = _TOKEN.fullmatch(given.strip())
    return whole.group(1) if whole else given.strip().lower()


def token_sha256(token: str) -> str:
    """What the store keeps of a token: the hex sha256 of its UTF-8 bytes."""
    return hashlib.sha256(token.encode()).hexdigest()


class TokenVerifier:
    """Checks tokens against the store, remembering each answer for `ttl_s` seconds.

    A cache hit costs one sha256 and a dict lookup; a revoked token stops working within `ttl_s`.
    Unknown tokens are remembered too (a flood of one bad token does not reach the database), and
    at most `max_entries` answers are kept (least recently used dropped), so random tokens cannot
    grow it without bound. Malformed tokens are refused without a lookup.
    """

    def __init__(
        self,
        lookup: Callable[[str], StoredToken | None],
        *,
        ttl_s: float,
        max_entries: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s < 0 or max_entries < 1:
            raise InvalidInputError("ttl_s must be >= 0 and max_entries >= 1")
        self._lookup = lookup
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._answers: OrderedDict[str, tuple[float, StoredToken | None]] = OrderedDict()

    def __len__(self) -> int:
        """How many answers are remembered (expired ones until they are looked up again)."""
        return len(self._answers)

    def verify(self, token: str) -> StoredToken:
        """The active token's row, or AuthenticationError (malformed, unknown or revoked)."""
        if not _TOKEN.fullmatch(token):
            raise AuthenticationError(
                "malformed API token: expected protssl_<16 hex>_<43 characters>"
            )
        key = token_sha256(token)
        now = self._clock()
        with self._lock:
            cached = self._answers.get(key)
            if cached is not None and cached[0] > now:
                self._answers.move_to_end(key)
                found = cached[1]
            else:
                cached = None
        if cached is None:
            found = self._lookup(key)
            with self._lock:
                self._answers[key] = (now + self._ttl_s, found)
                self._answers.move_to_end(key)
                while len(self._answers) > self._max_entries:
                    self._answers.popitem(last=False)
        if found is None or not found.active:
            raise AuthenticationError("unknown or revoked API token")
        return found
