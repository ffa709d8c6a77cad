"""Why a port cannot be bound, in the OS's words and with what to do: grpcio says only that it failed."""

from __future__ import annotations

import errno
import socket

from protssl.errors import InvalidInputError

__all__ = ["bind_error", "probe_bind"]

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
