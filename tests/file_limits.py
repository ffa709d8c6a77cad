"""A child process whose files cannot grow past a size: how the tests meet a full disk for real.

`RLIMIT_FSIZE` makes the kernel refuse a write past the limit (with SIGXFSZ ignored, the write
fails with EFBIG, "File too large"), the same path through Python, numpy, HDF5 and torch as
ENOSPC on a full disk, and it needs no privileges or mounts."""

from __future__ import annotations

import resource
import signal
from collections.abc import Callable


def file_size_limit(max_bytes: int) -> Callable[[], None]:
    """A `preexec_fn` for `subprocess.run`: every file the child writes stops at `max_bytes`."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return limit
