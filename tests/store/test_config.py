"""Opening the store: config checks and defaults, SQLite's WAL mode (a rollback journal on a network
filesystem) and foreign keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from protssl.errors import InvalidInputError
from protssl.store import Store, StoreConfig, default_url
from protssl.store import engine as engine_module
from protssl.store.engine import network_filesystem


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
    with pytest.raises(  # two slashes: a host, which SQLAlchemy refused in a traceback, or a
        InvalidInputError,  # path without its first part ('tmp/' dropped)
        match=r"three slashes .* not 'sqlite://tmp/x.sqlite3'$",
    ):
        StoreConfig(url="sqlite://tmp/x.sqlite3")
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


def test_a_sqlite_path_under_home_is_opened_where_its_folder_was_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--db sqlite:///~/x.sqlite3`: sqlite3 does not expand ~, so the store must."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    with Store(StoreConfig(url="sqlite:///~/stores/s.sqlite3")) as store:
        assert store.engine.url.database == str(tmp_path / "home/stores/s.sqlite3")
    assert (tmp_path / "home/stores/s.sqlite3").is_file()
    assert not (tmp_path / "~").exists()


# lines as a cluster node's /proc/self/mounts has them (NFS home, Lustre scratch, a local tmpfs)
CLUSTER_MOUNTS = """\
/dev/sda2 / ext4 rw,relatime 0 0
tmpfs /tmp tmpfs rw,nosuid,nodev 0 0
filer:/export/home /home nfs4 rw,relatime,vers=4.2,hard,proto=tcp 0 0
10.0.0.5@o2ib:/scratch /scratch lustre rw,flock,lazystatfs 0 0
tmpfs /home/ada/.cache tmpfs rw 0 0
filer:/export/lab /mnt/lab\\040data nfs rw 0 0
"""


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/home/ada/.local/share/protssl/protssl.sqlite3", "nfs4"),  # the default store's place
        ("/scratch/ada/run/store.sqlite3", "lustre"),
        ("/home/ada/.cache/s.sqlite3", None),  # a local mount inside the NFS one
        ("/mnt/lab data/s.sqlite3", "nfs"),  # \040 is a space
        ("/tmp/s.sqlite3", None),
        ("/homes/x.sqlite3", None),  # /home is not a prefix of /homes
    ],
)
def test_network_filesystems_are_told_from_the_mount_table(path: str, kind: str | None) -> None:
    assert network_filesystem(Path(path), CLUSTER_MOUNTS) == kind


def test_this_machines_store_folder_is_local(tmp_path: Path) -> None:
    assert network_filesystem(tmp_path / "s.sqlite3") is None  # /proc/self/mounts read for real


def test_on_a_network_filesystem_sqlite_keeps_a_rollback_journal_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No NFS here: the mount table's answer is what the test sets; SQLite's mode is real."""
    monkeypatch.setattr(engine_module, "network_filesystem", lambda path: "nfs4")
    url = f"sqlite:///{tmp_path / 'home.sqlite3'}"
    with Store(StoreConfig(url=url)) as store, store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "delete"
    assert "network filesystem (nfs4)" in caplog.text and "PostgreSQL" in caplog.text
    assert not list(tmp_path.glob("*-wal"))
