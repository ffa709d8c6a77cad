"""`max_calls`: calls in progress or waiting for a handler thread, refused past the limit by protssl.

grpcio's own `maximum_concurrent_rpcs` refuses with its words ("Concurrent RPC limit exceeded!")
before any interceptor sees the call, so its refusals were not counted, not logged and did not say
which limit to raise. It counts a call from when its handler is handed to the thread pool until
that pool's future is done, queued calls included. `CallGate` is that pool and keeps the same
count: `submit` counts the call, the future's end uncounts it, whether or not the handler ever ran
(a call cancelled while it waited for a thread never reaches an interceptor's wrapper).
`service.interceptors.CallInterceptor` asks `full()` on gRPC's polling thread, where the handler is
chosen and then submitted, one call after another: the check and the count cannot interleave with
another call's. A refused call's handler runs on a pool of its own (grpcio's per-handler
`experimental_thread_pool`), so it neither waits behind the queued calls nor counts as one, and it
never reads the request: a client that sends no message cannot hold the refusing thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import grpc

from protssl.errors import OverloadedError
from service.errors import abort_with
from service.metrics import ServiceMetrics

__all__ = ["LOG_EVERY_S", "CallGate"]

log = logging.getLogger(__name__)

LOG_EVERY_S = 5.0
"""Refusals are logged at most once in this many seconds, with how many there were: a storm of
refused calls writes one line per interval, not one per call."""


class CallGate(ThreadPoolExecutor):
    """The server's handler threads, counting each call from its submission until its future is
    done, and the refusal of calls past `max_calls` (a handler of their own, a count, a log line)."""

    def __init__(self, *, max_calls: int, workers: int, metrics: ServiceMetrics) -> None:
        super().__init__(max_workers=workers, thread_name_prefix="protssl-rpc")
        self.max_calls = max_calls
        self.metrics = metrics
        self.message = (
            f"{max_calls} calls are in progress or waiting, the most this server takes at once "
            f"(max_calls: --max-calls {max_calls}, PROTSSL_MAX_CALLS): back off and retry"
        )
        self._refused = metrics.refused.labels(limit="max_calls")
        self._refusals = ThreadPoolExecutor(max_workers=1, thread_name_prefix="protssl-refuse")
        self._lock = threading.Lock()
        self._active = 0
        self._unlogged = 0
        self._next_log = 0.0

    @property
    def active(self) -> int:
        """Calls submitted whose futures are not done: in progress or waiting for a thread."""
        return self._active

    def full(self) -> bool:
        """Whether a call arriving now is refused (gRPC's polling thread asks, then submits)."""
        return self._active >= self.max_calls

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._lock:
            self._active += 1
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._done(None)
            raise
        future.add_done_callback(self._done)
        return future

    def _done(self, _future: Future[Any] | None) -> None:
        with self._lock:
            self._active -= 1

    def refusal(self, method: str) -> grpc.RpcMethodHandler:
        """A handler that refuses the call RESOURCE_EXHAUSTED (OverloadedError) on the refusal
        pool, without reading its request (a request-stream handler: grpcio waits for no message
        before calling it), counted and logged."""

        def refuse(_requests: Any, context: grpc.ServicerContext) -> None:
            self._count(method)
            abort_with(context, OverloadedError(self.message), method)

        refuse.experimental_thread_pool = self._refusals  # type: ignore[attr-defined]
        return grpc.stream_unary_rpc_method_handler(refuse)

    def _count(self, method: str) -> None:
        """Count one refusal in the metrics; log the refusals so far, at most every LOG_EVERY_S."""
        self._refused.inc()
        self.metrics.record_call(method, grpc.StatusCode.RESOURCE_EXHAUSTED.name, 0.0)
        now = time.monotonic()
        with self._lock:
            self._unlogged += 1
            if now < self._next_log:
                return
            refused, self._unlogged, self._next_log = self._unlogged, 0, now + LOG_EVERY_S
        log.warning(
            "refused %d call%s (RESOURCE_EXHAUSTED) since the last such line: %d calls in "
            "progress or waiting is the limit (--max-calls %d, PROTSSL_MAX_CALLS); raise it or add "
            "--processes if this goes on (one line per %g s at most; "
            'protssl_refused_calls_total{limit="max_calls"} counts each)',
            refused,
            "" if refused == 1 else "s",
            self.max_calls,
            self.max_calls,
            LOG_EVERY_S,
        )

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._refusals.shutdown(wait=wait, cancel_futures=cancel_futures)
        super().shutdown(wait=wait, cancel_futures=cancel_futures)
