"""Several server processes on one port (`--processes`): real processes, real SQLite, real clients."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from service_support import load_tiny, real_records, save_tiny_model, wait_for_line

import protssl
from protssl.embedding import embed_records
from protssl.errors import InvalidInputError
from service.config import ServiceConfig
from service.supervisor import child_config, reserved_port

TWO_PROCESSES = (sys.executable, "-m", "service", "--processes", "2", "--port", "0")
EMBED_CALLS = re.compile(
    r'protssl_requests_total\{code="OK",method="/protssl.v1.EmbeddingService/Embed"\} (\S+)'
)


def test_each_process_gets_its_own_metrics_port():
    config = ServiceConfig(port=0, metrics_port=9500, processes=3)
    assert [child_config(config, i, 4321).metrics_port for i in range(3)] == [9500, 9501, 9502]
    assert {child_config(config, i, 4321).port for i in range(3)} == {4321}
    assert child_config(config, 2, 4321).processes == 1
    assert child_config(ServiceConfig(metrics_port=0, processes=2), 1, 1).metrics_port == 0
    assert child_config(ServiceConfig(metrics_port=None, processes=2), 1, 1).metrics_port is None
    with pytest.raises(InvalidInputError, match="processes must be at least 1"):
        ServiceConfig(processes=0)
    with pytest.raises(InvalidInputError, match="run past 65535"):
        ServiceConfig(metrics_port=65535, processes=2)


def test_a_reserved_port_is_shared_only_by_reuse_port_sockets():
    with reserved_port("127.0.0.1", 0) as port:
        sibling = socket.socket()
        sibling.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sibling.bind(("127.0.0.1", port))  # what each child's gRPC server does
        sibling.close()
        plain = socket.socket()
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
        plain.close()
    taken = socket.socket()  # a port some other server holds without SO_REUSEPORT
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    try:
        with (
            pytest.raises(
                InvalidInputError,
                match=f"cannot bind the gRPC port 127.0.0.1:{busy} \\(Address already in use\\): another",
            ),
            reserved_port("127.0.0.1", busy),
        ):
            pass
    finally:
        taken.close()


@contextmanager
def group(
    model_dir: Path, database: Path, *extra: str
) -> Iterator[tuple[int, list[int], list[str]]]:
    """`python -m service --processes 2` until it serves; yields port, metrics ports, stderr lines."""
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    process = subprocess.Popen(
        [
            *TWO_PROCESSES,
            "--metrics-port",
            "0",
            "--model",
            str(model_dir),
            "--dtype",
            "float32",
            "--database-url",
            f"sqlite:///{database}",
            *extra,
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        match, lines = wait_for_line(
            process, r"serving protssl.v1 on 127.0.0.1:(\d+) .*metrics ports \[(.*)\]"
        )
        ports = [int(p) for p in match.group(2).split(", ")]
        yield int(match.group(1)), ports, lines
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=120)
        lines.append(rest)
        assert process.returncode == 0, "".join(lines)
    finally:
        process.kill()
        process.wait()


def embed_calls(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        found = EMBED_CALLS.search(reply.read().decode())
    return float(found.group(1)) if found else 0.0


@pytest.mark.slow
def test_two_processes_share_the_port_the_store_and_the_work(sample_fasta, tmp_path):
    model_dir = save_tiny_model(tmp_path / "tiny")
    records = real_records(sample_fasta, 48, max_length=400)
    expected = {e.id: e.vector for e in embed_records(records, load_tiny(model_dir))}
    database = tmp_path / "cache.sqlite3"
    with group(model_dir, database) as (port, metrics_ports, lines):
        assert len(metrics_ports) == 2 and len(set(metrics_ports)) == 2

        def call(index: int) -> dict[str, np.ndarray]:
            # each SDK client has a connection of its own; the kernel spreads connections
            with protssl.Client(f"127.0.0.1:{port}", timeout=120) as client:
                mine = records[3 * index : 3 * index + 3]
                result = client.embed(mine)
                again = client.embed(mine)  # cached now, whichever process answers
                assert all(again.cached) and np.array_equal(again.vectors, result.vectors)
                return dict(zip(result.ids, result.vectors, strict=True))

        with ThreadPoolExecutor(16) as pool:
            served: dict[str, np.ndarray] = {}
            for part in pool.map(call, range(16)):
                served.update(part)
        calls = [embed_calls(p) for p in metrics_ports]
    assert sorted(served) == sorted(expected)
    for key, vector in served.items():
        np.testing.assert_allclose(vector, expected[key], atol=1e-4)
    # 16 connections: the chance that all land on one process is 2 x 2^-16
    assert sum(calls) == 32 and min(calls) > 0, calls
    text = "".join(lines)
    assert "[server 0]" in text and "[server 1]" in text and "exit codes [0, 0]" in text


@pytest.mark.slow
def test_a_child_that_cannot_start_stops_the_group_with_one_line(tmp_path):
    process = subprocess.run(
        [
            *TWO_PROCESSES,
            "--metrics-port",
            "off",
            "--store",
            "false",
            "--model",
            str(tmp_path / "no-such-model"),
        ],
        env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 2, process.stderr
    assert "no-such-model" in process.stderr and "before serving" in process.stderr
    assert "Traceback" not in process.stderr


def _stat(entry: Path) -> list[str] | None:
    """/proc/PID/stat fields after the command name (state, ppid, ...); None when it is gone."""
    try:
        return (entry / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is `pid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        fields = _stat(entry) if entry.name.isdigit() else None
        if fields is not None and int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def _loaded_torch(pid: int) -> bool:
    """Whether process `pid` has torch's library mapped (its interpreter is long up by then)."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:  # ended meanwhile
        return False


