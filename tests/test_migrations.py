"""Alembic migrations on SQLite and PostgreSQL: the round trip, ORM-vs-migrations agreement, the CLI."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Engine, MetaData, Text, inspect

from protssl.cli.db import add_commands, store_config
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


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="protssl")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_db_commands(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    head = engines.head_revision()
    for argv, shown in (
        (["db", "current"], "base (empty)"),
        (["db", "upgrade"], f"at {head}"),
        (["db", "current"], f"{head} (head)"),
        (["db", "downgrade", "base"], "at base"),
        (["db", "upgrade", head], f"at {head}"),
    ):
        args = _parse([*argv, "--db", store_url])
        assert args.func(args) == 0
        assert shown in capsys.readouterr().out


def test_db_url_comes_from_the_flag_then_the_environment(
    monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    monkeypatch.setenv("PROTSSL_DATABASE_URL", sqlite_url)
    assert store_config(_parse(["db", "current"])).url == sqlite_url
    assert store_config(_parse(["db", "current", "--db", "sqlite:///x"])).url == "sqlite:///x"


@pytest.mark.slow
def test_db_upgrade_from_another_working_directory(tmp_path: Path) -> None:
    """Migrations are found beside the package, not in the cwd."""
    database = tmp_path / "elsewhere.sqlite3"
    script = (
        "import argparse, sys\n"
        "from protssl.cli.db import add_commands\n"
        "parser = argparse.ArgumentParser()\n"
        "add_commands(parser.add_subparsers())\n"
        "args = parser.parse_args(sys.argv[1:])\n"
        "sys.exit(args.func(args))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "db", "upgrade", "--db", f"sqlite:///{database}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert engines.head_revision() in result.stdout
    engine = engines.create_store_engine(StoreConfig(url=f"sqlite:///{database}"))
    try:
        assert _tables(engine) == TABLES
    finally:
        engine.dispose()
