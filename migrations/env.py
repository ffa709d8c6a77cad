"""Alembic environment for protssl's store.

Tests and `protssl.store.engine` hand a connection in (`config.attributes["connection"]`), already
inside a locked transaction. The `alembic` command line gets its URL from `sqlalchemy.url` in the
config, else PROTSSL_DATABASE_URL, else the default SQLite file — the same setting as the app.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from protssl.store.config import StoreConfig
from protssl.store.engine import create_store_engine
from protssl.store.schema import Base

config = context.config
target_metadata = Base.metadata


def _store_config() -> StoreConfig:
    return StoreConfig.from_environ(os.environ, url=config.get_main_option("sqlalchemy.url"))


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    """Write the SQL to stdout (`alembic upgrade head --sql`) for a DBA to review and run."""
    store = _store_config()
    context.configure(
        url=store.url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=store.dialect == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    handed_in = config.attributes.get("connection")
    if handed_in is not None:
        _run(handed_in)
        return
    engine = create_store_engine(_store_config())
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
