"""Alembic migrations on SQLite and PostgreSQL: the round trip, ORM-vs-migrations agreement."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Engine, MetaData, Text, inspect

from protssl.errors import InvalidInputError
from protssl.store import StoreConfig
from protssl.store import engine as engines
from protssl.store.schema import Base

TABLES = {
    "models",
    "sequences",
    "embeddings",
    "classifiers",
    "classifier_examples",
    "predictions",
    "jobs",
    "api_tokens",
}


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def test_upgrade_downgrade_upgrade(store_url: str) -> None:
    engine = engines.create_store_engine(StoreConfig(url=store_url))
    try:
        assert engines.current_revision(engine) is None
        engines.upgrade(engine)
        assert _tables(engine) == TABLES
        assert engines.current_revision(engine) == engines.head_revision()
        engines.downgrade(engine, "base")
        assert _tables(engine) == set()
        assert engines.current_revision(engine) is None
        engines.upgrade(engine, "head")
        assert _tables(engine) == TABLES
        assert {ix["name"] for ix in inspect(engine).get_indexes("jobs")} == {"ix_jobs_status"}
    finally:
        engine.dispose()


def test_orm_and_migrations_agree(store_url: str) -> None:
    """What `alembic revision --autogenerate` would write after the migrations: nothing."""
    engine = engines.create_store_engine(StoreConfig(url=store_url))
    try:
        with engine.connect() as connection, connection.begin():
            config = engines.alembic_config()
            config.attributes["connection"] = connection  # env.py uses the handed-in connection
            command.upgrade(config, "head")
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            drifted = MetaData(naming_convention=Base.metadata.naming_convention)
            for table in Base.metadata.tables.values():
                table.to_metadata(drifted)
            drifted.tables["jobs"].append_column(Column("note", Text))
            assert [d[0] for d in compare_metadata(context, drifted)] == ["add_column"]
    finally:
        engine.dispose()


def test_unknown_revision_is_a_user_error(sqlite_url: str) -> None:
    engine = engines.create_store_engine(StoreConfig(url=sqlite_url))
    try:
        with pytest.raises(InvalidInputError, match="nope"):
            engines.upgrade(engine, "nope")
    finally:
        engine.dispose()
