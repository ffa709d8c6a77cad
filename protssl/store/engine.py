"""Engines and migrations: SQLite in WAL mode with a busy timeout (a rollback journal on a network
filesystem, where WAL does not work), PostgreSQL through psycopg 3.

SQLite transactions are begun by us (the driver's implicit BEGIN is switched off), so a writer
can take the lock up front (`BEGIN IMMEDIATE`) and wait out the busy timeout instead of failing
half-way. Schema upgrades run under a lock on both dialects: an advisory lock on PostgreSQL, the
write lock on SQLite; a second process opening the same fresh database waits, then finds it done.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import SQLAlchemyError

from protssl.errors import InvalidInputError, StoreError, first_line
from protssl.store.common import DAMAGED_SQLITE, DAMAGED_SQLITE_ADVICE, damaged_sqlite
from protssl.store.config import StoreConfig

__all__ = [
    "MIGRATIONS_DIR",
    "alembic_config",
    "create_store_engine",
    "current_revision",
    "downgrade",
    "head_revision",
    "reclaim_space",
    "sqlite_file",
    "upgrade",
    "write_transaction",
]

log = logging.getLogger(__name__)

MIGRATIONS_DIR = (Path(__file__).parents[1] / "migrations").resolve()
"""Alembic's script folder: in a checkout `protssl/migrations` links to the top-level folder, and a
wheel carries a copy there, so an installed protssl finds it too."""

_MIGRATION_LOCK_KEY = 0x70726F7473736C  # "protssl": the PostgreSQL advisory lock for upgrades
_BEGIN_OPTION = "protssl_sqlite_begin"


def sqlite_file(config: StoreConfig) -> Path | None:
    """The file a SQLite store's URL names (`~` expanded); None for another database, an in-memory
    one or a `file:` URI."""
    database = make_url(config.url).database or ""
    if config.dialect != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database).expanduser()


def create_store_engine(config: StoreConfig) -> Engine:
    """An engine for `config.url`; creates a SQLite file's folder. Does not migrate."""
    url = make_url(config.url)
    if config.dialect == "sqlite":
        journal = "WAL"
        path = sqlite_file(config)
        if path is not None:
            _prepare_sqlite_file(path)
            url = url.set(database=str(path))  # sqlite3 itself does not expand ~
            network = network_filesystem(path)
            if network is not None:
                journal = "DELETE"
                log.warning(
                    "store: %s is on a network filesystem (%s): SQLite keeps a rollback journal "
                    "there, since its WAL mode needs one host's shared memory; jobs on several "
                    "hosts need PostgreSQL (--db postgresql+psycopg://...)",
                    path,
                    network,
                )
        engine = create_engine(url)
        _configure_sqlite(
            engine, busy_timeout_ms=round(config.busy_timeout_s * 1000), journal=journal
        )
        return engine
    engine = create_engine(
        url,
        pool_pre_ping=True,  # a connection the database dropped (restart) is replaced, not used
        connect_args={"connect_timeout": max(2, math.ceil(config.connect_timeout_s))},
    )
    _configure_postgresql(engine, statement_timeout_ms=round(config.statement_timeout_s * 1000))
    return engine


def _configure_postgresql(engine: Engine, *, statement_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET statement_timeout = {statement_timeout_ms}")
        dbapi_connection.commit()


_ELSEWHERE = "give another store (--db URL, or PROTSSL_DATABASE_URL) or none (--no-cache)"


def _prepare_sqlite_file(path: Path) -> None:
    """Create a SQLite file's folder; a path that cannot hold a database is one clear error."""
    if path.is_dir():
        raise InvalidInputError(f"SQLite database {str(path)!r} is a folder: give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(
            f"SQLite database {str(path)!r}: cannot create its folder {str(path.parent)!r} "
            f"({exc.strerror}); {_ELSEWHERE}"
        ) from None
    if not path.exists() and not os.access(path.parent, os.W_OK | os.X_OK):
        raise InvalidInputError(
            f"SQLite database {str(path)!r}: folder {str(path.parent)!r} is not writable; "
            f"{_ELSEWHERE}"
        )


_NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "glusterfs",
     "fuse.glusterfs", "ceph", "fuse.ceph", "fuse.sshfs", "afs", "9p", "panfs", "orangefs"}
)  # fmt: skip
"""Filesystem types (as /proc/mounts names them) shared between hosts: where cluster home and
project folders live, and where SQLite's WAL mode does not work."""


