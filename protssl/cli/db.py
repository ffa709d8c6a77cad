"""`protssl db upgrade|downgrade|current`: the store's schema, through Alembic's migrations.

The database is `--db`, else PROTSSL_DATABASE_URL, else a SQLite file in the user's data directory
(`protssl.cli.args.store_config`). SQLAlchemy and Alembic are imported when a command runs.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from protssl.cli.args import add_db_arg, store_config
from protssl.cli.commands import Command

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__ = ["COMMANDS"]


def _build(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="db_command", required=True, metavar="ACTION")
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


COMMANDS = (Command("db", _build, help="manage the store's schema (Alembic migrations)"),)


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
