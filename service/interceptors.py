"""The server's interceptors: who may call what (`AuthInterceptor`), and errors → status, a log
line, metrics (`CallInterceptor`).

`METHOD_ROLES` is the one table of which role each RPC needs; health and reflection are open, and a
method the table does not name needs `admin` (closed by default). The auth check runs first thing
in the call, on its handler thread; its refusals are raised there, so `CallInterceptor` (first in
the chain) maps, logs and counts them like any other error.

Servicers raise protssl errors; `CallInterceptor` turns them into statuses through the one table,
`protssl.errors.ERROR_TABLE` (by `service.errors.abort_with`), then logs one structured line per
call (method, status, latency, peer: failed calls at INFO, successful ones at DEBUG, since at
thousands of calls/s the line and the peer lookup cost more CPU than a cache hit) and feeds the
request counter and latency histogram. Streaming calls are timed until their last message.

Request bytes that do not parse (not protobuf, or a string field that is not UTF-8) reach the
servicer as `_Undecodable` and end the call as INVALID_ARGUMENT, not gRPC's own INTERNAL
("Exception deserializing request!"). A call whose client cancelled or whose deadline passed is
counted as CANCELLED or DEADLINE_EXCEEDED (one log line, as any failed call): nothing is left to
answer.

With a `service.admission.CallGate` (the server's thread pool), a call arriving while `max_calls`
calls are in progress or waiting gets the gate's refusal (RESOURCE_EXHAUSTED, OverloadedError,
naming the limit) instead of its handler; the gate counts it and logs refusals at most every few
seconds, not one line a call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from protssl._proto import protssl_pb2 as pb
from protssl.auth import Role, TokenVerifier, role_allows
from protssl.errors import AuthenticationError, InvalidInputError, PermissionDeniedError
from service.admission import CallGate
from service.errors import abort_with
from service.metrics import ServiceMetrics

__all__ = ["METHOD_ROLES", "OPEN_SERVICES", "AuthInterceptor", "CallInterceptor", "required_role"]


def _method(service: str, name: str) -> str:
    return f"/{pb.DESCRIPTOR.services_by_name[service].full_name}/{name}"


METHOD_ROLES: dict[str, Role] = {
    _method("EmbeddingService", "Embed"): "read",
    _method("EmbeddingService", "EmbedStream"): "read",
    _method("EmbeddingService", "ListModels"): "read",
    _method("ClassifierService", "Classify"): "read",
    _method("ClassifierService", "GetClassifier"): "read",
    _method("ClassifierService", "ListClassifiers"): "read",
    _method("ClassifierService", "CreateClassifier"): "write",
    _method("ClassifierService", "AddExamples"): "write",
    _method("ClassifierService", "DeleteClassifier"): "write",
    _method("TokenService", "CreateToken"): "admin",
    _method("TokenService", "ListTokens"): "admin",
    _method("TokenService", "RevokeToken"): "admin",
}
"""The role each RPC needs (`read` < `write` < `admin`)."""

OPEN_SERVICES: frozenset[str] = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
)
"""Services anyone may call: load balancers probe health, tools discover the API by reflection."""

_BEARER = "bearer "


def required_role(method: str) -> Role | None:
    """The role `method` (/package.Service/Method) needs; None for an open service."""
    if method.lstrip("/").split("/", 1)[0] in OPEN_SERVICES:
        return None
    return METHOD_ROLES.get(method, "admin")


log = logging.getLogger("service.calls")


class _Undecodable:
    """A request message whose bytes did not parse."""

    def __init__(self, method: str, exc: Exception) -> None:
        self.error = InvalidInputError(
            f"the request is not a valid message for {method} (undecodable bytes, or a string "
            f"field that is not UTF-8): {type(exc).__name__}"
        )


def _tolerant(
    deserializer: Callable[[bytes], Any] | None, method: str
) -> Callable[[bytes], Any] | None:
    """`deserializer`, but a parse failure becomes an `_Undecodable` for the servicer to refuse."""
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            return _Undecodable(method, exc)

    return deserialize


def _decoded(requests: Iterator[Any]) -> Iterator[Any]:
    """A request stream that raises InvalidInputError at its first undecodable message."""
    for request in requests:
        if isinstance(request, _Undecodable):
            raise request.error
        yield request


def _client_cancelled(context: grpc.ServicerContext) -> bool:
    """Whether the client cancelled the call (or its deadline passed) before it ended normally.

    grpcio's synchronous server keeps this in the call's state and offers no accessor; a server
    without that state (another gRPC implementation) is taken at the handler's word.
    """
    state = getattr(context, "_state", None)
    return getattr(state, "client", None) == "cancelled"


def _gone_code(context: grpc.ServicerContext) -> grpc.StatusCode:
    """Why an inactive call ended: its deadline passed, or the client cancelled it."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


