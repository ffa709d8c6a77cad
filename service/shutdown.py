"""Graceful shutdown: how a serving process (a server, or the supervisor of several) sees SIGTERM/SIGINT."""

from __future__ import annotations

import signal
from collections.abc import Callable

__all__ = ["SIGNAL_POLL_S", "stop_on_signals"]

SIGNAL_POLL_S = 0.2
"""How often a serving process looks for SIGTERM/SIGINT."""


def stop_on_signals() -> Callable[[], bool]:
    """Catch SIGTERM and SIGINT from now on; returns `stopped()`, true once either arrived.

    Only a process's entry point calls it: the handlers stay until the process exits, so a late
    signal during the shutdown cannot kill it half way. The handler only appends to a list: a
    handler that sets a threading.Event takes a lock, and a second signal landing while the first
    handler holds it deadlocks the process (seen with `timeout` forwarding a SIGTERM that `kill`
    had already sent).
    """
    received: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, frame: received.append(number))
    return lambda: bool(received)
