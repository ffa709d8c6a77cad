"""API tokens in the store (real SQLite file and real PostgreSQL): hashed, listed, found, revoked."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from protssl.auth import TokenVerifier, token_sha256
from protssl.errors import AuthenticationError, InvalidInputError, NotFoundError
from protssl.store import Store


def test_create_stores_only_the_hash(store: Store) -> None:
    row, token = store.tokens.create("write", name="ci")
    assert token.startswith(f"protssl_{row.id}_") and len(token) == 8 + 16 + 1 + 43
    assert (row.role, row.name, row.active) == ("write", "ci", True)
    assert row.secret_sha256 == token_sha256(token)
    with store.engine.connect() as connection:
        stored = connection.execute(text("SELECT * FROM api_tokens")).mappings().one()
    assert token not in {str(v) for v in stored.values()}
    secret = token[len(f"protssl_{row.id}_") :]  # the secret itself may contain "_"
    assert secret not in "".join(str(v) for v in stored.values())
    assert store.tokens.find(token_sha256(token)) == row
    assert store.tokens.find(token_sha256(token + "x")) is None


def test_list_and_revoke(store: Store) -> None:
    first, _ = store.tokens.create("read")
    second, token = store.tokens.create("admin", name="ops")
    assert [t.id for t in store.tokens.list()] == [first.id, second.id]
    revoked = store.tokens.revoke(second.id)
    assert revoked.revoked_at is not None and not revoked.active
    assert store.tokens.revoke(second.id).revoked_at == revoked.revoked_at  # idempotent
    assert store.tokens.find(token_sha256(token)) == revoked
    assert [t.active for t in store.tokens.list()] == [True, False]
    with pytest.raises(NotFoundError, match="nope"):
        store.tokens.revoke("nope")


def test_bad_roles_and_names_are_refused(store: Store) -> None:
    with pytest.raises(InvalidInputError, match="read, write, admin"):
        store.tokens.create("root")
    with pytest.raises(InvalidInputError, match="name"):
        store.tokens.create("read", name="a\x00b")
    assert store.tokens.list() == []


def test_verifier_caches_answers_until_they_expire(store: Store) -> None:
    lookups: list[str] = []

    def lookup(digest: str):  # type: ignore[no-untyped-def]
        lookups.append(digest)
        return store.tokens.find(digest)

    now = [0.0]
    verifier = TokenVerifier(lookup, ttl_s=5.0, clock=lambda: now[0])
    row, token = store.tokens.create("read")
    assert verifier.verify(token) == row
    assert verifier.verify(token) == row
    assert len(lookups) == 1  # the second check is a cache hit
    store.tokens.revoke(row.id)
    assert verifier.verify(token) == row  # still cached: revocation waits out the ttl
    now[0] = 5.1
    with pytest.raises(AuthenticationError, match="revoked"):
        verifier.verify(token)
    assert len(lookups) == 2
    with pytest.raises(AuthenticationError, match="malformed"):
        verifier.verify("Bearer nonsense")
    assert len(lookups) == 2  # malformed tokens never reach the store


def test_verifier_remembers_at_most_max_entries(store: Store) -> None:
    verifier = TokenVerifier(store.tokens.find, ttl_s=60.0, max_entries=3)
    _, real = store.tokens.create("read")
    for n in range(10):
        with pytest.raises(AuthenticationError, match="unknown"):
            verifier.verify(f"protssl_{n:016x}_{'A' * 43}")
    assert len(verifier) == 3
    verifier.verify(real)
    assert len(verifier) == 3
