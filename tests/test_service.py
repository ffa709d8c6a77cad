"""The gRPC server end to end on a loopback port: embeddings, streams, health, reflection, errors."""

from __future__ import annotations

import logging
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from prometheus_client import CollectorRegistry
from service_support import (
    load_tiny,
    real_records,
    running_server,
    save_tiny_model,
    wait_for_line,
)

from protssl import fewshot
from protssl._proto import protssl_pb2 as pb
from protssl._proto import protssl_pb2_grpc as pb_grpc
from protssl.checkpoint import LoadedModel
from protssl.embed import EmbedConfig, embed_records
from protssl.errors import InvalidInputError
from protssl.fasta import ProteinRecord, read_fasta
from protssl.store import Store, StoreConfig
from service.batcher import EmbeddingBatcher
from service.config import ServiceConfig
from service.metrics import ServiceMetrics
from service.server import SERVICE_NAMES

pytestmark = pytest.mark.service

LIMITS = {"max_sequences": 16, "max_residues": 20_000, "max_sequence_length": 5_000}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def model(model_dir: Path) -> LoadedModel:
    return load_tiny(model_dir)


@pytest.fixture(scope="module")
def service_db_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'service.sqlite3'}"


@pytest.fixture(scope="module")
def server(model: LoadedModel, service_db_url: str) -> Iterator[tuple[object, str, object]]:
    """A server with a real SQLite store (cache + classifiers) and a metrics port."""
    with running_server(
        model, metrics_port=0, store=True, database_url=service_db_url, **LIMITS
    ) as running:
        yield running


@pytest.fixture(scope="module")
def channel(server: tuple[object, str, object]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server[1]) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.EmbeddingServiceStub:
    return pb_grpc.EmbeddingServiceStub(channel)


@pytest.fixture(scope="module")
def records(sample_fasta: Path) -> list[ProteinRecord]:
    """Real proteins, one past the model's 1,022-residue window (so it is windowed)."""
    short = real_records(sample_fasta, 7, max_length=600)
    long = next(r for r in real_records(sample_fasta, 200) if 1100 < len(r) < 2500)
    return [*short, long]


def request_for(records: list[ProteinRecord], **options: object) -> pb.EmbedRequest:
    return pb.EmbedRequest(
        sequences=[pb.Sequence(id=r.id, sequence=r.sequence) for r in records],
        options=pb.EmbedOptions(**options),  # type: ignore[arg-type]
    )


def vectors(response: pb.EmbedResponse, dtype: str = "<f4") -> dict[str, np.ndarray]:
    out = {}
    for e in response.embeddings:
        v = np.frombuffer(e.vector, dtype=dtype).astype(np.float32)
        out[e.id] = v.reshape(e.length, e.dim) if e.provenance.pooling == "per-residue" else v
    return out