class _Call:
    """Bookkeeping for one call: maps escaping errors to statuses and reports the outcome once."""

    def __init__(self, method: str, context: grpc.ServicerContext, metrics: ServiceMetrics) -> None:
        self.method = method
        self.context = context
        self.metrics = metrics
        self.start = time.perf_counter()
        self.peer = context.peer()  # gRPC forgets it once the call is over (a deadline passed)

    def fail(self, exc: BaseException) -> None:
        """Abort with the mapped status unless the servicer already aborted (that re-raises).

        When the client is gone (cancelled, deadline passed) the call is counted as such.
        """
        if self.context.code() is not None:
            raise exc
        if not self.context.is_active():
            code = _gone_code(self.context)
            self.context.abort(code, f"the call ended first ({code.name})")
        abort_with(self.context, exc, self.method)

    def finish(self, *, cancelled: bool = False, streamed: bool = False) -> None:
        """Count and log the call as it stands when the handler ends, or, when it read a request
        stream to its end and set no status, once gRPC has terminated it."""
        if streamed and not cancelled and self.context.code() is None:
            self._finish_at_termination()
            return
        if not self.context.is_active():
            ended = _gone_code(self.context)
        else:
            ended = grpc.StatusCode.CANCELLED if cancelled else grpc.StatusCode.OK
        self._report(time.perf_counter() - self.start, ended)

    def _finish_at_termination(self) -> None:
        """Count and log a call whose handler read its request stream to the end, once gRPC ends it.

        A client cancel that arrives while the next message is awaited can reach the handler as
        the end of the request stream, so the handler returns normally; only the terminated call
        tells that apart from a half-close.
        """
        seconds = time.perf_counter() - self.start

        def report() -> None:
            gone = _client_cancelled(self.context)
            self._report(seconds, _gone_code(self.context) if gone else grpc.StatusCode.OK)

        if not self.context.add_callback(report):
            report()

    def _report(self, seconds: float, ended: grpc.StatusCode) -> None:
        """One metric and one log line; `ended` unless the servicer set a status itself."""
        code = self.context.code()
        if code is None:
            code = ended
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
            self.peer,
            message,
        )


class CallInterceptor(grpc.ServerInterceptor):
    """Error mapping, structured logging and Prometheus metrics around every RPC; with a `gate`,
    a call past its `max_calls` gets the gate's refusal instead of its handler."""

    def __init__(self, metrics: ServiceMetrics, *, gate: CallGate | None = None) -> None:
        self.metrics = metrics
        self.gate = gate

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if self.gate is not None and self.gate.full():
            return self.gate.refusal(method)  # counted and logged by the gate, not per call
        return _rewrapped(
            handler,
            lambda behavior, streamed: self._unary(behavior, method, streamed=streamed),
            lambda behavior, streamed: self._streaming(behavior, method, streamed=streamed),
            request_deserializer=_tolerant(handler.request_deserializer, method),
        )

    def _unary(
        self, behavior: Callable[[Any, grpc.ServicerContext], Any], method: str, *, streamed: bool
    ) -> Any:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            call = _Call(method, context, self.metrics)
            try:
                if isinstance(request, _Undecodable):
                    raise request.error
                return behavior(_decoded(request) if streamed else request, context)
            except Exception as exc:
                call.fail(exc)
            finally:
                call.finish(streamed=streamed)

        return wrapped

    def _streaming(
        self,
        behavior: Callable[[Any, grpc.ServicerContext], Iterator[Any]],
        method: str,
        *,
        streamed: bool,
    ) -> Any:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            call = _Call(method, context, self.metrics)
            cancelled = True
            try:
                if isinstance(request, _Undecodable):
                    raise request.error
                yield from behavior(_decoded(request) if streamed else request, context)
                cancelled = False
            except Exception as exc:
                cancelled = False
                call.fail(exc)
            finally:
                call.finish(cancelled=cancelled, streamed=streamed)

        return wrapped


class AuthInterceptor(grpc.ServerInterceptor):
    """Checks the call's `authorization: Bearer <token>` against `METHOD_ROLES` before it runs."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self.verifier = verifier

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        need = required_role(method)
        if handler is None or need is None:
            return handler
        metadata = handler_call_details.invocation_metadata

        def check() -> None:
            token = self.verifier.verify(_bearer(metadata))
            if not role_allows(token.role, need):
                raise PermissionDeniedError(
                    f"API token {token.id} has role {token.role}; {method} needs {need}"
                )

        return _checked(handler, check)


def _bearer(metadata: Any) -> str:
    """The token of the call's `authorization: Bearer <token>` metadata."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            if text[: len(_BEARER)].lower() != _BEARER:
                raise AuthenticationError("authorization metadata must be `Bearer <token>`")
            return text[len(_BEARER) :].strip()
    raise AuthenticationError("no API token: send metadata `authorization: Bearer <token>`")


def _checked(handler: grpc.RpcMethodHandler, check: Callable[[], None]) -> grpc.RpcMethodHandler:
    """`handler` with `check()` first, on the handler's thread: `intercept_service` runs on gRPC's
    one polling thread, which a store lookup (a token not in the cache) would stall for all calls."""

    def unary(behavior: Callable[[Any, grpc.ServicerContext], Any], _streamed: bool) -> Any:
        def checked(request: Any, context: grpc.ServicerContext) -> Any:
            check()
            return behavior(request, context)

        return checked

    def streaming(
        behavior: Callable[[Any, grpc.ServicerContext], Iterator[Any]], _streamed: bool
    ) -> Any:
        def checked(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            check()
            yield from behavior(request, context)

        return checked

    return _rewrapped(handler, unary, streaming)


def _rewrapped(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[Any, bool], Any],
    streaming: Callable[[Any, bool], Any],
    *,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """A handler of `handler`'s kind whose behaviour is wrapped: `unary(behavior, streamed)` where
    the response is one message, `streaming(behavior, streamed)` where it is a stream (`streamed`:
    the request is a stream). `request_deserializer` replaces the handler's own when given."""
    serializers = {
        "request_deserializer": request_deserializer or handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary, False), **serializers)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            unary(handler.stream_unary, True), **serializers
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            streaming(handler.unary_stream, False), **serializers
        )
    return grpc.stream_stream_rpc_method_handler(
        streaming(handler.stream_stream, True), **serializers
    )
