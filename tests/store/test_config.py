"""Opening the store: config checks and defaults, SQLite's WAL mode and foreign keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from protssl.errors import InvalidInputError
from protssl.store import Store, StoreConfig, default_url


def test_sqlite_runs_in_wal_mode_with_foreign_keys(sqlite_url: str) -> None:
    with Store(StoreConfig(url=sqlite_url)) as store, store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


def test_config_checks_and_defaults(tmp_path: Path) -> None:
    assert default_url().startswith("sqlite:///") and "protssl" in default_url()
    with pytest.raises(InvalidInputError, match="sqlite"):
        StoreConfig(url="mysql://x")
    with pytest.raises(InvalidInputError, match="psycopg"):
        StoreConfig(url="postgresql://x/db")
    with pytest.raises(InvalidInputError, match="float16"):
        StoreConfig(url="sqlite://", vector_dtype="int8")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="memory_cache_mb"):
        StoreConfig(url="sqlite://", memory_cache_mb=-1)
    url = f"sqlite:///{tmp_path}/env.sqlite3"
    assert StoreConfig.from_environ({"PROTSSL_DATABASE_URL": url}).url == url
    assert StoreConfig.from_environ({"PROTSSL_DATABASE_URL": url}, url="sqlite:///a").url == (
        "sqlite:///a"
    )
    assert StoreConfig.from_environ({}).url == default_url()
    nested = tmp_path / "new" / "folder" / "s.sqlite3"
    with Store(StoreConfig(url=f"sqlite:///{nested}")):
        assert nested.is_file()
