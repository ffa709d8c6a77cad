"""Heap memory a long run has freed goes back to the kernel.

glibc keeps the pages of freed blocks inside its heap, and forwards over batches of varying
shapes leave it fragmented: `protssl embed` of the 2,000-record corpus sample, three times over
(6,000 records, bf16 on an AMX host), grew from ~600 MB to ~1.5 GB resident, and a 20,000-record
run was still growing when stopped at 9,500 (1.7 GB); an overnight job would run out of memory.
glibc's `malloc_trim(0)` hands the free pages back. It costs a walk of the heap and the next
forwards' page faults, so a batch job calls it every `RELEASE_INTERVAL_S` (`MemoryReleaser`), and
the server when its model worker is idle.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable

__all__ = ["RELEASE_INTERVAL_S", "MemoryReleaser", "release_freed_memory"]

RELEASE_INTERVAL_S = 10.0
"""Seconds between a batch job's releases."""


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # type: ignore[no-any-return]
    except (OSError, TypeError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> bool:
    """Return the heap memory freed since the last call to the kernel (glibc `malloc_trim`; ctypes
    drops the GIL for it, so no other Python thread waits). False where the C library has none."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


class MemoryReleaser:
    """`release_freed_memory` at most every `interval_s` seconds, however often it is called."""

    def __init__(self, interval_s: float = RELEASE_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.releases = 0
        self._last = time.monotonic()

    def __call__(self) -> None:
        if time.monotonic() - self._last < self.interval_s:
            return
        if release_freed_memory():
            self.releases += 1
        self._last = time.monotonic()
