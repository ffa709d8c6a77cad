"""Hypothesis fuzzing of the gRPC handlers on a real server: random field values, random bytes.

Whatever arrives, the server answers with a status a caller can act on (never UNKNOWN or
INTERNAL), keeps serving, and leaves no half-written row: every stored classifier has all of its
examples, every cached vector is whole and has its sequence.

The budget is small by default (CI); `PROTSSL_FUZZ_EXAMPLES=2000 pytest tests/test_service_fuzz.py`
runs a longer search.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from service_support import running_server
from sqlalchemy import create_engine, func, select

from protssl._proto import protssl_pb2 as pb
from protssl._proto import protssl_pb2_grpc as pb_grpc
from protssl.checkpoint import LoadedModel
from protssl.store.schema import Base

pytestmark = pytest.mark.service

FUZZ = settings(
    max_examples=int(os.environ.get("PROTSSL_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize="PROTSSL_FUZZ_EXAMPLES" not in os.environ,  # CI: the same cases every run
)
BAD = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
INT32 = st.integers(-(2**31), 2**31 - 1)
RESIDUES = "ACDEFGHIKLMNPQRSTVWYXBZUOJ*acdxz"
TEXT = st.text(max_size=40) | st.text(st.characters(codec="utf-8"), max_size=8) | st.just("")
SEQUENCE = st.text(RESIDUES, max_size=60) | st.text(max_size=20)


@pytest.fixture(scope="module")
def server(
    service_model: LoadedModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'store.sqlite3'}"
    with running_server(
        service_model,
        store=True,
        database_url=url,
        max_id_length=64,
        max_sequences=16,
        max_sequence_length=200,
        max_examples=16,
        stream_idle_timeout_s=2.0,
    ) as (_, address, _):
        yield address, url


@pytest.fixture(scope="module")
def channel(server: tuple[str, str]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server[0]) as ch:
        yield ch


def _code(call, request, **kwargs) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    try:
        result = call(request, timeout=60, **kwargs)
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)
    except grpc.RpcError as exc:
        assert exc.code() not in BAD, f"{exc.code()}: {exc.details()}"
        assert exc.details(), exc.code()
        return exc.code()
    return grpc.StatusCode.OK


sequences = st.lists(st.builds(pb.Sequence, id=TEXT, sequence=SEQUENCE), max_size=6)
options = st.builds(
    pb.EmbedOptions,
    model=st.sampled_from(["", "", "", "tiny-test", "esm2"]) | TEXT,
    pooling=st.sampled_from([0, 1, 2, 3]) | st.integers(-2, 5),
    layer=st.none() | st.none() | st.integers(-3, 2) | INT32,
    dtype=st.sampled_from([0, 1, 2]) | st.integers(-1, 4),
    on_invalid=st.sampled_from([0, 1, 2, 3]) | st.integers(-1, 5),
)
random_examples = st.lists(
    st.builds(
        pb.LabelledSequence,
        id=TEXT,
        sequence=SEQUENCE,
        labels=st.lists(st.sampled_from(["A", "B", "C", "1.1.1.1"]) | TEXT, max_size=3),
    ),
    max_size=8,
)
plausible_examples = st.lists(
    st.builds(
        pb.LabelledSequence,
        sequence=st.text("ACDEFGHIKLMNPQRSTVWY", min_size=5, max_size=60),
        labels=st.lists(st.sampled_from(["A", "B", "1.1.1.1", "1.1.2.1"]), min_size=1, max_size=2),
    ),
    min_size=4,
    max_size=10,
)
labelled = plausible_examples | random_examples
names = st.sampled_from(["fam", "other"]) | TEXT


@FUZZ
@given(sequences=sequences, options=options)
def test_embed(channel, sequences, options):
    stub = pb_grpc.EmbeddingServiceStub(channel)
    event(f"Embed {_code(stub.Embed, pb.EmbedRequest(sequences=sequences, options=options)).name}")


@FUZZ
@given(messages=st.lists(st.tuples(sequences, st.none() | options), max_size=4))
def test_embed_stream(channel, messages):
    stub = pb_grpc.EmbeddingServiceStub(channel)
    requests = [pb.EmbedStreamRequest(sequences=s, options=o) for s, o in messages]
    _code(stub.EmbedStream, iter(requests))


@FUZZ
@given(payload=st.binary(max_size=300), method=st.sampled_from(["Embed", "EmbedStream"]))
def test_random_bytes(channel, payload, method):
    path = f"/protssl.v1.EmbeddingService/{method}"
    if method == "Embed":
        _code(channel.unary_unary(path), payload)
    else:
        _code(channel.stream_stream(path), iter([payload]))


@FUZZ
@given(
    name=names,
    method=st.integers(-1, 6),
    examples=labelled,
    new_version=st.booleans(),
    queries=sequences,
    top_k=INT32,
    version=INT32,
)
def test_classifier_calls(
    channel, server, name, method, examples, new_version, queries, top_k, version
):
    stub = pb_grpc.ClassifierServiceStub(channel)
    create = pb.CreateClassifierRequest(
        name=name, method=method, examples=examples, new_version=new_version
    )
    event(f"CreateClassifier {_code(stub.CreateClassifier, create).name}")
    _code(stub.AddExamples, pb.AddExamplesRequest(name=name, examples=examples[:2]))
    _code(
        stub.Classify,
        pb.ClassifyRequest(name=name, version=version, sequences=queries, top_k=top_k),
    )
    _code(stub.GetClassifier, pb.GetClassifierRequest(name=name, version=version))
    _code(stub.ListClassifiers, pb.ListClassifiersRequest())
    if version % 3 == 0:
        _code(stub.DeleteClassifier, pb.DeleteClassifierRequest(name=name))
    _check_store(server[1])


def test_server_still_serves_and_store_is_whole(channel, server):
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    _check_store(server[1])


def _check_store(url: str) -> None:
    """No half-written rows: each classifier has the examples its metrics count, each vector is
    whole and its sequence stored."""
    tables = Base.metadata.tables
    classifiers, examples = tables["classifiers"], tables["classifier_examples"]
    embeddings, stored = tables["embeddings"], tables["sequences"]
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            counts = dict(
                connection.execute(
                    select(examples.c.classifier_id, func.count()).group_by(
                        examples.c.classifier_id
                    )
                ).all()
            )
            for row in connection.execute(select(classifiers.c.id, classifiers.c.metrics)):
                assert counts.get(row.id, 0) == row.metrics["examples"], row
            for row in connection.execute(
                select(embeddings.c.dim, embeddings.c.rows, embeddings.c.vector)
            ):
                assert len(row.vector) == row.dim * (row.rows or 1) * 4
            orphans = connection.execute(
                select(func.count())
                .select_from(embeddings)
                .where(~embeddings.c.sequence_sha256.in_(select(stored.c.sha256)))
            ).scalar_one()
            assert orphans == 0
    finally:
        engine.dispose()
