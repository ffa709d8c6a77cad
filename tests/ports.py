"""Free loopback ports for servers a test must start by number (PostgreSQL, torch.distributed).

`bind(("127.0.0.1", 0))` hands out a port from the kernel's ephemeral range, the same range every
outgoing connection takes its source port from: between the check and the server's own bind,
another test's gRPC client or PostgreSQL session (in this process or in a parallel pytest worker)
can take it. Ports here come from below that range, in a slice of their own per pytest-xdist
worker, so only an explicit bind elsewhere on the machine can collide, and a busy one is skipped.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
from pathlib import Path

_BASE = 20_000
_SLICE = 1_000
_WORKERS = 8


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _worker_index() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # gw0, gw1, ... under xdist
    return int(worker[2:]) % _WORKERS if worker[2:].isdigit() else 0


def _worker_ports() -> range | None:
    """This worker's slice, or None where the kernel's ephemeral range reaches down into the slices."""
    if _ephemeral_low() < _BASE + _WORKERS * _SLICE:
        return None
    start = _BASE + _worker_index() * _SLICE
    return range(start, start + _SLICE)


_PORTS = _worker_ports()
_next_index = itertools.count(random.randrange(_SLICE))  # runs side by side seldom start alike


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A TCP port free on localhost now, that no outgoing connection will take meanwhile.

    Successive calls in one process return different ports of this worker's slice. Where there is
    no slice (see `_worker_ports`), the kernel picks the port, as `bind(0)` does.
    """
    if _PORTS is None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    for _ in range(_SLICE):
        port = _PORTS[next(_next_index) % _SLICE]
        if _bindable(port):
            return port
    raise RuntimeError(f"no free loopback port in {_PORTS.start}-{_PORTS.stop - 1}")