def network_filesystem(path: Path, mounts: str | None = None) -> str | None:
    """The network filesystem type `path` is on (`nfs4`, `lustre`...), or None for a local one
    or where it cannot be told; `mounts` is /proc/self/mounts' text (read when not given)."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return None
    target = os.path.realpath(path)
    best, kind = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        # /proc/mounts writes a space in a mount point as \040 (and tab, newline, backslash alike)
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind if kind in _NETWORK_FILESYSTEMS else None


def _configure_sqlite(engine: Engine, *, busy_timeout_ms: int, journal: str = "WAL") -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        _set_journal_mode(cursor, journal, busy_timeout_ms / 1000)
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


def _set_journal_mode(cursor: Any, mode: str, timeout_s: float) -> None:
    """`PRAGMA journal_mode = MODE`, retried: on a fresh file that another process is switching at
    the same moment SQLite answers "database is locked" at once, without waiting out the busy
    timeout."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            cursor.execute(f"PRAGMA journal_mode = {mode}")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that will write: on SQLite it takes the write lock first (BEGIN IMMEDIATE)."""
    with engine.connect() as connection:
        connection.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        with connection.begin():
            yield connection


def reclaim_space(engine: Engine) -> bool:
    """Give the space of deleted rows back to the filesystem: SQLite's VACUUM (it rewrites the
    file, so it needs the file's size free for a while and no other writer). False on PostgreSQL,
    which reuses the space for new rows (shrinking its files is the administrator's VACUUM FULL)."""
    if engine.dialect.name != "sqlite":
        return False
    raw = engine.raw_connection()  # outside SQLAlchemy's BEGIN (see _on_begin): VACUUM refuses one
    try:
        cursor = raw.cursor()
        cursor.execute("VACUUM")
        cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # in WAL mode the file shrinks here
    finally:
        raw.close()
    return True


def alembic_config(url: str | None = None) -> Config:
    """Alembic's config pointing at the migrations beside the package, whatever the cwd."""
    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise StoreError(f"the migrations folder is missing from {MIGRATIONS_DIR}")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest migration's revision id."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head() or ""


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an empty database."""
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as exc:
        if damaged_sqlite(exc):
            raise StoreError(
                f"{engine.url!r}: {DAMAGED_SQLITE} ({first_line(getattr(exc, 'orig', exc))}); "
                f"{DAMAGED_SQLITE_ADVICE}"
            ) from None
        raise StoreError(
            f"reading the schema revision of {engine.url!r} failed: {first_line(exc)}"
        ) from exc


def is_newer(revision: str | None) -> bool:
    """Whether a store's `revision` is one this protssl's migrations do not know: a newer
    protssl migrated it (a rolling upgrade, a node left on an older install)."""
    if revision is None:
        return False
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is None
    except CommandError:
        return True


def _refuse_newer(engine: Engine, revision: str | None) -> None:
    """Refuse a store at a `revision` this protssl does not know; alembic's own refusal read
    "Can't locate revision identified by '0004'", as if the store were the one at fault."""
    if is_newer(revision):
        raise InvalidInputError(
            f"the store at {engine.url!r} is at schema {revision}, newer than this protssl's "
            f"(its newest is {head_revision()}): upgrade protssl to the version that migrated it"
        )


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run migrations up to `revision` under the migration lock; a no-op when already there (the
    store every open finds: no more than that revision is read)."""
    target = head_revision() if revision == "head" else revision
    current = current_revision(engine)
    if current == target:
        return
    _refuse_newer(engine, current)
    _run_locked(engine, lambda config: command.upgrade(config, revision))


def downgrade(engine: Engine, revision: str) -> None:
    """Run migrations down to `revision` (`base` empties the database) under the migration lock."""
    _refuse_newer(engine, current_revision(engine))
    _run_locked(engine, lambda config: command.downgrade(config, revision))


def _run_locked(engine: Engine, action: Any) -> None:
    try:
        with write_transaction(engine) as connection:
            if engine.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                )
            config = alembic_config()
            config.attributes["connection"] = connection
            before = MigrationContext.configure(connection).get_current_revision()
            action(config)
            after = MigrationContext.configure(connection).get_current_revision()
            if before != after:
                log.info("store schema migrated from %s to %s", before or "empty", after or "empty")
    except CommandError as exc:
        raise InvalidInputError(
            f"cannot migrate the store at {engine.url!r}: {first_line(exc)}"
        ) from None
    except SQLAlchemyError as exc:
        raise StoreError(
            f"migrating the store at {engine.url!r} failed: {first_line(exc)}"
        ) from exc