def rpc_error(call: object, *args: object, **kwargs: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    return info.value


@pytest.mark.parametrize("pooling", ["mean", "bos", "per-residue"])
def test_embed_equals_in_process_embed_records_then_hits_the_cache(stub, model, records, pooling):
    enum = {"mean": pb.POOLING_MEAN, "bos": pb.POOLING_BOS, "per-residue": pb.POOLING_PER_RESIDUE}
    request = request_for(records, pooling=enum[pooling])
    response = stub.Embed(request, timeout=60)
    got = vectors(response)
    expected = {e.id: e for e in embed_records(records, model, EmbedConfig(pooling=pooling))}
    assert [e.id for e in response.embeddings] == [r.id for r in records]
    for message in response.embeddings:
        want = expected[message.id]
        np.testing.assert_allclose(got[message.id], want.vector, rtol=1e-4, atol=1e-5)
        assert message.length == want.length and message.dim == model.encoder.config.embed_dim
        assert not message.cached
        assert message.provenance.model_sha256 == model.sha256
        assert message.provenance.pooling == pooling
        assert message.provenance.windowed == want.provenance.windowed
    assert response.embeddings[-1].provenance.windowed  # the long record was windowed, not cut
    again = stub.Embed(request, timeout=60)
    assert all(e.cached for e in again.embeddings)
    assert [e.vector for e in again.embeddings] == [e.vector for e in response.embeddings]
    assert [e.provenance for e in again.embeddings] == [e.provenance for e in response.embeddings]


def test_float16_wire_and_layer(stub, model, records):
    response = stub.Embed(
        request_for(records[:3], dtype=pb.VECTOR_DTYPE_FLOAT16, layer=1), timeout=60
    )
    expected = {e.id: e.vector for e in embed_records(records[:3], model, EmbedConfig(layer=1))}
    assert all(
        e.dtype == pb.VECTOR_DTYPE_FLOAT16 and e.provenance.layer == 1 for e in response.embeddings
    )
    for key, value in vectors(response, "<f2").items():
        np.testing.assert_allclose(value, expected[key], rtol=2e-3, atol=2e-3)


def test_stream_sends_embeddings_and_progress(stub, records):
    chunks = [records[:3], records[3:6], records[6:]]
    messages = [
        pb.EmbedStreamRequest(
            sequences=[pb.Sequence(id=r.id, sequence=r.sequence) for r in chunk],
            options=pb.EmbedOptions(pooling=pb.POOLING_MEAN) if i == 0 else None,
        )
        for i, chunk in enumerate(chunks)
    ]
    replies = list(stub.EmbedStream(iter(messages), timeout=60))
    streamed = {m.embedding.id: m.embedding for m in replies if m.HasField("embedding")}
    progress = [m.progress for m in replies if m.HasField("progress")]
    assert set(streamed) == {r.id for r in records}
    assert len(progress) == 3
    assert progress[-1].records_done == len(records) == progress[-1].records_received
    assert progress[-1].residues_done == sum(len(r) for r in records)
    unary = vectors(stub.Embed(request_for(records), timeout=60))
    for key, message in streamed.items():
        np.testing.assert_allclose(np.frombuffer(message.vector, "<f4"), unary[key], atol=1e-5)


def test_stream_rejects_an_id_repeated_across_messages(stub, records):
    message = pb.EmbedStreamRequest(sequences=[pb.Sequence(id="x", sequence=records[0].sequence)])
    error = rpc_error(lambda: list(stub.EmbedStream(iter([message, message]), timeout=30)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'x'" in error.details() and "duplicate" in error.details()


def test_list_models(stub, model):
    (info,) = stub.ListModels(pb.ListModelsRequest(), timeout=10).models
    assert (info.name, info.sha256, info.embed_dim) == (model.name, model.sha256, 64)
    assert info.is_default and info.max_residues == 1022


def test_health_reports_serving(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", *SERVICE_NAMES):
        reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_both_services(channel):
    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert {"protssl.v1.EmbeddingService", "protssl.v1.ClassifierService"} <= set(services)
    assert "grpc.health.v1.Health" in services


def test_invalid_residue_names_index_id_and_position(stub, records):
    request = request_for(records[:1])
    request.sequences.add(id="bad", sequence="MKT-AYIAK")
    error = rpc_error(stub.Embed, request, timeout=10)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'bad'" in error.details() and "#2" in error.details()
    assert "position 4" in error.details() and "'-'" in error.details()
    trailers = dict(error.trailing_metadata())
    assert trailers["protssl-record-id"] == "bad" and trailers["protssl-position"] == "4"


@pytest.mark.parametrize(
    ("sequences", "needle"),
    [
        (["MKV"] * 17, "limit is 16 (max_sequences)"),
        (["M" * 4000] * 6, "limit is 20000 (max_residues)"),
        (["MKV", "M" * 5001], "'seq1' (#2) has 5001 residues; the limit is 5000"),
    ],
)
def test_limits_are_invalid_argument_naming_the_limit(stub, sequences, needle):
    request = pb.EmbedRequest(sequences=[pb.Sequence(sequence=s) for s in sequences])
    error = rpc_error(stub.Embed, request, timeout=10)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in error.details()


def test_cache_hits_and_misses_mix_in_one_request(server, stub, model, sample_fasta):
    fresh = real_records(sample_fasta, 60, max_length=300)[-4:]
    first = stub.Embed(request_for(fresh[:2]), timeout=30)
    mixed = stub.Embed(request_for(fresh), timeout=30)
    assert [e.cached for e in mixed.embeddings] == [True, True, False, False]
    assert mixed.embeddings[0].vector == first.embeddings[0].vector
    registry = server[2]
    assert registry.get_sample_value("protssl_embeddings_total", {"source": "cached"}) >= 2
    assert 0 < registry.get_sample_value("protssl_cache_hit_ratio") < 1


def test_cache_through_on_sqlite_and_postgresql(model, records, store_url):
    with (
        running_server(model, store=True, database_url=store_url) as (_, address, _registry),
        grpc.insecure_channel(address) as ch,
    ):
        stub = pb_grpc.EmbeddingServiceStub(ch)
        first = stub.Embed(request_for(records[:4]), timeout=60)
        again = stub.Embed(request_for(records[:4]), timeout=60)
    assert not any(e.cached for e in first.embeddings) and all(e.cached for e in again.embeddings)
    assert [e.vector for e in again.embeddings] == [e.vector for e in first.embeddings]


def test_per_residue_past_the_message_size_is_refused_up_front(model):
    with (
        running_server(model, max_message_mb=1) as (_, address, registry),
        grpc.insecure_channel(address) as ch,
    ):
        request = big_request(8, 1000)  # 8,000 x 64 float32 = 2 MiB of per-residue vectors
        request.options.pooling = pb.POOLING_PER_RESIDUE
        error = rpc_error(pb_grpc.EmbeddingServiceStub(ch).Embed, request, timeout=30)
        assert registry.get_sample_value("protssl_forward_tokens_count") == 0  # nothing ran
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_message_mb" in error.details() and "EmbedStream" in error.details()


def test_unknown_enum_values_are_invalid_argument(stub, records):
    error = rpc_error(stub.Embed, request_for(records[:1], pooling=9), timeout=10)
    assert (
        error.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown pooling 9" in error.details()
    )
    error = rpc_error(stub.Embed, request_for(records[:1], dtype=7), timeout=10)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "vector dtype 7" in error.details()


def test_unknown_model_and_layer(stub, records):
    error = rpc_error(stub.Embed, request_for(records[:1], model="esm2-650m"), timeout=10)
    assert error.code() == grpc.StatusCode.NOT_FOUND and "tiny-test" in error.details()
    error = rpc_error(stub.Embed, request_for(records[:1], layer=9), timeout=10)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "layer 9" in error.details()


def test_every_call_logs_one_structured_line(stub, records, caplog):
    with caplog.at_level(logging.DEBUG, logger="service.calls"):
        stub.Embed(request_for(records[:1]), timeout=10)
        rpc_error(stub.Embed, request_for(records[:1], model="nope"), timeout=10)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "service.calls"]
    assert lines[0][0] == logging.DEBUG and re.match(
        r"rpc method=/protssl.v1.EmbeddingService/Embed code=OK latency_ms=[\d.]+ peer=",
        lines[0][1],
    )
    assert lines[1][0] == logging.INFO
    assert "code=NOT_FOUND" in lines[1][1] and "message=" in lines[1][1]


def test_at_info_only_failed_calls_log(stub, records, caplog):
    with caplog.at_level(logging.INFO, logger="service.calls"):
        stub.Embed(request_for(records[:1]), timeout=10)
        rpc_error(stub.Embed, request_for(records[:1], model="nope"), timeout=10)
    lines = [r.getMessage() for r in caplog.records if r.name == "service.calls"]
    assert len(lines) == 1 and "code=NOT_FOUND" in lines[0]


def test_metrics_side_port(server, stub, records):
    stub.Embed(request_for(records[:2]), timeout=30)
    port = server[0].metrics_port
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


def test_sixteen_concurrent_clients_share_few_forwards(model, sample_fasta):
    # similar lengths (padding stays under min_batch_fill's 15%), as a real mix of clients would pool
    singles = [r for r in real_records(sample_fasta, 400, max_length=400) if len(r) >= 340][:16]
    with running_server(model, max_queue_delay_ms=200) as (_, address, registry):
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
    alone = {e.id: e.vector for e in embed_records(singles, model)}
    for reply in replies:
        e = reply.embeddings[0]
        np.testing.assert_allclose(np.frombuffer(e.vector, "<f4"), alone[e.id], atol=1e-5)


def big_request(n: int = 16, length: int = 1000) -> pb.EmbedRequest:
    rng = np.random.default_rng(0)
    letters = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    return pb.EmbedRequest(
        sequences=[pb.Sequence(sequence="".join(rng.choice(letters, length))) for _ in range(n)]
    )


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_full_queue_is_resource_exhausted(model):
    with (
        running_server(model, max_queue=1, max_queue_delay_ms=0) as (_, address, registry),
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
    assert all(c in (grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED) for c in codes)


def test_deadline_exceeded_and_expired_work_is_dropped(model):
    with (
        running_server(model, max_queue_delay_ms=0) as (_, address, registry),
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
    assert embedded == 48, "the expired request must not have reached the model"


@pytest.fixture(scope="module")
def pfam(shared_file: Callable[..., Path]) -> dict[str, list[ProteinRecord]]:
    """Real Pfam seed domains by family (label=...)."""
    by_family: dict[str, list[ProteinRecord]] = {}
    for record in read_fasta(shared_file("families/pfam_seed_small.fasta")):
        by_family.setdefault(record.labels[0], []).append(record)
    return by_family


def test_classifier_lifecycle_and_classify_equals_in_process(channel, model, pfam, service_db_url):
    classifiers = pb_grpc.ClassifierServiceStub(channel)
    families = ["fn3", "RRM_1", "Pkinase"]
    support = [r for f in families for r in pfam[f][:4]]
    queries = [r for f in families for r in pfam[f][4:6]]

    def examples(records: list[ProteinRecord]) -> list[pb.LabelledSequence]:
        return [pb.LabelledSequence(id=r.id, sequence=r.sequence, labels=r.labels) for r in records]

    created = classifiers.CreateClassifier(
        pb.CreateClassifierRequest(name="families", examples=examples(support[:9])), timeout=120
    )
    assert (created.name, created.version, created.examples) == ("families", 1, 9)
    assert sorted(created.labels) == sorted(families)
    assert created.model_sha256 == model.sha256
    assert created.metrics.held_out == "leave-one-out" and created.metrics.examples == 9
    added = classifiers.AddExamples(
        pb.AddExamplesRequest(name="families", examples=examples(support[9:])), timeout=120
    )
    assert (added.version, added.examples) == (2, 12)
    assert (
        classifiers.GetClassifier(pb.GetClassifierRequest(name="families", version=1)).version == 1
    )
    listed = classifiers.ListClassifiers(pb.ListClassifiersRequest(), timeout=10).classifiers
    assert [(c.name, c.version) for c in listed] == [("families", 2)]

    reply = classifiers.Classify(
        pb.ClassifyRequest(
            name="families",
            sequences=[pb.Sequence(id=r.id, sequence=r.sequence) for r in queries],
            top_k=2,
        ),
        timeout=60,
    )
    assert reply.classifier.version == 2
    with Store(StoreConfig(url=service_db_url)) as store:
        classifier, _ = fewshot.load_classifier(store, "families")
    expected = fewshot.classify_records(classifier, queries, model)
    assert [p.id for p in reply.predictions] == [r.id for r in queries]
    for got, want in zip(reply.predictions, expected, strict=True):
        assert got.status == want.status
        assert got.abstained == (want.status == "unknown")
        assert got.label == ("" if got.abstained else want.label)
        assert got.top[0].label == want.top_label
        assert got.top[0].probability == pytest.approx(want.top_probability, abs=1e-4)
        assert [t.label for t in got.top] == [label for label, _ in want.top[:2]]
        assert [t.probability for t in got.top] == pytest.approx(
            [p for _, p in want.top[:2]], abs=1e-4
        )
    error = rpc_error(
        classifiers.Classify,
        pb.ClassifyRequest(name="families", sequences=[pb.Sequence(sequence="MKV")], top_k=-1),
        timeout=60,
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "top_k" in error.details()

    classifiers.DeleteClassifier(pb.DeleteClassifierRequest(name="families"), timeout=10)
    for call, request in (
        (classifiers.GetClassifier, pb.GetClassifierRequest(name="families")),
        (
            classifiers.Classify,
            pb.ClassifyRequest(name="families", sequences=[pb.Sequence(sequence="MKV")]),
        ),
        (
            classifiers.AddExamples,
            pb.AddExamplesRequest(name="families", examples=examples(support[:1])),
        ),
    ):
        error = rpc_error(call, request, timeout=10)
        assert error.code() == grpc.StatusCode.NOT_FOUND and "'families'" in error.details()


def test_classifier_errors_are_invalid_argument(channel, pfam):
    classifiers = pb_grpc.ClassifierServiceStub(channel)
    one_class = [
        pb.LabelledSequence(id=r.id, sequence=r.sequence, labels=r.labels) for r in pfam["fn3"][:4]
    ]
    error = rpc_error(
        classifiers.CreateClassifier,
        pb.CreateClassifierRequest(name="bad", examples=one_class),
        timeout=60,
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "2 classes" in error.details()


def test_classifier_rpcs_are_unimplemented_without_a_store(model):
    with running_server(model) as (_, address, _registry), grpc.insecure_channel(address) as ch:
        error = rpc_error(
            pb_grpc.ClassifierServiceStub(ch).ListClassifiers,
            pb.ListClassifiersRequest(),
            timeout=10,
        )
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


def test_service_config_is_checked():
    with pytest.raises(InvalidInputError, match="max_queue must be at least 1"):
        ServiceConfig(max_queue=0)
    with pytest.raises(InvalidInputError, match="port must be in"):
        ServiceConfig(port=70000)


SERVE_COMMANDS = {
    "python -m service": (sys.executable, "-m", "service"),
    # the console script's main (it sets WARNING logging first; serve must still log at INFO)
    "protssl serve": (
        sys.executable, "-c", "from protssl.cli import main; raise SystemExit(main())", "serve",
    ),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("entry", "signals"), [("python -m service", 1), ("protssl serve", 2)])
def test_the_server_stops_gracefully_on_sigterm(model_dir, records, tmp_path, entry, signals):
    """One SIGTERM, or two back to back (a `timeout` forwarding what `kill` sent): in-flight calls
    finish, the process exits 0. A handler that took a lock deadlocked on the second signal."""
    env = dict(
        os.environ, PROTSSL_MODEL=str(model_dir), PROTSSL_DTYPE="float32", OMP_WAIT_POLICY="PASSIVE"
    )
    process = subprocess.Popen(
        [
            *SERVE_COMMANDS[entry],
            "--port",
            "0",
            "--metrics-port",
            "off",
            "--grace-s",
            "20",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        match, _ = wait_for_line(process, r"serving protssl.v1 on 127.0.0.1:(\d+)")
        port = int(match.group(1))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.EmbeddingServiceStub(ch)
            stub.ListModels(pb.ListModelsRequest(), timeout=30)
            in_flight = stub.Embed.future(big_request(32), timeout=120)
            time.sleep(0.2)
            for _ in range(signals):
                process.send_signal(signal.SIGTERM)
            assert len(in_flight.result().embeddings) == 32  # finished within the grace period
        _, rest = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, rest
    assert "shutting down" in rest and "stopped" in rest


def test_the_idle_model_worker_hands_freed_memory_back_once_per_pause(model, records):
    """Once after the load, once after work and a pause; not again while nothing ran since."""
    metrics = ServiceMetrics(CollectorRegistry())
    batcher = EmbeddingBatcher(
        model,
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
        assert len(batcher.submit(records[:4]).future.result(timeout=60)) == 4
        assert releases_after(0.5) == 2
        assert releases_after(0.3) == 2
    finally:
        batcher.close()


HEAP_HOLES_PROBE = """
import ctypes, os
from service.batcher import release_freed_memory
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss_mib():
    pages = int(open("/proc/self/statm").read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
blocks = [libc.malloc(64 * 1024) for _ in range(2048)]
for block in blocks:
    ctypes.memset(block, 1, 64 * 1024)
start = rss_mib()
for block in blocks[::2]:  # 64 MiB of holes between live blocks: glibc keeps them
    libc.free(block)
freed = rss_mib()
assert release_freed_memory()
print(start - freed, freed - rss_mib())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc_trim")
def test_release_freed_memory_returns_heap_holes_to_the_kernel():
    """64 MiB freed between live blocks stays resident until `release_freed_memory` hands it back
    (protobuf's own periodic malloc_trim would otherwise do it while holding the GIL)."""
    probe = subprocess.run(
        [sys.executable, "-c", HEAP_HOLES_PROBE], capture_output=True, text=True, check=True
    )
    kept_by_free, released = map(float, probe.stdout.split())
    assert kept_by_free < 8
    assert released >= 48


@pytest.mark.slow
def test_a_bf16_server_on_a_cpu_without_bf16_serves_correct_vectors(model_dir, model, records):
    """`ONEDNN_MAX_CPU_ISA=AVX2` makes oneDNN refuse bf16 as on AVX2-only CPUs, where every forward
    of a bf16 server once failed: it starts, warms up and answers with the float32 vectors."""
    env = dict(
        os.environ,
        PROTSSL_MODEL=str(model_dir),
        PROTSSL_DTYPE="bfloat16",
        ONEDNN_MAX_CPU_ISA="AVX2",
        ATEN_CPU_CAPABILITY="avx2",
        OMP_WAIT_POLICY="PASSIVE",
    )
    process = subprocess.Popen(
        [*SERVE_COMMANDS["python -m service"], "--port", "0", "--metrics-port", "off"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        match, lines = wait_for_line(process, r"serving protssl.v1 on 127.0.0.1:(\d+)")
        with grpc.insecure_channel(f"127.0.0.1:{match.group(1)}") as ch:
            response = pb_grpc.EmbeddingServiceStub(ch).Embed(request_for(records), timeout=120)
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, rest
    assert "without native bf16" in "".join(lines) and "Traceback" not in "".join(lines) + rest
    assert {e.provenance.compute_dtype for e in response.embeddings} == {"bfloat16"}
    want = {e.id: e.vector for e in embed_records(records, model, EmbedConfig())}
    for name, got in vectors(response).items():
        cosine = got @ want[name] / np.linalg.norm(got) / np.linalg.norm(want[name])
        assert cosine >= 0.999, name