def _alive(pid: int) -> bool:
    fields = _stat(Path(f"/proc/{pid}"))
    return fields is not None and fields[0] != "Z"


def _two_tiny_servers(tmp_path: Path, **popen: Any) -> subprocess.Popen[str]:
    """`--processes 2` serving a tiny model without a store or metrics, stderr piped."""
    model_dir = save_tiny_model(tmp_path / "tiny")
    return subprocess.Popen(
        [*TWO_PROCESSES, "--metrics-port", "off", "--store", "false", "--model", str(model_dir)],
        env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"),
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


@pytest.mark.slow
def test_children_stop_when_the_parent_is_killed(sample_fasta, tmp_path):
    process = _two_tiny_servers(tmp_path)
    servers: list[int] = []
    try:
        wait_for_line(process, r"serving protssl.v1 on 127.0.0.1:\d+")
        servers = _children(process.pid)
        assert len(servers) >= 2  # the two servers (and multiprocessing's resource tracker)
        process.kill()  # SIGKILL: no chance to stop its children
        process.wait()
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in servers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in servers)
        _, rest = process.communicate(timeout=30)
    finally:
        process.kill()
        for pid in servers:  # whatever a failure left running holds the port and the pipe
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.communicate(timeout=30)
    assert rest.count("is gone; stopping") == 2 and rest.count("stopped") >= 2, rest


@pytest.mark.slow
@pytest.mark.parametrize("when", ["starting", "serving"])
def test_ctrl_c_to_the_process_group_stops_it_with_exit_0(tmp_path, when: str):
    """Ctrl-C (or systemd's SIGTERM to the whole cgroup) reaches every process: a child still
    loading died of it, and the parent's SIGTERM landed on a stopped child while its interpreter
    exited: the group exited 1, exit codes like [-2, -15], as if a child had failed."""
    # its own process group, as a terminal's foreground job
    process = _two_tiny_servers(tmp_path, start_new_session=True)
    try:
        if when == "serving":
            wait_for_line(process, r"serving protssl.v1 on 127.0.0.1:\d+")
        else:  # the two servers loading (torch imported), not serving; a signal before that
            # lands in the interpreter's own start-up, which dies of it with a traceback of its own
            deadline = time.monotonic() + 60
            while (
                sum(_loaded_torch(child) for child in _children(process.pid)) < 2
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)
        _, rest = process.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == 0, rest
    assert "exited (code" not in rest and "Traceback" not in rest
