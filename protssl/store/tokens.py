"""API tokens: created with a role (the token returned once), listed, looked up by hash, revoked.

Only the sha256 of a token is stored (`protssl.auth` says what a token is); a revoked token keeps
its row, stamped `revoked_at`, so `list` shows who had access and until when.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

import protssl.store.common as common
import protssl.store.engine as engines
from protssl.auth import StoredToken, check_role, new_token, token_id_of, token_sha256
from protssl.errors import InvalidInputError, NotFoundError, StoreError
from protssl.store.schema import Base

__all__ = ["TokenRepository"]

log = logging.getLogger(__name__)

_TOKENS = Base.metadata.tables["api_tokens"]


class TokenRepository:
    """API tokens by id; the token itself is returned once, by `create`, and never stored."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def create(self, role: str, *, name: str = "") -> tuple[StoredToken, str]:
        """A new active token of `role`; returns its row and the token (shown once, then lost)."""
        role = check_role(role)
        if len(name) > 200 or "\x00" in name:
            raise InvalidInputError(
                f"token name must be at most 200 characters without NUL: {name!r}"
            )
        token_id, token = new_token()
        values = {
            "id": token_id,
            "name": name,
            "role": role,
            "secret_sha256": token_sha256(token),
            "created_at": common.now(),
            "revoked_at": None,
        }
        with (
            common.store_errors("creating an API token"),
            engines.write_transaction(self._engine) as connection,
        ):
            connection.execute(_TOKENS.insert(), values)
        return StoredToken(**values), token  # type: ignore[arg-type]

    def list(self) -> list[StoredToken]:
        """Every token, revoked ones too, oldest first."""
        statement = select(_TOKENS).order_by(_TOKENS.c.created_at, _TOKENS.c.id)
        with common.store_errors("listing API tokens"), self._engine.connect() as connection:
            return [self._from_row(row) for row in connection.execute(statement)]

    def find(self, secret_sha256: str) -> StoredToken | None:
        """The token whose sha256 this is (revoked or not), or None: one unique-index probe."""
        statement = select(_TOKENS).where(_TOKENS.c.secret_sha256 == secret_sha256)
        try:
            with self._engine.connect() as connection:
                row = connection.execute(statement).first()
        except SQLAlchemyError as exc:
            log.warning("API token lookup failed: %s", exc)
            raise StoreError(
                f"checking the API token failed: the store is unavailable ({type(exc).__name__})"
            ) from exc
        return self._from_row(row) if row is not None else None

    def revoke(self, token_id: str) -> StoredToken:
        """Stamp `token_id` revoked (a no-op if it already is); NotFoundError if there is none.
        A whole token names its id (`token_id_of`)."""
        token_id = token_id_of(token_id)
        common.check_text(token_id, "token id", max_length=64)
        with (
            common.store_errors("revoking an API token"),
            engines.write_transaction(self._engine) as connection,
        ):
            connection.execute(
                _TOKENS.update()
                .where(_TOKENS.c.id == token_id, _TOKENS.c.revoked_at.is_(None))
                .values(revoked_at=common.now())
            )
            row = connection.execute(select(_TOKENS).where(_TOKENS.c.id == token_id)).first()
        if row is None:
            raise NotFoundError(f"no API token with id {token_id!r} in the store")
        return self._from_row(row)

    @staticmethod
    def _from_row(row: Any) -> StoredToken:
        return StoredToken(
            id=row.id,
            name=row.name,
            role=check_role(row.role),
            secret_sha256=row.secret_sha256,
            created_at=common.utc(row.created_at),
            revoked_at=common.utc(row.revoked_at) if row.revoked_at is not None else None,
        )
