"""Dynamic batcher: concurrent requests merged into token-budget forwards on ONE model worker thread.

Each call submits a `Pending` (its records and embedding options) to a bounded queue
(OverloadedError when full). The worker keeps a pool of waiting records with the same options,
filled from the queue up to `max_group_tokens`. For each forward it anchors on the next record of
the call whose turn it is and lets `protssl.batching.pack_around` choose the pooled records that
join it (nearest in length, within `max_batch_tokens` and `min_batch_fill`), runs them with
`protssl.embedding.embed_batch`, and hands each result back to its call. So sixteen clients sending one
sequence each cost about one batched forward; padding stays small; and nothing starves: turns go
oldest first, but a call keeps the turn only for a quantum of `FAIR_QUANTUM_BATCHES` forwards'
tokens, then goes behind the others (round robin), and counts for at most a quantum against the
pool's budget. A call smaller than a quantum (most) runs exactly as oldest-first would; one huge
call (up to `max_residues`) no longer holds every other call until it is done. When the pool is empty the worker waits up to `max_queue_delay` for a
forward's worth of work. A call completes as soon as its own records are done. Calls that were
cancelled or whose deadline passed are dropped before their records run. Once idle, the worker
hands the memory its forwards freed back to the kernel (`release_freed_memory`).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from protssl.batching import Footprint, footprint, pack_around
from protssl.checkpoint import LoadedModel
from protssl.embedding import BatchOutcome, EmbedConfig, cached_embeddings, embed_batch
from protssl.errors import DeadlineExceededError, InvalidInputError, OverloadedError
from protssl.fasta import ProteinRecord
from protssl.memory import release_freed_memory
from protssl.store import EmbeddingCache
from service.metrics import ServiceMetrics

__all__ = ["EmbeddingBatcher", "Pending"]

log = logging.getLogger(__name__)

FAIR_QUANTUM_BATCHES = 4
"""A call's turn at the model worker lasts this many forwards' tokens (x max_batch_tokens)."""
RELEASE_MEMORY_AFTER_IDLE_S = 0.2
"""How long the model worker waits for more work before it hands freed memory back."""


@dataclass(eq=False)
class Pending:
    """A call's records waiting for, or being run by, the model worker."""

    records: Sequence[ProteinRecord]
    config: EmbedConfig
    deadline: float | None
    """time.monotonic() after which the call is dropped; None = no deadline."""
    tokens: int = 0
    future: Future[list[BatchOutcome]] = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    results: list[BatchOutcome | None] = field(default_factory=list)
    """Filled as records finish; cache hits found at submit time are there from the start."""
    left: int = 0
    turn: float = 0.0
    """When this call's turn comes (oldest first): its enqueue time, then the time its quantum ran out."""
    anchored: int = 0
    """Tokens run as the anchor's call in this turn."""

    def __post_init__(self) -> None:
        self.turn = self.enqueued
        if not self.results:
            self.results = [None] * len(self.records)
        missing = [r for r, done in zip(self.records, self.results, strict=True) if done is None]
        self.tokens = sum(len(r.sequence) + 2 for r in missing)
        self.left = len(missing)

    def cancel(self) -> None:
        """Mark the call dropped (it ended); the worker skips what has not run yet."""
        self.cancelled = True

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


@dataclass(eq=False)
class _Task:
    """A callable to run on the model worker between forwards (fitting a classifier)."""

    fn: Callable[[], Any]
    deadline: float | None
    future: Future[Any] = field(default_factory=Future)


class _ReleaseMemory:
    """What `_next_forward` returns once the worker has waited `release_memory_after_s` idle."""


