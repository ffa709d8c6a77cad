"""One server interceptor per concern of every call: errors → status, a log line, metrics.

Servicers raise protssl errors; `CallInterceptor` turns them into statuses through the one table,
`protssl.errors.ERROR_TABLE` (by `service.errors.abort_with`), then logs one structured line per
call (method, status, latency, peer: failed calls at INFO, successful ones at DEBUG, since at
thousands of calls/s the line and the peer lookup cost more CPU than a cache hit) and feeds the
request counter and latency histogram. Streaming calls are timed until their last message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from service.errors import abort_with
from service.metrics import ServiceMetrics

__all__ = ["CallInterceptor"]

log = logging.getLogger("service.calls")


class _Call:
    """Bookkeeping for one call: maps escaping errors to statuses and reports the outcome once."""

    def __init__(self, method: str, context: grpc.ServicerContext, metrics: ServiceMetrics) -> None:
        self.method = method
        self.context = context
        self.metrics = metrics
        self.start = time.perf_counter()

    def fail(self, exc: BaseException) -> None:
        """Abort with the mapped status unless the servicer already aborted (that re-raises)."""
        if self.context.code() is not None:
            raise exc
        abort_with(self.context, exc, self.method)

    def finish(self, cancelled: bool = False) -> None:
        seconds = time.perf_counter() - self.start
        code = self.context.code()
        if code is None:
            code = grpc.StatusCode.CANCELLED if cancelled else grpc.StatusCode.OK
        name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        self.metrics.record_call(self.method, name, seconds)
        level = logging.DEBUG if name == "OK" else logging.INFO
        if not log.isEnabledFor(level):
            return
        details = self.context.details() if name != "OK" else None
        message = f" message={details.decode()[:300]!r}" if isinstance(details, bytes) else ""
        if isinstance(details, str):
            message = f" message={details[:300]!r}"
        log.log(
            level,
            "rpc method=%s code=%s latency_ms=%.2f peer=%s%s",
            self.method,
            name,
            seconds * 1000,
            self.context.peer(),
            message,
        )


class CallInterceptor(grpc.ServerInterceptor):
    """Error mapping, structured logging and Prometheus metrics around every RPC."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        serializers = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method), **serializers
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, method), **serializers
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream, method), **serializers
            )
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(handler.stream_stream, method), **serializers
        )

    def _unary(self, behavior: Callable[[Any, grpc.ServicerContext], Any], method: str) -> Any:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            call = _Call(method, context, self.metrics)
            try:
                return behavior(request, context)
            except Exception as exc:
                call.fail(exc)
            finally:
                call.finish()

        return wrapped

    def _streaming(
        self, behavior: Callable[[Any, grpc.ServicerContext], Iterator[Any]], method: str
    ) -> Any:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            call = _Call(method, context, self.metrics)
            cancelled = True
            try:
                yield from behavior(request, context)
                cancelled = False
            except Exception as exc:
                cancelled = False
                call.fail(exc)
            finally:
                call.finish(cancelled=cancelled)

        return wrapped
