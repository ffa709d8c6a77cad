"""What the store's repositories share: content addresses, UTC times, JSON, conflict-free inserts.

Writes that may race (sequences, models, the cache) are `INSERT … ON CONFLICT DO NOTHING` (models:
`DO UPDATE` of a placeholder name), in key order so that concurrent PostgreSQL writers cannot
deadlock.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
from sqlalchemy import Connection, Table, func, literal
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from protssl.errors import InvalidInputError, StoreError, first_line
from protssl.store.schema import MODEL_NAME_LENGTH, Base

__all__ = [
    "DAMAGED_SQLITE",
    "DAMAGED_SQLITE_ADVICE",
    "check_text",
    "damaged_sqlite",
    "ensure_models",
    "ensure_sequences",
    "insert",
    "json_object",
    "now",
    "sequence_sha256",
    "store_errors",
    "unavailable",
    "utc",
]

log = logging.getLogger(__name__)

_MODELS = Base.metadata.tables["models"]
_SEQUENCES = Base.metadata.tables["sequences"]


@contextmanager
def store_errors(what: str) -> Iterator[None]:
    """Turn a database failure inside the block into StoreError (gRPC UNAVAILABLE).

    The driver's message names the database host and port: it is logged here, and the error says
    only what failed, so a client never learns where the database is.
    """
    try:
        yield
    except SQLAlchemyError as exc:
        raise unavailable(what, exc) from None


def unavailable(what: str, exc: SQLAlchemyError) -> StoreError:
    """The StoreError for a failed `what`; the driver's detail (host, port) goes to the log only.
    A store whose disk (or quota) is full says so: waiting for it to come back would not help."""
    log.warning("store: %s failed: %s", what, first_line(exc))
    if _disk_full(getattr(exc, "orig", None)):
        return StoreError(
            f"the store is full (no space left on its disk, or a quota): {what} failed; free "
            "space, or give another store (--db) or none (--no-cache)"
        )
    if damaged_sqlite(exc):
        return StoreError(f"{DAMAGED_SQLITE}: {what} failed; {DAMAGED_SQLITE_ADVICE}")
    if _refused_write(getattr(exc, "orig", None)):
        return StoreError(
            f"the store refuses this user's writes (a read-only file, or no permission on its "
            f"tables): {what} failed; give a store it may write (--db) or none (--no-cache)"
        )
    return StoreError(f"the store is unavailable: {what} failed")


DAMAGED_SQLITE = "the SQLite store is damaged, or is not a SQLite database"
DAMAGED_SQLITE_ADVICE = (
    "move the file away (its vectors are computed again as jobs run; its classifiers and tokens "
    "are lost), or give another store (--db) or none (--no-cache)"
)


def damaged_sqlite(exc: BaseException) -> bool:
    """SQLite's SQLITE_CORRUPT or SQLITE_NOTADB: what a file written by several hosts over a network
    filesystem, or one that is not a database at all, gives; waiting would not help."""
    return _sqlite_code(getattr(exc, "orig", exc)) in (
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_NOTADB,
    )


def _disk_full(error: object) -> bool:
    """SQLite's SQLITE_FULL, PostgreSQL's disk_full (SQLSTATE 53100)."""
    if isinstance(error, sqlite3.Error):
        return _sqlite_code(error) == sqlite3.SQLITE_FULL
    return getattr(error, "sqlstate", None) == "53100"


def _refused_write(error: object) -> bool:
    """SQLite's SQLITE_READONLY (a read-only file or folder), PostgreSQL's insufficient_privilege
    (SQLSTATE 42501): retrying, which "unavailable" suggests, would not help."""
    if isinstance(error, sqlite3.Error):  # the primary code: READONLY_DIRECTORY etc. extend it
        return (_sqlite_code(error) or 0) & 0xFF == sqlite3.SQLITE_READONLY
    return getattr(error, "sqlstate", None) == "42501"


def _sqlite_code(error: object) -> int | None:
    """The primary result code of a sqlite3 error (SQLITE_FULL...), else None."""
    if not isinstance(error, sqlite3.Error):
        return None
    return getattr(error, "sqlite_errorcode", None)


def check_text(value: str, what: str, *, max_length: int, empty: bool = False) -> None:
    """Refuse a string the store cannot hold: NUL (PostgreSQL text cannot), too long, or empty."""
    if "\x00" in value:
        raise InvalidInputError(f"{what} contains a NUL character (at {value.index(chr(0)) + 1})")
    if len(value) > max_length:
        raise InvalidInputError(f"{what} has {len(value)} characters; the limit is {max_length}")
    if not value and not empty:
        raise InvalidInputError(f"{what} must not be empty")


def sequence_sha256(sequence: str) -> str:
    """The content address of a normalised sequence: hex sha256 of its ASCII residues."""
    try:
        return hashlib.sha256(sequence.encode("ascii")).hexdigest()
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"sequence has a non-ASCII character at position {exc.start + 1}; normalise it first"
        ) from None


def now() -> dt.datetime:
    """The time now, in UTC (what every timestamp column holds)."""
    return dt.datetime.now(dt.timezone.utc)


def utc(value: dt.datetime) -> dt.datetime:
    """SQLite hands timestamps back naive; they were written in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)


def json_object(value: Mapping[str, Any], what: str) -> dict[str, Any]:
    """A plain JSON copy of `value` (numpy scalars and arrays become numbers and lists)."""
    try:
        return dict(json.loads(json.dumps(dict(value), default=_numpy_to_json)))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{what} must be JSON-serialisable: {exc}") from None


def _numpy_to_json(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def insert(connection: Connection, table: Table) -> Any:
    """The dialect's INSERT, which has `on_conflict_do_nothing` on both SQLite and PostgreSQL."""
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def ensure_sequences(connection: Connection, sequences: Iterable[str]) -> None:
    """A `sequences` row for each sequence not stored yet (the content that keys point at)."""
    rows = {sequence_sha256(s): s for s in sequences}
    if rows:
        connection.execute(
            insert(connection, _SEQUENCES).on_conflict_do_nothing(),
            [{"sha256": k, "length": len(s), "sequence": s} for k, s in sorted(rows.items())],
        )


def ensure_models(connection: Connection, names: Mapping[str, str | None]) -> None:
    """A `models` row for each model sha256 in `names` not stored yet, so foreign keys hold.

    The sha256 is the model; its name (the card's, which `db stats` shows and `db prune --model`
    takes) is `names[sha256]`, or the placeholder `sha256:<12 hex>` where that is None or the column
    cannot hold it. A row still holding its placeholder (every row written before names were kept)
    takes the name given.
    """
    rows = [
        {"sha256": sha, "name": _storable_name(sha, names[sha]), "created_at": now()}
        for sha in sorted(names)
    ]
    if not rows:
        return
    statement = insert(connection, _MODELS)
    placeholder = literal("sha256:") + func.substr(_MODELS.c.sha256, 1, 12)  # the row's, in SQL
    connection.execute(
        statement.on_conflict_do_update(
            index_elements=[_MODELS.c.sha256],
            set_={"name": statement.excluded.name},
            where=(_MODELS.c.name == placeholder) & (statement.excluded.name != placeholder),
        ),
        rows,
    )


def _storable_name(sha256: str, name: str | None) -> str:
    """`name` if the `models.name` column can hold it, else the placeholder (a card's name is
    free text: refusing the vectors over it would be worse than an unnamed model)."""
    if not name or "\x00" in name or len(name) > MODEL_NAME_LENGTH:
        return f"sha256:{sha256[:12]}"
    return name