@dataclass(frozen=True)
class _Row:
    """One pooled record: its call, its index there, and what it takes in a forward."""

    pending: Pending
    index: int
    footprint: Footprint


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
        cache: EmbeddingCache | None = None,
        release_memory_after_s: float | None = RELEASE_MEMORY_AFTER_IDLE_S,
    ) -> None:
        """`release_memory_after_s`: idle seconds before freed memory goes back (None: never)."""
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
        self.cache = cache
        self.release_memory_after_s = release_memory_after_s
        self._memory_to_release = True  # the model's load and warm-up freed some too
        self._queue: collections.deque[Pending] = collections.deque()
        self._tasks: collections.deque[_Task] = collections.deque()
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
        layer: int | None = None,
        deadline: float | None = None,
        wait: bool = False,
    ) -> Pending:
        """Results for `records`: cache hits now, the rest from the worker's queue.

        `wait` blocks for queue room (streams); without it a full queue raises OverloadedError.
        """
        self.model.resolve_layer(layer)  # a bad layer fails this call, not a shared forward
        config = EmbedConfig(pooling=pooling, layer=layer, max_tokens=self.max_batch_tokens)  # type: ignore[arg-type]
        results: list[BatchOutcome | None] = [None] * len(records)
        if self.cache is not None and records:
            hits = cached_embeddings(records, self.model, config, self.cache)
            results = [None if e is None else BatchOutcome(e, cached=True) for e in hits]
        pending = Pending(records=records, config=config, deadline=deadline, results=results)
        if pending.left == 0:
            self.metrics.record_vectors(computed=0, cached=len(records))
            pending.future.set_result([r for r in pending.results if r is not None])
            return pending
        self._enqueue(pending, self._queue, wait=wait, deadline=deadline)
        return pending

    def run_task(self, fn: Callable[[], Any], *, deadline: float | None = None) -> Future[Any]:
        """Run `fn` on the model worker between forwards (it may use the model); a future of its result."""
        task = _Task(fn=fn, deadline=deadline)
        self._enqueue(task, self._tasks, wait=False, deadline=deadline)
        return task.future

    def _enqueue(
        self, item: Any, target: collections.deque[Any], *, wait: bool, deadline: float | None
    ) -> None:
        with self._cond:
            while len(self._queue) + len(self._tasks) >= self.max_queue and not self._closed:
                if not wait:
                    self.metrics.refused.labels(limit="max_queue").inc()
                    raise OverloadedError(
                        f"the embedding queue is full ({self.max_queue} requests waiting); retry later"
                    )
                timeout = None if deadline is None else deadline - time.monotonic()
                if timeout is not None and timeout <= 0:
                    raise DeadlineExceededError("deadline passed while waiting for queue room")
                self._cond.wait(timeout)
            if self._closed:
                raise OverloadedError("the server is shutting down")
            target.append(item)
            self.metrics.queue_depth.set(len(self._queue) + len(self._tasks))
            self._cond.notify_all()

    def close(self, timeout: float | None = None) -> None:
        """Stop taking work, fail what is still waiting, and join the worker."""
        with self._cond:
            self._closed = True
            futures: list[Future[Any]] = [pending.future for pending in self._queue]
            futures += [task.future for task in self._tasks]
            futures += [row.pending.future for row in self._pool]
            for future in futures:
                if not future.done():
                    future.set_exception(OverloadedError("the server is shutting down"))
            self._queue.clear()
            self._tasks.clear()
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
            if isinstance(rows, _ReleaseMemory):
                # idle, and not later: protobuf's Python module (upb) calls malloc_trim itself after
                # every 10,000 message frees, in whichever thread frees one, holding the GIL; after
                # forwards that walk took 5-11 ms and stalled every call (a hit-pass p99 of 14-19
                # ms against ~8). Here ctypes drops the GIL, and upb's walks find little (0.2 ms).
                release_freed_memory()
                self.metrics.memory_releases.inc()
                continue
            self._memory_to_release = True
            if isinstance(rows, _Task):
                self._run_task(rows)
                continue
            try:
                self._process(rows)
            except Exception as exc:  # an unexpected failure fails these calls, not the worker
                log.exception("model worker forward failed")
                with self._cond:
                    for pending in {row.pending for row in rows}:
                        self._pool = [r for r in self._pool if r.pending is not pending]
                        if not pending.future.done():
                            pending.future.set_exception(exc)

    def _run_task(self, task: _Task) -> None:
        if not task.future.set_running_or_notify_cancel():  # its caller gave up on it
            return
        if task.deadline is not None and time.monotonic() >= task.deadline:
            self.metrics.dropped.labels(reason="deadline").inc()
            task.future.set_exception(DeadlineExceededError("the deadline passed before it ran"))
            return
        try:
            task.future.set_result(task.fn())
        except BaseException as exc:  # the caller's thread re-raises it
            task.future.set_exception(exc)

    def _next_forward(self) -> list[_Row] | _Task | _ReleaseMemory | None:
        """A waiting task, or the rows of the next forward from the refilled pool; `_ReleaseMemory`
        after `release_memory_after_s` without work since the last forward; None once closed."""
        with self._cond:
            while True:
                self._drop_dead()
                if self._closed:
                    return None
                if self._tasks:
                    task = self._tasks.popleft()
                    self.metrics.queue_depth.set(len(self._queue) + len(self._tasks))
                    self._cond.notify_all()
                    return task
                if self._pool:
                    break
                if not self._queue:
                    idle = self.release_memory_after_s if self._memory_to_release else None
                    timed_out = not self._cond.wait(idle)
                    if timed_out and not (self._queue or self._tasks or self._closed):
                        self._memory_to_release = False
                        return _ReleaseMemory()
                    continue
                first = self._queue[0]
                ready = sum(j.tokens for j in self._queue if j.config == first.config)
                remaining = first.enqueued + self.max_queue_delay_s - time.monotonic()
                if ready >= self.max_batch_tokens or remaining <= 0:
                    self._pool_config = first.config
                    break
                self._cond.wait(remaining)
            self._fill_pool()
            self.metrics.queue_depth.set(len(self._queue) + len(self._tasks))
            self._cond.notify_all()
            return self._pick()

    def _fill_pool(self) -> None:
        """Move queued calls with the pool's options into the pool, oldest first, up to the group budget
        (a call counts for at most a quantum: one huge call does not keep the others out)."""
        quantum = self.quantum_tokens
        per_call: collections.Counter[Pending] = collections.Counter()
        for row in self._pool:
            per_call[row.pending] += row.footprint.tokens
        tokens = sum(min(t, quantum) for t in per_call.values())
        window = self.model.encoder.config.max_residues
        for pending in list(self._queue):
            if pending.config != self._pool_config:
                continue
            if self._pool and tokens + min(pending.tokens, quantum) > self.max_group_tokens:
                break
            self._queue.remove(pending)
            overlap = pending.config.window.overlap_in(window)
            added = 0
            for index, record in enumerate(pending.records):
                if pending.results[index] is not None:
                    continue  # a cache hit found at submit time
                row = _Row(pending, index, footprint(len(record.sequence), window, overlap))
                self._pool.append(row)
                added += row.footprint.tokens
            tokens += min(added, quantum)

    @property
    def quantum_tokens(self) -> int:
        """Tokens of one call's turn at the worker (and most it counts against the pool's budget)."""
        return FAIR_QUANTUM_BATCHES * self.max_batch_tokens

    def _pick(self) -> list[_Row]:
        """The next row of the call whose turn it is and the pooled rows `pack_around` lets join it;
        a call whose quantum ran out goes behind the others."""
        anchor = min(self._pool, key=lambda row: row.pending.turn)
        others = [row for row in self._pool if row is not anchor]
        joining = pack_around(
            anchor.footprint,
            [row.footprint for row in others],
            max_tokens=self.max_batch_tokens,
            min_fill=self.min_batch_fill,
        )
        chosen = [anchor, *(others[i] for i in joining)]
        owner = anchor.pending
        owner.anchored += sum(row.footprint.tokens for row in chosen if row.pending is owner)
        if owner.anchored >= self.quantum_tokens:
            owner.turn, owner.anchored = time.monotonic(), 0
        chosen_ids = {id(row) for row in chosen}
        self._pool = [row for row in self._pool if id(row) not in chosen_ids]
        if not self._pool:
            self._pool_config = None
        return chosen

    def _drop_dead(self) -> None:
        """Remove calls that were cancelled or whose deadline passed (the lock is held)."""
        now = time.monotonic()
        dead = {p for p in self._queue if p.cancelled or p.expired(now)}
        dead |= {
            row.pending for row in self._pool if row.pending.cancelled or row.pending.expired(now)
        }
        if not dead:
            return
        self._queue = collections.deque(p for p in self._queue if p not in dead)
        self._pool = [row for row in self._pool if row.pending not in dead]
        if not self._pool:
            self._pool_config = None
        for pending in dead:
            if pending.cancelled:
                self.metrics.dropped.labels(reason="cancelled").inc()
                pending.future.cancel()
            else:
                self.metrics.dropped.labels(reason="deadline").inc()
                if not pending.future.done():
                    pending.future.set_exception(
                        DeadlineExceededError(
                            "the deadline passed before the model worker got to it"
                        )
                    )
        self.metrics.queue_depth.set(len(self._queue) + len(self._tasks))

    def _process(self, rows: list[_Row]) -> None:
        """Run one forward's rows; finish each call as soon as all of its records are done."""
        self.metrics.batch_requests.observe(len({row.pending for row in rows}))
        self.metrics.batch_sequences.observe(len(rows))
        outcomes = embed_batch(
            [row.pending.records[row.index] for row in rows],
            self.model,
            rows[0].pending.config,
            on_batch=self.metrics.forward_tokens.observe,
            cache=self.cache,
        )
        for position, outcome in outcomes:
            row = rows[position]
            pending = row.pending
            pending.results[row.index] = outcome
            pending.left -= 1
            if pending.left == 0 and not pending.future.done():
                results = [r for r in pending.results if r is not None]
                hits = sum(r.cached for r in results)
                self.metrics.record_vectors(computed=len(results) - hits, cached=hits)
                pending.future.set_result(results)
