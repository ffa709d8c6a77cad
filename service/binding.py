"""Why a port cannot be bound, in the OS's words and with what to do: grpcio says only that it failed.

gRPC's C core also writes its own `E1207 ... add_port.cc:83] Failed to add port ...` line straight
to file descriptor 2 when a bind (or a TLS credential it refuses) fails, before protssl's one line
says the same in words that say what to do. `core_lines_held` holds what is written to stderr
while grpcio adds the port, and lets it through unless adding the port failed; only then are the
C core's lines dropped (to the DEBUG log), and only where GRPC_VERBOSITY does not ask for them.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from protssl.errors import InvalidInputError

__all__ = ["bind_error", "core_lines_held", "probe_bind"]

log = logging.getLogger(__name__)

_CORE_LINE = re.compile(rb"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [^ \]]+:\d+\] ")
"""A line of gRPC's C core (absl's format: severity, MMDD, time, thread id, file:line])."""

_VERBOSE = ("DEBUG", "INFO")
"""GRPC_VERBOSITY values that ask for more of the C core's lines than its errors: the user is
debugging gRPC, so nothing of it is held back."""

_WHAT_TO_DO = {
    errno.EADDRINUSE: "another process listens there: stop it, or give another {flag}",
    errno.EADDRNOTAVAIL: "no interface of this machine has that address: check --host",
    errno.EACCES: "ports below 1024 need privileges: give another {flag}",
}


def probe_bind(host: str, port: int) -> OSError | None:
    """Bind a plain socket to `host:port` and let go: the OSError that stops it, or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, port))
    except OSError as exc:
        return exc
    return None


def bind_error(
    what: str, host: str, port: int, cause: BaseException, flag: str
) -> InvalidInputError:
    """One line: what could not bind where, the OS's reason and, for the usual ones, what to do."""
    reason = cause if isinstance(cause, OSError) else probe_bind(host, port)
    if reason is None or reason.strerror is None:
        return InvalidInputError(f"cannot bind {what} {host}:{port} ({cause})")
    advice = _WHAT_TO_DO.get(reason.errno or 0)
    hint = f": {advice.format(flag=flag)}" if advice else ""
    return InvalidInputError(f"cannot bind {what} {host}:{port} ({reason.strerror}){hint}")


@contextmanager
def core_lines_held() -> Iterator[None]:
    """Run the block with file descriptor 2 going to a temporary file, then write what it held to
    stderr; when the block raises (grpcio could not add the port, which the caller reports in one
    line), the gRPC C core's lines are logged at DEBUG instead and only the others are written.
    Where GRPC_VERBOSITY is DEBUG or INFO the block runs with stderr as it is."""
    verbose = os.environ.get("GRPC_VERBOSITY", "").upper() in _VERBOSE
    stderr = None if verbose else _duplicate_stderr()
    if stderr is None:
        yield
        return
    _flush_stderr()
    failed = False
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            _flush_stderr()
            os.dup2(stderr, 2)
            os.close(stderr)
            held.seek(0)
            lines = held.read().splitlines(keepends=True)
            if failed:
                for line in (line for line in lines if _CORE_LINE.match(line)):
                    log.debug("grpc: %s", line.decode(errors="replace").rstrip())
                lines = [line for line in lines if not _CORE_LINE.match(line)]
            _write_stderr(b"".join(lines))


def _duplicate_stderr() -> int | None:
    """A new descriptor of what fd 2 is now; None where the process has no stderr."""
    try:
        return os.dup(2)
    except OSError:
        return None


def _flush_stderr() -> None:
    """Python's buffered stderr written out, so its lines land before or after the hold, not in it."""
    if sys.stderr is not None:
        sys.stderr.flush()


def _write_stderr(data: bytes) -> None:
    while data:
        data = data[os.write(2, data) :]
