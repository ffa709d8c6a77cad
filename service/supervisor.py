"""Several server processes on one port: each with its own GIL, model worker and batcher.

One Python process serves gRPC calls under one GIL (about one core of call handling) and runs one
model worker; on a machine with many cores, N processes bound to the same port (SO_REUSEPORT, the
kernel spreads client connections across them) scale both. The parent holds the port, migrates the
store once, starts the children (spawned, so no grpc or torch state is forked), announces the group
when every child serves, forwards SIGTERM/SIGINT and exits when they have stopped. A child that dies
stops the group: a half-served port is worse than a clear exit.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Protocol

import torch

from protssl.entrypoint import configure_logging
from protssl.errors import (
    EXIT_UNEXPECTED,
    EXIT_USER_ERROR,
    ProtsslError,
    exit_code_for,
)
from protssl.hardware import usable_cores
from protssl.store import Store
from service.binding import bind_error
from service.config import ServiceConfig, store_config
from service.shutdown import SIGNAL_POLL_S, stop_on_signals

__all__ = ["ServeProcess", "supervise"]

log = logging.getLogger(__name__)

START_TIMEOUT_S = 600.0
"""How long the children get to load the model, warm up and bind."""


class ServeProcess(Protocol):
    """What each child runs (`service.server.serve_process`): one server on the shared port."""

    def __call__(
        self,
        config: ServiceConfig,
        *,
        reuse_port: bool,
        on_ready: Callable[[int, int | None], None] | None,
    ) -> int: ...


@contextlib.contextmanager
def reserved_port(host: str, port: int) -> Iterator[int]:
    """Bind `host:port` (0 = a free port) with SO_REUSEPORT and hold it while the children bind it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise bind_error("the gRPC port", host, port, exc, "--port") from None
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def child_config(config: ServiceConfig, index: int, port: int) -> ServiceConfig:
    """Process `index`'s settings: the shared port, its own metrics port (`metrics_port + index`)."""
    metrics = config.metrics_port
    return replace(
        config,
        port=port,
        processes=1,
        metrics_port=metrics + index if metrics else metrics,
    )


def _child(
    serve_process: ServeProcess,
    config: ServiceConfig,
    index: int,
    threads: int,
    level: int,
    ready: multiprocessing.Queue,  # type: ignore[type-arg]
) -> None:
    """A spawned server process (logging and torch threads are set up here, nothing is inherited)."""
    configure_logging(level, timestamps=True, process=f"server {index}")
    torch.set_num_threads(threads)
    parent = os.getppid()
    threading.Thread(target=_stop_when_orphaned, args=(parent,), daemon=True).start()
    try:
        code = serve_process(
            config,
            reuse_port=True,
            on_ready=lambda port, metrics_port: ready.put((index, metrics_port)),
        )
    except ProtsslError as exc:  # a bad model path, an unreachable store: one line, not a traceback
        log.error("%s", exc)
        code = exit_code_for(exc)
    raise SystemExit(code)


def _stop_when_orphaned(parent: int) -> None:
    """SIGTERM this process (the graceful path) once its parent is gone, e.g. killed with -9:
    no server keeps the port unsupervised."""
    while os.getppid() == parent:
        time.sleep(1.0)
    log.error("the supervising process %d is gone; stopping", parent)
    os.kill(os.getpid(), signal.SIGTERM)


def supervise(config: ServiceConfig, serve_process: ServeProcess) -> int:
    """Run `config.processes` server processes on one port until SIGTERM or SIGINT; the exit code.

    Each child runs `serve_process` (a module-level function: spawn sends it by name).
    """
    n = config.processes
    threads = max(1, usable_cores() // n)
    with reserved_port(config.host, config.port) as port:
        if config.store:
            Store(store_config(config)).close()  # migrate once, before n processes open it
        context = multiprocessing.get_context("spawn")
        ready: multiprocessing.Queue = context.Queue()  # type: ignore[type-arg]
        level = logging.getLogger().getEffectiveLevel()
        children = [
            context.Process(
                target=_child,
                args=(serve_process, child_config(config, i, port), i, threads, level, ready),
                name=f"protssl-server-{i}",
            )
            for i in range(n)
        ]
        stopped = stop_on_signals()
        # Started with SIGINT ignored, which a new interpreter keeps until its server installs its
        # own handler: Ctrl-C reaches the whole process group, and a child still starting up died
        # of it with a traceback (in its imports); this process stops them with SIGTERM.
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for child in children:
                child.start()
        finally:
            signal.signal(signal.SIGINT, handler)
        try:
            metrics_ports = _wait_ready(children, ready, stopped)
            if metrics_ports is not None:
                log.info(
                    "serving protssl.v1 on %s:%d (%d processes, %d torch threads each; "
                    "metrics ports %s)",
                    config.host,
                    port,
                    n,
                    threads,
                    metrics_ports,
                )
                while not stopped():
                    time.sleep(SIGNAL_POLL_S)
                    if _report_dead(children, "while serving; stopping the others"):
                        break
        finally:
            log.info("shutting down %d processes (grace %.1f s)", n, config.grace_s)
            for child in children:
                if child.is_alive():
                    child.terminate()  # SIGTERM: each finishes its in-flight calls
            for child in children:
                child.join(config.grace_s + 60)
                if child.is_alive():
                    log.error("%s did not stop; killing it", child.name)
                    child.kill()
                    child.join()
    codes = [child.exitcode for child in children]
    log.info("stopped (exit codes %s)", codes)
    # A child ended by the signal that stopped the group did not fail: Ctrl-C reaches the whole
    # process group (a child still loading dies of it), and the parent's own SIGTERM can land while
    # a child that already stopped is exiting (Python has put the default handlers back by then).
    by_stop = {-signal.SIGTERM, -signal.SIGINT} if stopped() else set()
    failed = [code for code in codes if code and code not in by_stop]
    if not failed:
        return 0
    return EXIT_USER_ERROR if EXIT_USER_ERROR in failed else EXIT_UNEXPECTED


def _wait_ready(
    children: Sequence[multiprocessing.process.BaseProcess],
    ready: multiprocessing.Queue,  # type: ignore[type-arg]
    stopped: Callable[[], bool],
) -> list[int | None] | None:
    """Every child's metrics port once all serve; None when one died or a stop came first."""
    ports: dict[int, int | None] = {}
    deadline = time.monotonic() + START_TIMEOUT_S
    while len(ports) < len(children):
        if stopped() or _report_dead(children, "before serving"):
            return None
        if time.monotonic() > deadline:
            log.error("the server processes did not all start within %.0f s", START_TIMEOUT_S)
            return None
        try:
            index, metrics_port = ready.get(timeout=0.5)
        except queue.Empty:
            continue
        ports[index] = metrics_port
    return [ports[i] for i in range(len(children))]


def _report_dead(children: Sequence[multiprocessing.process.BaseProcess], what: str) -> bool:
    """Log the first child that has exited (`what`: when, and what follows); whether one had."""
    dead = [c for c in children if not c.is_alive()]
    if dead:
        log.error("%s exited (code %s) %s", dead[0].name, dead[0].exitcode, what)
    return bool(dead)
