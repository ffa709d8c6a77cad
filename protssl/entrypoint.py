"""What only entry points do, done one way: configure logging once, turn errors into exit codes.

The entry points are the `protssl` command, `python -m service`, `python -m protssl.demo` and the
`python -m protssl.pretrain` that torchrun launches. Library code only logs and raises: a
protssl error leaves a process as one line on stderr and the exit code `errors.ERROR_TABLE`
gives it, never as a traceback.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from protssl.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, ProtsslError, exit_code_for

__all__ = ["Terminated", "configure_logging", "interruption", "keeping", "run_main"]


class Terminated(KeyboardInterrupt):
    """SIGTERM (what SLURM, Kubernetes and `kill` send), raised where Ctrl-C would raise
    KeyboardInterrupt so that it takes the same path: outputs are closed, jobs recorded."""


def interruption(signum: int, kept: str) -> KeyboardInterrupt:
    """What to raise for a command that caught `signum` (SIGTERM or SIGINT) itself and stopped:
    `run_main` says `kept` and exits 130 as it does for one it did not catch."""
    return Terminated(kept) if signum == signal.SIGTERM else KeyboardInterrupt(kept)


class _Reworded(logging.Filter):
    """protssl's own log lines with their advice spelled as the entry point's options (a warning
    that says `gaps strip` reads `--gaps strip` on the command line)."""

    def __init__(self, wording: Callable[[str], str]) -> None:
        super().__init__()
        self.wording = wording

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("protssl"):
            record.msg, record.args = self.wording(record.getMessage()), None
        return True


def configure_logging(
    level: int | str,
    *,
    timestamps: bool = False,
    process: str = "",
    wording: Callable[[str], str] | None = None,
) -> None:
    """Log to stderr from `level` up (a number or a name such as `info`); servers and training
    runs add timestamps, processes of a group their name; `wording` spells protssl's advice as
    the entry point's options. Like `logging.basicConfig`, a no-op where logging is set up
    already."""
    stamp = "%(asctime)s " if timestamps else ""
    name = f"[{process}] %(name)s" if process else "%(name)s"
    root = logging.getLogger()
    configured = bool(root.handlers)
    logging.basicConfig(
        level=level.upper() if isinstance(level, str) else level,
        format=f"{stamp}%(levelname)s {name}: %(message)s",
    )
    if wording is not None and not configured:
        for handler in root.handlers:
            handler.addFilter(_Reworded(wording))
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # Alembic's plugin and context lines (16 per start); the store logs the migration itself.
        logging.getLogger("alembic").setLevel(logging.WARNING)
        # gRPC's C core logs a failed TLS handshake (and more) at INFO, straight to stderr, beside
        # the one line that says what to do; read when grpc is imported, so only where it is not yet
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def run_main(
    run: Callable[[], int], *, prog: str, wording: Callable[[str], str] | None = None
) -> int:
    """`run()`'s exit code; a protssl error is `prog: error: message` on stderr (through `wording`,
    which spells advice as the entry point's options) and its table exit code, Ctrl-C and SIGTERM
    are EXIT_INTERRUPTED (what was computed is kept), a closed stdout pipe is 0, a full disk (a
    quota, an I/O error, no permission) that no protssl code caught one line. A command that
    installs its own SIGTERM handler (a server, training) keeps it."""
    try:
        with _sigterm_as_interrupt():
            return int(run())
    except ProtsslError as exc:
        message = str(exc) if wording is None else wording(str(exc))
        print(f"{prog}: error: {message}", file=sys.stderr)
        return exit_code_for(exc)
    except Terminated as exc:
        print(f"{prog}: terminated (SIGTERM); {_kept(exc)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt as exc:
        print(f"{prog}: interrupted; {_kept(exc)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
    except OSError as exc:
        if exc.errno not in _MACHINE_ERRNOS:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"{prog}: error: {os.strerror(exc.errno)}{where}", file=sys.stderr)
        return EXIT_USER_ERROR


def _kept(exc: KeyboardInterrupt) -> str:
    """What an interrupted command keeps: what `keeping` said, else the usual."""
    return str(exc) or "work done so far is kept"


@contextmanager
def keeping(what: str) -> Iterator[None]:
    """Inside, Ctrl-C and SIGTERM end the command saying `what` is kept, for a command that keeps
    something other than its output's records so far (one written whole at its end)."""
    try:
        yield
    except KeyboardInterrupt as exc:
        raise type(exc)(what) from None


_MACHINE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS, errno.EACCES, errno.EPERM}
)
"""A full disk, a quota, a file past the filesystem's (or ulimit's) size, an I/O error, a read-only
filesystem, no permission (another user's file or folder on a shared cluster): wherever a read or
write meets one that no protssl code turned into its own error, it is one line naming the file, not
a traceback."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises `Terminated` inside; the handler found is put back after (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
