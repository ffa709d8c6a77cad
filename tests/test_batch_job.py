"""Batch jobs in the `jobs` table: what makes two runs the same job, and a real SIGKILL mid-job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from service_support import save_tiny_model

from protssl.batch_job import JobRun, JobSpec, file_sha256
from protssl.cli import main
from protssl.output import read_vectors
from protssl.store import Store, StoreConfig


def _first_records(src: Path, n: int, dest: Path) -> Path:
    chunks = src.read_text().split(">")[1 : n + 1]
    dest.write_text("".join(">" + c for c in chunks))
    return dest


def test_the_key_changes_with_input_bytes_model_and_options(tmp_path: Path) -> None:
    fasta = tmp_path / "a.fasta"
    fasta.write_text(">a\nMKV\n")
    spec = JobSpec.for_files("embed", fasta, tmp_path / "o.h5", model_sha256="m", options={"x": 1})
    assert spec.input_sha256 == file_sha256(fasta) and spec.resumable
    same = JobSpec.for_files("embed", fasta, tmp_path / "o.h5", model_sha256="m", options={"x": 1})
    assert same.key == spec.key
    other_options = JobSpec.for_files(
        "embed", fasta, tmp_path / "o.h5", model_sha256="m", options={"x": 2}
    )
    other_model = JobSpec.for_files(
        "embed", fasta, tmp_path / "o.h5", model_sha256="n", options={"x": 1}
    )
    fasta.write_text(">a\nMKW\n")
    other_bytes = JobSpec.for_files(
        "embed", fasta, tmp_path / "o.h5", model_sha256="m", options={"x": 1}
    )
    assert len({spec.key, other_options.key, other_model.key, other_bytes.key}) == 4
    stdin = JobSpec.for_files("embed", "-", tmp_path / "o.h5", model_sha256="m", options={})
    assert stdin.input_sha256 is None and not stdin.resumable


def test_a_run_continues_the_unfinished_job_of_its_spec(sqlite_url: str, tmp_path: Path) -> None:
    fasta = tmp_path / "a.fasta"
    fasta.write_text(">a\nMKV\n")
    spec = JobSpec.for_files("embed", fasta, tmp_path / "o.h5", model_sha256="m", options={})
    with Store(StoreConfig(url=sqlite_url)) as store:
        first = JobRun(store.jobs, spec, total=1)
        assert not first.continued and first.job.status == "running"
        first.finish(done=0, error="stopped")
        second = JobRun(store.jobs, spec, total=1)
        assert second.continued and second.id == first.id and second.job.error == ""
        second.finish(done=1)
        assert store.jobs.get(first.id).status == "succeeded"
        assert not JobRun(store.jobs, spec, total=1).continued  # a finished job starts anew


def test_a_run_that_starts_over_cancels_the_unfinished_job(sqlite_url: str, tmp_path: Path) -> None:
    """`--overwrite` beside an unfinished job: that job is cancelled, not continued, and no later
    run continues it either (nor any job older than the newest of the spec)."""
    fasta = tmp_path / "a.fasta"
    fasta.write_text(">a\nMKV\n")
    spec = JobSpec.for_files("embed", fasta, tmp_path / "o.h5", model_sha256="m", options={})
    with Store(StoreConfig(url=sqlite_url)) as store:
        first = JobRun(store.jobs, spec, total=1)
        first.finish(done=0, error="stopped")
        over = JobRun(store.jobs, spec, total=1, restart=True)
        assert not over.continued and over.id != first.id
        cancelled = store.jobs.get(first.id)
        assert (cancelled.status, cancelled.error) == (
            "cancelled",
            "replaced by a run that started over",
        )
        over.finish(done=1)
        assert not JobRun(store.jobs, spec, total=1).continued


def _stored_vectors(url: str) -> int:
    with Store(StoreConfig(url=url)) as store:
        return store.embeddings.count()


def _job_done(url: str) -> int:
    with Store(StoreConfig(url=url)) as store:
        jobs = store.jobs.list()
        return jobs[0].done if jobs else 0


@pytest.mark.slow
def test_a_job_killed_mid_run_continues_and_recomputes_nothing_stored(
    sample_fasta: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = save_tiny_model(tmp_path / "tiny")
    fasta = _first_records(sample_fasta, 120, tmp_path / "in.fasta")
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    out = tmp_path / "out.h5"
    options = ["--model", str(model_dir), "--dtype", "float32", "--no-progress"]
    command = [sys.executable, "-m", "protssl", "embed", str(fasta), "-o", str(out), *options]
    command += ["--db", url]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while process.poll() is None and _job_done(url) == 0:  # the first flush: 64 records
        assert time.monotonic() < deadline, "the job recorded no progress"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL, "the job finished before it was killed"
    stored = _stored_vectors(url)
    # the cache is written before a vector reaches the output, the job's count after the output's flush
    assert 64 <= _job_done(url) <= stored < 120

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["continued"] and summary["errors"] == 0
    assert summary["computed"] == 120 - stored  # nothing the store held was computed again
    assert summary["resumed"] + summary["cached"] == stored
    assert summary["resumed"] + summary["records"] == 120
    with Store(StoreConfig(url=url)) as store:
        (job,) = store.jobs.list()
        assert (job.id, job.status, job.total, job.done) == (summary["job"], "succeeded", 120, 120)
        assert job.params["input_sha256"] == file_sha256(fasta)
        assert job.params["options"]["config"]["pooling"] == "mean"
        assert len(job.params["model_sha256"]) == 64
        assert store.embeddings.count() == 120

    reference = tmp_path / "reference.h5"
    assert main(["embed", str(fasta), "-o", str(reference), *options, "--no-cache"]) == 0
    capsys.readouterr()
    resumed = {key: vector for key, vector, _ in read_vectors(out)}
    expected = {key: vector for key, vector, _ in read_vectors(reference)}
    assert sorted(resumed) == sorted(expected) and len(resumed) == 120
    for key, vector in expected.items():
        np.testing.assert_allclose(resumed[key], vector, rtol=0, atol=1e-5)
