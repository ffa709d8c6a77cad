"""Faults, for real: PostgreSQL stopped and started under a running server, a frozen database, and a
server killed with SIGKILL in the middle of a batch.

PostgreSQL is stopped in a private throwaway cluster (`pg_cluster.PrivateCluster`: initdb and
pg_ctl on a free port), never the machine's shared server that other tests use.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pg_cluster import PrivateCluster, initdb_path
from service_support import real_records, request_for, rpc_error, running_server, wait_for_line
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import OperationalError

from protssl._proto import protssl_pb2 as pb
from protssl._proto import protssl_pb2_grpc as pb_grpc
from protssl.checkpoint import LoadedModel
from protssl.embedding import EmbedConfig, embed_records
from protssl.fasta import ProteinRecord
from protssl.store import Store, StoreConfig
from protssl.store.schema import Base

pytestmark = pytest.mark.service

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    if initdb_path() is None:
        pytest.skip("initdb is not installed: the PostgreSQL fault tests need a private cluster")
    cluster = PrivateCluster()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="module")
def records(sample_fasta: Path) -> list[ProteinRecord]:
    return real_records(sample_fasta, 6, max_length=300)


def _health(channel: grpc.Channel, service: str = "") -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status)


def _eventually(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


def _labelled(records: list[ProteinRecord]) -> list[pb.LabelledSequence]:
    return [
        pb.LabelledSequence(id=r.id, sequence=r.sequence, labels=[f"L{i % 2}"])
        for i, r in enumerate(records)
    ]


def test_postgres_stopped_then_back(cluster, service_model: LoadedModel, records):
    """Down: UNAVAILABLE for every call that needs it (Embed and the classifier calls alike), no
    database address in any message, Health NOT_SERVING. Back: it recovers by itself."""
    settings = {"health_check_interval_s": 0.2, "database_connect_timeout_s": 2.0}
    with (
        running_server(service_model, store=True, database_url=cluster.url, **settings) as (
            _,
            address,
            _,
        ),
        grpc.insecure_channel(address) as channel,
    ):
        embed = pb_grpc.EmbeddingServiceStub(channel)
        classifiers = pb_grpc.ClassifierServiceStub(channel)
        tokens = pb_grpc.TokenServiceStub(channel)
        # not the records Embed asks for below: a fit caches its examples' vectors, and recent
        # vectors are answered from memory without the store
        classifiers.CreateClassifier(
            pb.CreateClassifierRequest(name="fam", examples=_labelled(records[2:])), timeout=60
        )
        classify = pb.ClassifyRequest(name="fam", sequences=[pb.Sequence(sequence="MKVLAAGIVG")])
        assert len(classifiers.Classify(classify, timeout=30).predictions) == 1
        assert _health(channel) == SERVING

        cluster.stop()
        calls = [
            (embed.Embed, request_for(records[:2])),
            (classifiers.Classify, classify),
            (classifiers.ListClassifiers, pb.ListClassifiersRequest()),
            (classifiers.GetClassifier, pb.GetClassifierRequest(name="fam")),
            (classifiers.DeleteClassifier, pb.DeleteClassifierRequest(name="fam")),
            (
                classifiers.CreateClassifier,
                pb.CreateClassifierRequest(name="other", examples=_labelled(records)),
            ),
            (tokens.ListTokens, pb.ListTokensRequest()),
            (tokens.CreateToken, pb.CreateTokenRequest(role="read")),
            (tokens.RevokeToken, pb.RevokeTokenRequest(id="0123456789abcdef")),
        ]
        for call, request in calls:
            started = time.monotonic()
            error = rpc_error(call, request, timeout=30)
            assert error.code() == grpc.StatusCode.UNAVAILABLE, (call, error.details())
            assert str(cluster.port) not in error.details() and "127.0.0.1" not in error.details()
            assert time.monotonic() - started < 10
        _eventually(lambda: _health(channel) == NOT_SERVING)
        assert _health(channel, "protssl.v1.ClassifierService") == NOT_SERVING
        assert _health(channel, "protssl.v1.EmbeddingService") == NOT_SERVING
        assert _health(channel, "protssl.v1.TokenService") == NOT_SERVING

        cluster.start()
        _eventually(lambda: _health(channel) == SERVING)
        assert len(embed.Embed(request_for(records[:2]), timeout=60).embeddings) == 2
        assert len(classifiers.Classify(classify, timeout=30).predictions) == 1
        listed = classifiers.ListClassifiers(pb.ListClassifiersRequest(), timeout=10)
        assert [c.name for c in listed.classifiers] == ["fam"]  # the failed create wrote nothing


def test_embed_without_store_only_when_configured(cluster, service_model, records):
    settings = {"health_check_interval_s": 0.2, "embed_without_store": True, "memory_cache_mb": 0}
    with (
        running_server(service_model, store=True, database_url=cluster.url, **settings) as (
            _,
            address,
            _,
        ),
        grpc.insecure_channel(address) as channel,
    ):
        embed = pb_grpc.EmbeddingServiceStub(channel)
        assert len(embed.Embed(request_for(records[:2]), timeout=60).embeddings) == 2
        cluster.stop()
        reply = embed.Embed(request_for(records[:3]), timeout=60)
        assert [e.id for e in reply.embeddings] == [r.id for r in records[:3]]
        assert not any(e.cached for e in reply.embeddings)  # the cache is unreachable
        error = rpc_error(
            pb_grpc.ClassifierServiceStub(channel).ListClassifiers,
            pb.ListClassifiersRequest(),
            timeout=10,
        )
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        _eventually(lambda: _health(channel) == NOT_SERVING)
        assert _health(channel, "protssl.v1.EmbeddingService") == SERVING
        cluster.start()
        _eventually(lambda: _health(channel) == SERVING)


def test_frozen_database_fails_within_the_connect_timeout(cluster):
    """A postmaster that accepts but never answers: a new connection gives up after the timeout."""
    config = StoreConfig(url=cluster.url, connect_timeout_s=2.0)
    with Store(config) as store:
        store.engine.dispose()  # no pooled connection: the next call must connect
        pid = cluster.postmaster_pid()
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            assert not store.ping()
            assert time.monotonic() - started < 8
        finally:
            os.kill(pid, signal.SIGCONT)
        assert store.ping()


@pytest.mark.postgres
def test_statement_timeout_is_set(postgres_url):
    with Store(StoreConfig(url=postgres_url, statement_timeout_s=0.3)) as store:
        started = time.monotonic()
        with (
            pytest.raises(OperationalError, match="statement timeout"),
            store.engine.connect() as connection,
        ):
            connection.execute(text("SELECT pg_sleep(5)"))
        assert time.monotonic() - started < 3


# --- SIGKILL mid-batch --------------------------------------------------------------------------


def _server(model_dir: Path, url: str) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "service", "--port", "0", "--metrics-port", "off"]
    command += ["--model", str(model_dir), "--dtype", "float32", "--database-url", url]
    command += ["--max-batch-tokens", "1024", "--max-group-tokens", "1024"]
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    match, _ = wait_for_line(process, r"serving protssl.v1 on (127.0.0.1:\d+)")
    return process, match.group(1)


def _stream(stub: pb_grpc.EmbeddingServiceStub, records: list[ProteinRecord]) -> Iterator[object]:
    messages = [
        pb.EmbedStreamRequest(
            sequences=[pb.Sequence(id=r.id, sequence=r.sequence) for r in records[i : i + 8]]
        )
        for i in range(0, len(records), 8)
    ]
    return stub.EmbedStream(iter(messages), timeout=300)


def _check_consistent(url: str, dim: int) -> int:
    """Every embedding row whole (bytes = rows x dim x 4) with its sequence present, no duplicate
    keys; returns the row count."""
    embeddings = Base.metadata.tables["embeddings"]
    sequences = Base.metadata.tables["sequences"]
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                assert connection.execute(text("PRAGMA integrity_check")).scalar() == "ok"
            rows = connection.execute(
                select(embeddings.c.sequence_sha256, embeddings.c.rows, embeddings.c.vector)
            ).all()
            for row in rows:
                assert len(row.vector) == (row.rows or 1) * dim * 4
            orphans = connection.execute(
                select(func.count())
                .select_from(embeddings)
                .where(~embeddings.c.sequence_sha256.in_(select(sequences.c.sha256)))
            ).scalar_one()
            assert orphans == 0
            assert len({r.sequence_sha256 for r in rows}) == len(rows)
            return len(rows)
    finally:
        engine.dispose()


@pytest.mark.slow
def test_sigkill_mid_batch_leaves_the_store_consistent(
    store_url, service_model_dir, service_model, sample_fasta
):
    unique = {r.sequence: r for r in real_records(sample_fasta, 300, max_length=400)}
    records = list(unique.values())[:240]
    dim = service_model.encoder.config.embed_dim
    Store(StoreConfig(url=store_url)).close()  # migrated, so the count below can read it
    process, address = _server(service_model_dir, store_url)
    try:
        with grpc.insecure_channel(address) as channel:
            responses = _stream(pb_grpc.EmbeddingServiceStub(channel), records)
            got = 0
            for message in responses:
                got += message.HasField("embedding")
                if got >= 40:
                    break
            process.send_signal(signal.SIGKILL)  # mid-batch: the stream is still sending work
            process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)
    kept = _check_consistent(store_url, dim)
    assert 0 < kept < len(records), kept

    process, address = _server(service_model_dir, store_url)
    try:
        with grpc.insecure_channel(address) as channel:
            replies = [m for m in _stream(pb_grpc.EmbeddingServiceStub(channel), records)]
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    embedded = [m.embedding for m in replies if m.HasField("embedding")]
    assert sorted(e.id for e in embedded) == sorted(r.id for r in records)
    assert sum(e.cached for e in embedded) == kept  # what was stored is served, not recomputed
    assert _check_consistent(store_url, dim) == len({r.sequence for r in records})
    expected = {e.id: e.vector for e in embed_records(records, service_model, EmbedConfig())}
    for message in embedded:
        vector = np.frombuffer(message.vector, dtype="<f4")
        np.testing.assert_allclose(vector, expected[message.id], atol=2e-5)
