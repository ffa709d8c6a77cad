"""Freed heap memory goes back to the kernel: on request, and at most every interval in a batch job."""

from __future__ import annotations

import platform
import subprocess
import sys
import time

import pytest

from protssl.memory import MemoryReleaser

HEAP_HOLES_PROBE = """
import ctypes, os
from protssl.memory import release_freed_memory
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss_mib():
    pages = int(open("/proc/self/statm").read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
blocks = [libc.malloc(64 * 1024) for _ in range(2048)]
for block in blocks:
    ctypes.memset(block, 1, 64 * 1024)
start = rss_mib()
for block in blocks[::2]:  # 64 MiB of holes between live blocks: glibc keeps them
    libc.free(block)
freed = rss_mib()
assert release_freed_memory()
print(start - freed, freed - rss_mib())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc_trim")
def test_release_freed_memory_returns_heap_holes_to_the_kernel():
    """64 MiB freed between live blocks stays resident until `release_freed_memory` hands it back
    (protobuf's own periodic malloc_trim would otherwise do it while holding the GIL)."""
    probe = subprocess.run(
        [sys.executable, "-c", HEAP_HOLES_PROBE], capture_output=True, text=True, check=True
    )
    kept_by_free, released = map(float, probe.stdout.split())
    assert kept_by_free < 8
    assert released >= 48


def test_a_batch_jobs_releaser_releases_at_most_once_an_interval() -> None:
    releaser = MemoryReleaser(interval_s=0.2)
    for _ in range(50):
        releaser()  # right after creation: not yet
    assert releaser.releases == 0
    time.sleep(0.25)
    for _ in range(50):
        releaser()
    expected = 1 if platform.libc_ver()[0] == "glibc" else 0
    assert releaser.releases == expected
