"""The call interceptor: one structured log line per call and the Prometheus metrics it feeds."""

from __future__ import annotations

import logging
import re
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from service_support import request_for, rpc_error, running_server

from protssl._proto import protssl_pb2_grpc as pb_grpc
from protssl.checkpoint import LoadedModel
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
