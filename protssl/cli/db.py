"""CLI face of the store: `protssl db upgrade|downgrade|current`, and the embed command's cache options.

The database URL comes from `--db`, else PROTSSL_DATABASE_URL, else a SQLite file in the user's
data directory; this module (a face) is the only place that reads the environment for it.
SQLAlchemy and Alembic are imported when a command runs, so building the parser stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from protssl.store import Store, StoreConfig

__all__ = ["add_commands", "add_db_arg", "add_store_args", "open_store", "store_config"]


def add_store_args(parser: argparse.ArgumentParser) -> None:
    """`--db URL` and `--no-cache`, for commands that read through the embedding cache."""
    add_db_arg(parser)
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="compute every vector, neither reading nor writing the store",
    )


def add_db_arg(parser: argparse.ArgumentParser) -> None:
    """`--db URL`: the store to use, for every command that opens one."""
    parser.add_argument(
        "--db",
        metavar="URL",
        default=None,
        help="store URL (sqlite:///file or postgresql+psycopg://user@host/db); "
        "default $PROTSSL_DATABASE_URL, else a SQLite file in the user data folder",
    )


def store_config(args: argparse.Namespace) -> StoreConfig:
    """The store config for parsed args: `--db`, else PROTSSL_DATABASE_URL, else the default."""
    from protssl.store import StoreConfig

    return StoreConfig.from_environ(os.environ, url=args.db)


def open_store(args: argparse.Namespace) -> Store | None:
    """The store (migrated, ready) for commands given `add_store_args`, or None with --no-cache."""
    if args.no_cache:
        return None
    from protssl.store import Store

    return Store(store_config(args))


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `db upgrade|downgrade|current` to the CLI."""
    db = subparsers.add_parser("db", help="manage the store's schema (Alembic migrations)")
    actions = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade = actions.add_parser("upgrade", help="migrate the store to a newer schema")
    upgrade.add_argument("revision", nargs="?", default="head", help="target (default: head)")
    add_db_arg(upgrade)
    upgrade.set_defaults(func=_upgrade)
    downgrade = actions.add_parser("downgrade", help="migrate the store back to an older schema")
    downgrade.add_argument("revision", help="target revision, or `base` to drop every table")
    add_db_arg(downgrade)
    downgrade.set_defaults(func=_downgrade)
    current = actions.add_parser("current", help="print the store's schema revision")
    add_db_arg(current)
    current.set_defaults(func=_current)


@contextlib.contextmanager
def _engine(args: argparse.Namespace) -> Iterator[Engine]:
    """An engine on the store `--db` names, disposed of afterwards."""
    from protssl.store import engine as engines

    engine = engines.create_store_engine(store_config(args))
    try:
        yield engine
    finally:
        engine.dispose()


def _upgrade(args: argparse.Namespace) -> int:
    from protssl.store import engine as engines

    with _engine(args) as engine:
        engines.upgrade(engine, args.revision)
        print(f"{engine.url!r}: at {engines.current_revision(engine) or 'base'}")
    return 0


def _downgrade(args: argparse.Namespace) -> int:
    from protssl.store import engine as engines

    with _engine(args) as engine:
        engines.downgrade(engine, args.revision)
        print(f"{engine.url!r}: at {engines.current_revision(engine) or 'base'}")
    return 0


def _current(args: argparse.Namespace) -> int:
    from protssl.store import engine as engines

    with _engine(args) as engine:
        revision = engines.current_revision(engine)
    head = engines.head_revision()
    state = "head" if revision == head else f"head is {head}"
    print(f"{engine.url!r}: {revision or 'base (empty)'} ({state})")
    return 0
