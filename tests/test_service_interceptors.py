"""The call interceptor: one structured log line per call and the Prometheus metrics it feeds."""

from __future__ import annotations

import logging
import queue
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import pytest
from service_support import request_for, rpc_error, running_server

from protssl._proto import protssl_pb2_grpc as pb_grpc
from protssl.checkpoint import LoadedModel
from service import interceptors
from service.interceptors import CallInterceptor
from service.metrics import ServiceMetrics
from service.server import ProtsslServer

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def served(
    service_model: LoadedModel,
) -> Iterator[tuple[ProtsslServer, pb_grpc.EmbeddingServiceStub]]:
    """A server with a metrics side port, and a stub connected to it."""
    with (
        running_server(service_model, metrics_port=0) as (server, address, _registry),
        grpc.insecure_channel(address) as channel,
    ):
        yield server, pb_grpc.EmbeddingServiceStub(channel)


def test_every_call_logs_one_structured_line(served, service_records, caplog):
    _, stub = served
    with caplog.at_level(logging.DEBUG, logger="service.calls"):
        stub.Embed(request_for(service_records[:1]), timeout=10)
        rpc_error(stub.Embed, request_for(service_records[:1], model="nope"), timeout=10)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "service.calls"]
    assert lines[0][0] == logging.DEBUG and re.match(
        r"rpc method=/protssl.v1.EmbeddingService/Embed code=OK latency_ms=[\d.]+ peer=",
        lines[0][1],
    )
    assert lines[1][0] == logging.INFO
    assert "code=NOT_FOUND" in lines[1][1] and "message=" in lines[1][1]


def test_at_info_only_failed_calls_log(served, service_records, caplog):
    _, stub = served
    with caplog.at_level(logging.INFO, logger="service.calls"):
        stub.Embed(request_for(service_records[:1]), timeout=10)
        rpc_error(stub.Embed, request_for(service_records[:1], model="nope"), timeout=10)
    lines = [r.getMessage() for r in caplog.records if r.name == "service.calls"]
    assert len(lines) == 1 and "code=NOT_FOUND" in lines[0]


def test_metrics_side_port(served, service_records):
    server, stub = served
    stub.Embed(request_for(service_records[:2]), timeout=30)
    port = server.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for name in (
        "protssl_requests_total",
        "protssl_request_latency_seconds_bucket",
        "protssl_batch_sequences_bucket",
        "protssl_queue_depth",
        "protssl_cache_hit_ratio",
    ):
        assert name in text
    assert 'code="OK",method="/protssl.v1.EmbeddingService/Embed"' in text
    for series in (  # each at 0 before anything was refused or dropped (max_calls alone was)
        'protssl_refused_calls_total{limit="max_calls"} 0.0',
        'protssl_refused_calls_total{limit="max_streams"} 0.0',
        'protssl_refused_calls_total{limit="max_queue"} 0.0',
        'protssl_dropped_jobs_total{reason="cancelled"} 0.0',
        'protssl_dropped_jobs_total{reason="deadline"} 0.0',
    ):
        assert series in text, series


# --- a request stream's end: half-close or the client gone ----------------------------------------

_STREAM = "/protssl.test.Echo/Stream"


class _Reader:
    """A stream handler that reads its requests to the end and returns normally, as EmbedStream
    does when gRPC hands it the end of the stream; it keeps the call's context for the test."""

    def __init__(self) -> None:
        self.contexts: list[grpc.ServicerContext] = []

    def __call__(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        self.contexts.append(context)
        try:
            yield from requests
        except grpc.RpcError:
            return


@pytest.fixture()
def echo() -> Iterator[tuple[grpc.Channel, _Reader, ServiceMetrics]]:
    """A bare grpcio server with the call interceptor around one bytes-in, bytes-out stream."""
    reader, metrics = _Reader(), ServiceMetrics()
    handler = grpc.method_handlers_generic_handler(
        "protssl.test.Echo", {"Stream": grpc.stream_stream_rpc_method_handler(reader)}
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4), interceptors=[CallInterceptor(metrics)]
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel, reader, metrics
    finally:
        server.stop(None)


def _counted(metrics: ServiceMetrics, code: str) -> float:
    value = metrics.registry.get_sample_value(
        "protssl_requests_total", {"method": _STREAM, "code": code}
    )
    return value or 0.0


def _eventually(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_a_half_closed_stream_counts_ok(echo):
    channel, reader, metrics = echo
    replies = list(channel.stream_stream(_STREAM)(iter([b"a", b"b"]), timeout=10))
    assert replies == [b"a", b"b"]
    assert _eventually(lambda: _counted(metrics, "OK") == 1)
    assert _counted(metrics, "CANCELLED") == 0
    assert not interceptors._client_cancelled(reader.contexts[0])


def test_a_cancel_while_the_handler_awaits_a_message_counts_cancelled(echo):
    """However gRPC hands the cancel to the handler (an error, or the end of the stream, a race
    that a handler returning at once used to count as OK), the call counts as CANCELLED."""
    channel, reader, metrics = echo
    for round_ in range(1, 6):
        held = queue.Queue[bytes | None]()
        held.put(b"x")
        call = channel.stream_stream(_STREAM)(iter(held.get, None), timeout=30)
        assert next(call) == b"x"
        call.cancel()
        held.put(None)
        assert _eventually(lambda n=round_: _counted(metrics, "CANCELLED") == n)
        assert interceptors._client_cancelled(reader.contexts[-1])
    assert _counted(metrics, "OK") == 0


def test_a_stream_whose_deadline_passed_logs_its_peer(echo, caplog):
    """The line of a stream ended by its deadline said `peer=` with nothing after it: gRPC forgets
    the peer once the call is over, and the line is written then."""
    channel, _reader, metrics = echo
    held = queue.Queue[bytes | None]()
    held.put(b"x")
    call = channel.stream_stream(_STREAM)(iter(held.get, None), timeout=0.5)
    with caplog.at_level(logging.INFO, logger="service.calls"):
        with pytest.raises(grpc.RpcError):
            list(call)
        held.put(None)
        assert _eventually(lambda: _counted(metrics, "DEADLINE_EXCEEDED") == 1)
        # the line is written by the server's thread, after the count (it failed a clean run)
        assert _eventually(lambda: any(r.name == "service.calls" for r in caplog.records))
    (line,) = [r.getMessage() for r in caplog.records if r.name == "service.calls"]
    assert re.search(r"code=DEADLINE_EXCEEDED latency_ms=[\d.]+ peer=ipv4:127\.0\.0\.1:\d+", line)
