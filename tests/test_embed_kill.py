"""`protssl embed` killed for real (SIGKILL at random moments, SIGTERM) loses nothing.

Each test runs the real command in a subprocess on real records (examples/proteins.fasta, 300
proteins) with a tiny model. After every kill OUTPUT is absent or a complete readable file; the
run that finally completes has every record exactly once, with an uninterrupted run's vectors.
`PROTSSL_KILL_SEED` replays a failing sequence of kill times (the seed is in the failure message).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES
from service_support import save_tiny_model

from protssl.fasta import read_fasta
from protssl.output import dataset_name, journal_path, read_vectors
from protssl.store import Store, StoreConfig, StoredJob

FASTA = EXAMPLES / "proteins.fasta"
KILLS = 6
"""SIGKILLs per test; a run that completes before its kill ends the series early."""


def _command(model: Path, out: Path, *extra: str) -> list[str]:
    return [
        *(sys.executable, "-m", "protssl", "embed", str(FASTA), "-o", str(out)),
        *("--model", str(model), "--dtype", "float32", "--no-progress", "--max-tokens", "1024"),
        *extra,
    ]


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")


def _vectors(path: Path) -> dict[str, np.ndarray]:
    rows = list(read_vectors(path))
    ids = [record_id for record_id, _, _ in rows]
    assert len(ids) == len(set(ids)), "a record id appears twice"
    return {record_id: vector for record_id, vector, _ in rows}


def _same(got: dict[str, np.ndarray], expected: dict[str, np.ndarray], why: str) -> None:
    assert set(got) <= set(expected), why
    for record_id, vector in got.items():
        np.testing.assert_allclose(vector, expected[record_id], rtol=0, atol=1e-5, err_msg=why)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("kill") / "tiny")


@pytest.fixture(scope="module")
def reference(model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, float]:
    """An uninterrupted run's vectors and its compute seconds (the window kills fall in)."""
    out = tmp_path_factory.mktemp("reference") / "reference.h5"
    done = subprocess.run(
        _command(model, out, "--no-cache"), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    ids = [record.id for record in read_fasta(FASTA)]
    vectors = _vectors(out)
    assert sorted(vectors) == sorted(ids) and len(ids) == 300
    return vectors, summary["seconds"]


def _done(out: Path) -> int:
    """Records OUTPUT and its journal hold (what a continued run skips)."""
    names = {dataset_name(key) for key, _, _ in read_vectors(out)} if out.exists() else set()
    for chunk in journal_path(out).glob("chunk-*.npz"):
        with np.load(chunk) as data:
            names.update(data.files)
    return len(names - {"__provenance__"})


def _job(url: str) -> StoredJob:
    """The one job the store at `url` holds."""
    with Store(StoreConfig(url=url)) as opened:
        (job,) = opened.jobs.list()
        return job


def _kill_at_random(command: list[str], out: Path, rng: random.Random, window: float) -> bool:
    """Start `command`, SIGKILL it a random time after it opened OUTPUT's journal; False when it
    finished first."""
    process = subprocess.Popen(
        command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while process.poll() is None and not journal_path(out).is_dir():
        assert time.monotonic() < deadline, "the job never opened its output"
        time.sleep(0.01)
    time.sleep(rng.uniform(0, window))
    process.send_signal(signal.SIGKILL)
    _, err = process.communicate(timeout=60)
    if process.returncode == 0:
        return False
    assert process.returncode == -signal.SIGKILL, err.decode()
    return True


def _complete(out: Path) -> bool:
    """OUTPUT was closed with every record in it and its journal dropped."""
    return out.exists() and not journal_path(out).exists() and _done(out) == 300


def _kill_series(
    command: list[str],
    out: Path,
    url: str,
    expected: dict,
    *,
    store: bool,
    rng: random.Random,
    window: float,
    why: str,
) -> tuple[int, bool]:
    """SIGKILL runs of `command` (each continuing OUTPUT) up to KILLS times, each a random time
    within `window` scaled to the share of the work left: (kills that landed before the job was
    done, whether one landed only after it was: as good as an exit)."""
    killed = 0
    for attempt in range(KILLS):
        run = command if store or attempt == 0 else [*command, "--resume"]
        left = window * (300 - _done(out)) / 300
        if not _kill_at_random(run, out, rng, window=max(left, 0.05)):
            return killed, False
        if _job(url).status == "succeeded" if store else _complete(out):
            return killed, True
        killed += 1
        if out.exists():  # OUTPUT is only ever replaced whole: absent, or complete and readable
            _same(_vectors(out), expected, f"{why}, after kill {killed}")
    return killed, False


@pytest.mark.slow
@pytest.mark.parametrize(
    ("suffix", "store"),
    [(".h5", True), (".npz", False)],
    ids=["h5-with-store", "npz-without-store"],
)
def test_random_sigkills_lose_nothing_and_duplicate_nothing(
    suffix: str,
    store: bool,
    model: Path,
    reference: tuple[dict, float],
    tmp_path: Path,
) -> None:
    expected, seconds = reference
    seed = int(os.environ.get("PROTSSL_KILL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    # The kills fall within the reference run's time; a run faster than it (a quieter machine)
    # can finish before 3 kills landed, so the series starts over with half the window.
    window = 0.7 * seconds
    for series in range(4):
        folder = tmp_path / f"series-{series}"
        folder.mkdir()
        out = folder / f"out{suffix}"
        url = f"sqlite:///{folder / 'store.sqlite3'}"
        # with the store the job continues by itself; without it, --resume continues OUTPUT
        command = _command(model, out, "--db", url) if store else _command(model, out, "--no-cache")
        why = f"seed {seed}, series {series}"
        killed, finished = _kill_series(
            command, out, url, expected, store=store, rng=rng, window=window, why=why
        )
        if killed >= 3:
            break
        window /= 2
    assert killed >= 3, f"seed {seed}: only {killed} of the runs were killed before they finished"

    if not store and (out.exists() or journal_path(out).exists()):
        refused = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
        assert refused.returncode == 2
        (line,) = refused.stderr.strip().splitlines()
        assert "--resume" in line and "Traceback" not in refused.stderr
    if not finished:
        final = command if store else [*command, "--resume"]
        done = subprocess.run(final, env=_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"seed {seed}: {done.stderr}"
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert summary["resumed"] + summary["records"] == 300, f"seed {seed}: {summary}"
        if store:
            assert summary["continued"] == (killed > 0)
    got = _vectors(out)
    assert sorted(got) == sorted(expected), f"seed {seed}: records missing or extra"
    _same(got, expected, f"seed {seed}, final")
    assert not journal_path(out).exists()
    if store:
        job = _job(url)
        assert (job.status, job.done, job.total) == ("succeeded", 300, 300)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".h5", ".npz"])
def test_sigterm_closes_the_output_like_ctrl_c(
    suffix: str, model: Path, reference: tuple[dict, float], tmp_path: Path
) -> None:
    expected, _ = reference
    out = tmp_path / f"out{suffix}"
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    command = _command(model, out, "--db", url)
    process = subprocess.Popen(
        command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while process.poll() is None and not any(journal_path(out).glob("chunk-*")):
        assert time.monotonic() < deadline, "the job wrote no chunk"
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if "random weights" not in line]
    assert lines == ["protssl embed: terminated (SIGTERM); work done so far is kept"]
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["seconds"] > 0 and summary["res_per_s"] > 0  # the time of what was done
    kept = _vectors(out)  # the output is closed: complete, readable, no journal left
    assert not journal_path(out).exists()
    assert 64 <= len(kept) == summary["records"] < 300
    _same(kept, expected, "after SIGTERM")
    with Store(StoreConfig(url=url)) as opened:
        (job,) = opened.jobs.list()
        assert (job.status, job.error, job.done) == ("failed", "stopped", len(kept))

    again = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["continued"] and summary["resumed"] == len(kept)
    assert summary["cached"] + summary["computed"] == summary["records"] == 300 - len(kept)
    got = _vectors(out)
    assert sorted(got) == sorted(expected)
    _same(got, expected, "after SIGTERM and a second run")
