"""`bench/soak.py`, short: mixed good and bad calls, stalled streams and a flood of tiny calls
against a real `python -m service`; it must pass its own criteria and report them as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.service]

SOAK = Path(__file__).resolve().parents[1] / "bench" / "soak.py"


def test_short_soak_passes(service_model_dir: Path) -> None:
    command = [sys.executable, str(SOAK), "--duration", "6", "--clients", "8"]
    command += ["--bad-rate", "0.05", "--model", str(service_model_dir)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0 and summary["passed"], (summary, done.stderr[-3000:])
    assert summary["unexpected"] == 0 and summary["expected"] == summary["calls"]
    bad = summary["statuses"].get("INVALID_ARGUMENT", 0) + summary["statuses"].get("NOT_FOUND", 0)
    assert bad > 0  # the bad calls were sent, and each got its status
    assert summary["statuses"].get("DEADLINE_EXCEEDED", 0) >= 2  # stalled streams were ended
    assert summary["good_calls_min_per_client"] > 0 and summary["flood_calls"] > 0
    for key in ("rss_start_mb", "rss_end_mb", "p50_ms", "p99_ms"):
        assert summary[key] > 0
