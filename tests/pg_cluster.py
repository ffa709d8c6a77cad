"""A private, throwaway PostgreSQL cluster for fault tests: stopped and started at will.

The machine's shared server (PROTSSL_TEST_POSTGRES_URL) is never touched: `initdb` makes a cluster
in a temporary folder, `pg_ctl` runs it on a free loopback port. As root (where initdb refuses to
run) the commands run as the `postgres` user through `runuser`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from ports import free_port

__all__ = ["PrivateCluster", "initdb_path"]


def initdb_path() -> str | None:
    """The newest installed `initdb` (Debian keeps it under /usr/lib/postgresql/N/bin), or None."""
    found = shutil.which("initdb")
    if found:
        return found
    candidates = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    return max(candidates, key=lambda p: int(Path(p).parts[-3])) if candidates else None


class PrivateCluster:
    """A PostgreSQL cluster in a fresh temporary folder on its own port: trust auth, user postgres,
    database test. The folder is outside pytest's (a private 0700 one the postgres user could not
    enter when the tests run as root)."""

    def __init__(self) -> None:
        initdb = initdb_path()
        if initdb is None:
            raise FileNotFoundError("initdb is not installed (apt-get install postgresql)")
        self.bin = Path(initdb).resolve().parent
        root = Path(tempfile.mkdtemp(prefix="protssl-pg-"))
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self.port = free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            root.chmod(0o755)
            user = pwd.getpwnam("postgres")
            os.chown(root, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{root}'\nfsync = off\nmax_connections = 50\n"
            )
        try:
            self.start()
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "test")
        except BaseException:
            self.destroy()
            raise

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/test"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self._as, str(self.bin / tool), *args], capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr or done.stdout}")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().splitlines()[0])

    def destroy(self) -> None:
        """Stop the cluster (if running) and remove its files."""
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
