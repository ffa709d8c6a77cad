"""`bench/store_throughput.py`'s arguments: a count that cannot be one, or a FASTA that is not
there, is one line and exit 2 before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "store_throughput.py"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--limit", "-5"], "argument --limit: must be 1 or more, not -5"),  # ran all but 5
        (["--limit", "0"], "argument --limit: must be 1 or more, not 0"),  # an IndexError
        (["--batch", "0"], "argument --batch: must be 1 or more, not 0"),  # a ValueError
        (["--fasta", "/nonexistent.fa"], "/nonexistent.fa: no such file"),  # a traceback
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args: list[str], said: str) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"store_throughput.py: error: {said}"
    assert "Traceback" not in done.stderr
