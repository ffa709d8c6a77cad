"""Batch jobs in the store: progress, finishing, lookups."""

from __future__ import annotations

import pytest

from protssl.errors import InvalidInputError, NotFoundError
from protssl.store import Store


def test_jobs_progress_and_finish(store: Store) -> None:
    job = store.jobs.create("embed", total=10, params={"fasta": "x.fasta"})
    assert job.status == "pending"
    running = store.jobs.update(job.id, status="running", done=4)
    assert (running.status, running.done, running.finished_at) == ("running", 4, None)
    assert [j.id for j in store.jobs.list(status="running")] == [job.id]
    done = store.jobs.update(job.id, status="succeeded", done=10)
    assert done.finished_at is not None and done.finished_at >= done.created_at
    assert store.jobs.get(job.id).params == {"fasta": "x.fasta"}
    with pytest.raises(InvalidInputError):
        store.jobs.update(job.id, status="exploded")
    with pytest.raises(NotFoundError):
        store.jobs.get("nope")


def test_unfinished_finds_the_job_of_a_key_until_it_succeeds(store: Store) -> None:
    assert store.jobs.unfinished("embed", "k1") is None
    job = store.jobs.create("embed", params={"key": "k1"})
    store.jobs.create("embed", params={"key": "k2"})
    store.jobs.create("pretrain", params={"key": "k1"})
    assert store.jobs.unfinished("embed", "k1") == store.jobs.get(job.id)
    store.jobs.update(job.id, status="failed", error="killed")
    assert store.jobs.unfinished("embed", "k1").id == job.id  # a failed job is continued too
    store.jobs.update(job.id, status="succeeded")
    assert store.jobs.unfinished("embed", "k1") is None
