"""Another process holding something (an output's lock, a run's) while a test tries it as a third."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def another_process_holding(setup: str) -> Iterator[int]:
    """A Python child that runs `setup` (keeping what it takes in a variable), says it is ready and
    holds on until the block ends; yields its pid."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sys\n{setup}\nprint('ready', flush=True)\nsys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        yield child.pid
    finally:
        child.communicate("")
    assert child.returncode == 0
