"""The dynamic batcher: calls share forwards, a full queue and passed deadlines are refused before
the model runs, and the idle worker hands freed memory back."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from service_support import (
    big_request,
    real_records,
    request_for,
    rpc_error,
    running_server,
    wait_for,
)

from protssl._proto import protssl_pb2 as pb
from protssl._proto import protssl_pb2_grpc as pb_grpc
from protssl.embedding import embed_records
from service.batcher import EmbeddingBatcher
from service.metrics import ServiceMetrics

pytestmark = pytest.mark.service


def test_sixteen_concurrent_clients_share_few_forwards(service_model, sample_fasta):
    # similar lengths (padding stays under min_batch_fill's 15%), as a real mix of clients would pool
    singles = [r for r in real_records(sample_fasta, 400, max_length=400) if len(r) >= 340][:16]
    with running_server(service_model, max_queue_delay_ms=200) as (_, address, registry):
        channels = [grpc.insecure_channel(address) for _ in singles]
        stubs = [pb_grpc.EmbeddingServiceStub(c) for c in channels]
        for s in stubs:  # connect first so the timed calls arrive together
            s.ListModels(pb.ListModelsRequest(), timeout=10)
        barrier = threading.Barrier(len(singles))

        def one(i: int) -> pb.EmbedResponse:
            barrier.wait()
            return stubs[i].Embed(request_for([singles[i]]), timeout=60)

        with ThreadPoolExecutor(len(singles)) as pool:
            replies = list(pool.map(one, range(len(singles))))
        for c in channels:
            c.close()
        forwards = registry.get_sample_value("protssl_forward_tokens_count")
        batches = registry.get_sample_value("protssl_batch_requests_count")
    assert [r.embeddings[0].id for r in replies] == [r.id for r in singles]
    assert forwards <= 3, f"16 single-sequence calls took {forwards} forwards"
    assert batches <= 3
    alone = {e.id: e.vector for e in embed_records(singles, service_model)}
    for reply in replies:
        e = reply.embeddings[0]
        np.testing.assert_allclose(np.frombuffer(e.vector, "<f4"), alone[e.id], atol=1e-5)


def test_full_queue_is_resource_exhausted(service_model):
    with (
        running_server(service_model, max_queue=1, max_queue_delay_ms=0) as (_, address, registry),
        grpc.insecure_channel(address) as ch,
    ):
        stub = pb_grpc.EmbeddingServiceStub(ch)
        busy = stub.Embed.future(big_request(48), timeout=120)
        wait_for(lambda: registry.get_sample_value("protssl_batch_requests_count") == 1)
        waiting = [stub.Embed.future(big_request(1, 50), timeout=120) for _ in range(4)]
        codes = [f.exception().code() if f.exception() else grpc.StatusCode.OK for f in waiting]
        assert busy.result().embeddings
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes
    assert grpc.StatusCode.OK in codes, codes
    refused = registry.get_sample_value("protssl_refused_calls_total", {"limit": "max_queue"})
    assert refused == codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert all(c in (grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED) for c in codes)


def test_deadline_exceeded_and_expired_work_is_dropped(service_model):
    with (
        running_server(service_model, max_queue_delay_ms=0) as (_, address, registry),
        grpc.insecure_channel(address) as ch,
    ):
        stub = pb_grpc.EmbeddingServiceStub(ch)
        busy = stub.Embed.future(big_request(48), timeout=120)
        wait_for(lambda: registry.get_sample_value("protssl_batch_requests_count") == 1)
        error = rpc_error(stub.Embed, big_request(2, 100), timeout=0.05)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        busy.result()
        wait_for(
            lambda: (
                registry.get_sample_value("protssl_dropped_jobs_total", {"reason": "deadline"})
                or registry.get_sample_value("protssl_dropped_jobs_total", {"reason": "cancelled"})
            )
        )
        embedded = registry.get_sample_value("protssl_batch_sequences_sum")
    assert embedded == 48, "the expired request must not have reached the service_model"


def test_the_idle_model_worker_hands_freed_memory_back_once_per_pause(
    service_model, service_records
):
    """Once after the load, once after work and a pause; not again while nothing ran since."""
    metrics = ServiceMetrics(CollectorRegistry())
    batcher = EmbeddingBatcher(
        service_model,
        max_batch_tokens=4096,
        max_group_tokens=4096,
        min_batch_fill=0.7,
        max_queue_delay_s=0.001,
        max_queue=8,
        metrics=metrics,
        release_memory_after_s=0.05,
    )

    def releases_after(seconds: float) -> float:
        time.sleep(seconds)
        return metrics.registry.get_sample_value("protssl_memory_releases_total") or 0.0

    try:
        assert releases_after(0.5) == 1
        assert releases_after(0.3) == 1
        assert len(batcher.submit(service_records[:4]).future.result(timeout=60)) == 4
        assert releases_after(0.5) == 2
        assert releases_after(0.3) == 2
    finally:
        batcher.close()
