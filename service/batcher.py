"""Dynamic batcher: concurrent requests merged into token-budget batches on ONE model worker thread.

Each call submits a `Job` (its records and embedding options). The worker waits for the first job,
then up to `max_queue_delay` for more jobs with the same options, takes them in arrival order up to
`max_batch_tokens`, and runs them through `protssl.embed.embed_records` as one group, so sixteen
clients sending one sequence each cost about one batched forward. A job completes as soon as its
own records are done. The queue is bounded (OverloadedError when full); jobs whose call was
cancelled or whose deadline passed are dropped before they run.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

from protssl.checkpoint import LoadedModel
from protssl.embed import EmbedConfig, Embedding, embed_records
from protssl.errors import DeadlineExceededError, InvalidInputError, OverloadedError
from protssl.fasta import ProteinRecord
from service.metrics import ServiceMetrics

__all__ = ["EmbedResult", "EmbeddingBatcher", "Job"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedResult:
    """One record's vector and whether it came from the cache."""

    embedding: Embedding
    cached: bool


@dataclass(eq=False)
class Job:
    """A caller's records waiting for, or being run by, the model worker."""

    records: Sequence[ProteinRecord]
    config: EmbedConfig
    deadline: float | None
    """time.monotonic() after which the job is dropped; None = no deadline."""
    tokens: int = 0
    future: Future[list[EmbedResult]] = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    results: list[EmbedResult | None] = field(default_factory=list)
    left: int = 0

    def __post_init__(self) -> None:
        self.tokens = sum(len(r.sequence) + 2 for r in self.records)
        self.results = [None] * len(self.records)
        self.left = len(self.records)

    def cancel(self) -> None:
        """Mark the job dropped (its call ended); the worker skips it if it has not run yet."""
        self.cancelled = True

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


class EmbeddingBatcher:
    """Owns the model worker thread and its bounded queue."""

    def __init__(
        self,
        model: LoadedModel,
        *,
        max_batch_tokens: int,
        max_queue_delay_s: float,
        max_queue: int,
        metrics: ServiceMetrics,
    ) -> None:
        window = model.encoder.config.max_positions
        if max_batch_tokens < window:
            raise InvalidInputError(
                f"max_batch_tokens {max_batch_tokens} is below the model's window of {window} tokens"
            )
        self.model = model
        self.max_batch_tokens = max_batch_tokens
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue = max_queue
        self.metrics = metrics
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="protssl-model-worker", daemon=True)
        self._worker.start()

    # --- callers' side ------------------------------------------------------------------------

    def submit(
        self,
        records: Sequence[ProteinRecord],
        *,
        pooling: str = "mean",
        layer: int = -1,
        deadline: float | None = None,
        wait: bool = False,
    ) -> Job:
        """Queue records for the worker; `wait` blocks for room (streams), else a full queue raises."""
        self.model.encoder.resolve_layer(layer)  # a bad layer fails this call, not the merged batch
        config = EmbedConfig(pooling=pooling, layer=layer, max_tokens=self.max_batch_tokens)  # type: ignore[arg-type]
        job = Job(records=records, config=config, deadline=deadline)
        if not records:
            job.future.set_result([])
            return job
        with self._cond:
            while len(self._queue) >= self.max_queue and not self._closed:
                if not wait:
                    raise OverloadedError(
                        f"the embedding queue is full ({self.max_queue} requests waiting); retry later"
                    )
                timeout = None if deadline is None else deadline - time.monotonic()
                if timeout is not None and timeout <= 0:
                    raise DeadlineExceededError("deadline passed while waiting for queue room")
                self._cond.wait(timeout)
            if self._closed:
                raise OverloadedError("the server is shutting down")
            self._queue.append(job)
            self.metrics.queue_depth.set(len(self._queue))
            self._cond.notify_all()
        return job

    def close(self, timeout: float | None = None) -> None:
        """Stop taking work, fail what is still queued, and join the worker."""
        with self._cond:
            self._closed = True
            while self._queue:
                job = self._queue.popleft()
                if not job.future.done():
                    job.future.set_exception(OverloadedError("the server is shutting down"))
            self.metrics.queue_depth.set(0)
            self._cond.notify_all()
        self._worker.join(timeout)

    # --- the worker ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            jobs = self._collect()
            if jobs is None:
                return
            try:
                self._process(jobs)
            except Exception as exc:  # an unexpected failure fails this batch, not the worker
                log.exception("model worker batch failed")
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)

    def _collect(self) -> list[Job] | None:
        """Wait for work, then up to the queue delay for a full batch; take it off the queue."""
        with self._cond:
            while True:
                self._drop_dead()
                if self._closed:
                    return None
                if not self._queue:
                    self._cond.wait()
                    continue
                first = self._queue[0]
                ready = sum(j.tokens for j in self._queue if j.config == first.config)
                remaining = first.enqueued + self.max_queue_delay_s - time.monotonic()
                if ready >= self.max_batch_tokens or remaining <= 0:
                    break
                self._cond.wait(remaining)
            taken: list[Job] = []
            tokens = 0
            for job in list(self._queue):
                if job.config != first.config:
                    continue
                if taken and tokens + job.tokens > self.max_batch_tokens:
                    break
                taken.append(job)
                tokens += job.tokens
                self._queue.remove(job)
            self.metrics.queue_depth.set(len(self._queue))
            self._cond.notify_all()
        self.metrics.batch_requests.observe(len(taken))
        self.metrics.batch_sequences.observe(sum(len(j.records) for j in taken))
        return taken

    def _drop_dead(self) -> None:
        """Remove cancelled and expired jobs from the queue (the lock is held)."""
        now = time.monotonic()
        for job in [j for j in self._queue if j.cancelled or j.expired(now)]:
            self._queue.remove(job)
            if job.cancelled:
                self.metrics.dropped.labels(reason="cancelled").inc()
                job.future.cancel()
            else:
                self.metrics.dropped.labels(reason="deadline").inc()
                job.future.set_exception(
                    DeadlineExceededError("the deadline passed before the model worker reached it")
                )
        self.metrics.queue_depth.set(len(self._queue))

    def _process(self, jobs: list[Job]) -> None:
        """Run the jobs' records as one group; finish each job as soon as its records are done."""
        merged: list[ProteinRecord] = []
        owners: list[tuple[Job, int]] = []
        for job in jobs:
            for index, record in enumerate(job.records):
                merged.append(ProteinRecord(str(len(merged)), record.sequence))
                owners.append((job, index))
        for embedding in embed_records(
            merged, self.model, jobs[0].config, on_batch=self.metrics.forward_tokens.observe
        ):
            job, index = owners[int(embedding.id)]
            record = job.records[index]
            job.results[index] = EmbedResult(
                replace(embedding, id=record.id, labels=record.labels), cached=False
            )
            job.left -= 1
            if job.left == 0 and not job.future.done():
                self.metrics.record_vectors(computed=len(job.records), cached=0)
                job.future.set_result([r for r in job.results if r is not None])
