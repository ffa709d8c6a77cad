"""`protssl db upgrade|downgrade|current` on SQLite and PostgreSQL, and where `--db` comes from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from protssl.cli import build_parser
from protssl.cli.args import store_config
from protssl.store import StoreConfig
from protssl.store import engine as engines


def test_db_commands(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    head = engines.head_revision()
    for argv, shown in (
        (["db", "current"], "base (empty)"),
        (["db", "upgrade"], f"at {head}"),
        (["db", "current"], f"{head} (head)"),
        (["db", "downgrade", "base"], "at base"),
        (["db", "upgrade", head], f"at {head}"),
    ):
        args = build_parser().parse_args([*argv, "--db", store_url])
        assert args.func(args) == 0
        assert shown in capsys.readouterr().out


def test_db_url_comes_from_the_flag_then_the_environment(
    monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    monkeypatch.setenv("PROTSSL_DATABASE_URL", sqlite_url)
    parse = build_parser().parse_args
    assert store_config(parse(["db", "current"])).url == sqlite_url
    assert store_config(parse(["db", "current", "--db", "sqlite:///x"])).url == "sqlite:///x"


@pytest.mark.slow
def test_db_upgrade_from_another_working_directory(tmp_path: Path) -> None:
    """Migrations are found beside the package, not in the cwd."""
    url = f"sqlite:///{tmp_path / 'elsewhere.sqlite3'}"
    result = subprocess.run(
        [sys.executable, "-m", "protssl", "db", "upgrade", "--db", url],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert engines.head_revision() in result.stdout
    engine = engines.create_store_engine(StoreConfig(url=url))
    try:
        assert engines.current_revision(engine) == engines.head_revision()
    finally:
        engine.dispose()


@pytest.mark.parametrize("action", [["upgrade"], ["current"]])
def test_a_database_that_refuses_connections_is_one_line(action: list[str]) -> None:
    """psycopg's message has three lines (and SQLAlchemy adds a link); the error keeps the first."""
    url = "postgresql+psycopg://nobody@127.0.0.1:1/x"  # port 1: refused at once
    result = subprocess.run(
        [sys.executable, "-m", "protssl", "db", *action, "--db", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("protssl db: error: reading the schema revision of postgresql+psycopg")
    assert line.endswith("Connection refused")
