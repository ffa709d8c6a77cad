"""Dynamic batcher: concurrent requests merged into token-budget forwards on ONE model worker thread.

Each call submits a `Job` (its records and embedding options) to a bounded queue (OverloadedError
when full). The worker keeps a pool of waiting records with the same options, filled from the queue
up to `max_group_tokens`. For each forward it takes the oldest job's next record and the pooled
records nearest to it in length, up to `max_batch_tokens` (rows x padded length) and as long as
real tokens stay at least `min_batch_fill` of the padded ones, and runs them through
`protssl.embed.embed_records`. So sixteen clients sending one sequence each cost about one batched
forward; padding stays small (on a CPU a padded token costs as much as a real one, while a small
batch costs little more per token than a big one); and the oldest work always goes next, so
nothing starves. When the pool is empty the worker waits up to `max_queue_delay` for a forward's
worth of work. A job completes as soon as its own records are done. Jobs whose call was cancelled
or whose deadline passed are dropped before their records run.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

from protssl.batching import plan_windows
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
        """Mark the job dropped (its call ended); the worker skips what has not run yet."""
        self.cancelled = True

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


@dataclass(frozen=True)
class _Row:
    """One pooled record: its job, index there, padded width and windows (rows of a forward)."""

    job: Job
    index: int
    width: int
    windows: int


class EmbeddingBatcher:
    """Owns the model worker thread, its bounded queue and its pool of records."""

    def __init__(
        self,
        model: LoadedModel,
        *,
        max_batch_tokens: int,
        max_group_tokens: int,
        min_batch_fill: float,
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
        self.max_group_tokens = max(max_group_tokens, max_batch_tokens)
        self.min_batch_fill = min_batch_fill
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue = max_queue
        self.metrics = metrics
        self._queue: collections.deque[Job] = collections.deque()
        self._pool: list[_Row] = []
        self._pool_config: EmbedConfig | None = None
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
        self.model.encoder.resolve_layer(layer)  # a bad layer fails this call, not a shared forward
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
        """Stop taking work, fail what is still waiting, and join the worker."""
        with self._cond:
            self._closed = True
            for job in {*self._queue, *(row.job for row in self._pool)}:
                if not job.future.done():
                    job.future.set_exception(OverloadedError("the server is shutting down"))
            self._queue.clear()
            self._pool.clear()
            self.metrics.queue_depth.set(0)
            self._cond.notify_all()
        self._worker.join(timeout)

    # --- the worker ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            rows = self._next_forward()
            if rows is None:
                return
            try:
                self._process(rows)
            except Exception as exc:  # an unexpected failure fails these jobs, not the worker
                log.exception("model worker forward failed")
                with self._cond:
                    for job in {row.job for row in rows}:
                        self._pool = [r for r in self._pool if r.job is not job]
                        if not job.future.done():
                            job.future.set_exception(exc)

    def _next_forward(self) -> list[_Row] | None:
        """Fill the pool from the queue, then pick the rows of the next forward (None: closed)."""
        with self._cond:
            while True:
                self._drop_dead()
                if self._closed:
                    return None
                if self._pool:
                    break
                if not self._queue:
                    self._cond.wait()
                    continue
                first = self._queue[0]
                ready = sum(j.tokens for j in self._queue if j.config == first.config)
                remaining = first.enqueued + self.max_queue_delay_s - time.monotonic()
                if ready >= self.max_batch_tokens or remaining <= 0:
                    self._pool_config = first.config
                    break
                self._cond.wait(remaining)
            self._fill_pool()
            self.metrics.queue_depth.set(len(self._queue))
            self._cond.notify_all()
            return self._pick()

    def _fill_pool(self) -> None:
        """Move queued jobs with the pool's options into the pool, oldest first, up to the group budget."""
        tokens = sum(row.width * row.windows for row in self._pool)
        for job in list(self._queue):
            if job.config != self._pool_config:
                continue
            if self._pool and tokens + job.tokens > self.max_group_tokens:
                break
            self._queue.remove(job)
            for index, record in enumerate(job.records):
                row = self._row(job, index, record)
                self._pool.append(row)
                tokens += row.width * row.windows

    def _row(self, job: Job, index: int, record: ProteinRecord) -> _Row:
        window = self.model.encoder.config.max_residues
        length = len(record.sequence)
        windows = len(plan_windows(length, window, job.config.window.overlap))
        return _Row(job=job, index=index, width=min(length, window) + 2, windows=windows)

    def _pick(self) -> list[_Row]:
        """The oldest job's next row plus pooled rows nearest it in width, within budget and fill."""
        anchor = min(self._pool, key=lambda row: row.job.enqueued)
        chosen = [anchor]
        rows, width, real = anchor.windows, anchor.width, anchor.windows * anchor.width
        others = sorted(
            (row for row in self._pool if row is not anchor),
            key=lambda row: abs(row.width - anchor.width),
        )
        for row in others:
            wider = max(width, row.width)
            padded = (rows + row.windows) * wider
            if padded > self.max_batch_tokens:
                continue  # a narrower or shorter row further along may still fit
            if real + row.windows * row.width < self.min_batch_fill * padded:
                continue
            chosen.append(row)
            rows, width, real = rows + row.windows, wider, real + row.windows * row.width
        chosen_ids = {id(row) for row in chosen}
        self._pool = [row for row in self._pool if id(row) not in chosen_ids]
        if not self._pool:
            self._pool_config = None
        return chosen

    def _drop_dead(self) -> None:
        """Remove jobs whose call was cancelled or whose deadline passed (the lock is held)."""
        now = time.monotonic()
        dead = {j for j in self._queue if j.cancelled or j.expired(now)}
        dead |= {row.job for row in self._pool if row.job.cancelled or row.job.expired(now)}
        if not dead:
            return
        self._queue = collections.deque(j for j in self._queue if j not in dead)
        self._pool = [row for row in self._pool if row.job not in dead]
        if not self._pool:
            self._pool_config = None
        for job in dead:
            if job.cancelled:
                self.metrics.dropped.labels(reason="cancelled").inc()
                job.future.cancel()
            else:
                self.metrics.dropped.labels(reason="deadline").inc()
                if not job.future.done():
                    job.future.set_exception(
                        DeadlineExceededError(
                            "the deadline passed before the model worker got to it"
                        )
                    )
        self.metrics.queue_depth.set(len(self._queue))

    def _process(self, rows: list[_Row]) -> None:
        """Run one forward's rows; finish each job as soon as all of its records are done."""
        jobs = {row.job for row in rows}
        self.metrics.batch_requests.observe(len(jobs))
        self.metrics.batch_sequences.observe(len(rows))
        merged = [
            ProteinRecord(str(n), row.job.records[row.index].sequence) for n, row in enumerate(rows)
        ]
        config = rows[0].job.config
        for embedding in embed_records(
            merged, self.model, config, on_batch=self.metrics.forward_tokens.observe
        ):
            row = rows[int(embedding.id)]
            job = row.job
            record = job.records[row.index]
            job.results[row.index] = EmbedResult(
                replace(embedding, id=record.id, labels=record.labels), cached=False
            )
            job.left -= 1
            if job.left == 0 and not job.future.done():
                self.metrics.record_vectors(computed=len(job.records), cached=0)
                job.future.set_result([r for r in job.results if r is not None])
