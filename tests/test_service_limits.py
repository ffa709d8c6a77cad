"""Input limits, wire hygiene and bounded streams, through a real server on a loopback port.

Each test is a regression for something a probe of the server found (issue 20, items 3, 7, 8, 9
and 11): ids cut at the first space, 1 MB ids accepted, undecodable requests answered INTERNAL,
responses over the message limit computed before failing, streams holding results back, idle
streams starving the handler threads, cancels logged as unexpected errors.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from service_support import request_for, rpc_error, running_server

import protssl
from protssl._proto import protssl_pb2 as pb
from protssl._proto import protssl_pb2_grpc as pb_grpc
from protssl.checkpoint import LoadedModel
from protssl.errors import AlreadyExistsError, MessageTooLargeError, OverloadedError
from protssl.fasta import ProteinRecord, read_fasta
from service.servicers import _SeenIds

pytestmark = pytest.mark.service

EMBED = "/protssl.v1.EmbeddingService/Embed"
EMBED_STREAM = "/protssl.v1.EmbeddingService/EmbedStream"


@pytest.fixture(scope="module")
def records(sample_fasta: Path) -> list[ProteinRecord]:
    """Short real proteins."""
    out = [r for r in read_fasta(sample_fasta) if len(r) <= 200]
    assert len(out) >= 6
    return out[:6]


@pytest.fixture(scope="module")
def server(
    service_model: LoadedModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, CollectorRegistry]]:
    """A server with a real SQLite store and small limits."""
    url = f"sqlite:///{tmp_path_factory.mktemp('limits') / 'store.sqlite3'}"
    with running_server(
        service_model,
        store=True,
        database_url=url,
        max_id_length=100,
        max_sequences=8000,
        max_residues=2_000_000,
        max_message_mb=1,
        max_examples=12,
        max_classes=3,
        workers=8,
        max_streams=16,  # capped at workers / 2 = 4
        stream_idle_timeout_s=1.5,
        stream_id_memory=4,
    ) as (_, address, registry):
        yield address, registry


@pytest.fixture(scope="module")
def channel(server: tuple[str, CollectorRegistry]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server[0]) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.EmbeddingServiceStub:
    return pb_grpc.EmbeddingServiceStub(channel)


def _count(registry: CollectorRegistry, method: str, code: str) -> float:
    value = registry.get_sample_value("protssl_requests_total", {"method": method, "code": code})
    return value or 0.0


# --- ids ----------------------------------------------------------------------------------------


def test_ids_are_taken_verbatim(stub, records):
    """'my protein' came back as 'my'; two ids sharing a first word were refused as duplicates."""
    ids = ["my protein", "my other protein", "x label=foo", "  padded  "]
    request = pb.EmbedRequest(
        sequences=[
            pb.Sequence(id=i, sequence=r.sequence) for i, r in zip(ids, records, strict=False)
        ]
    )
    reply = stub.Embed(request, timeout=60)
    assert [e.id for e in reply.embeddings] == ids


@pytest.mark.parametrize(
    ("bad_id", "words"),
    [
        ("x" * 1_000_000, ["sequences[1].id", "max_id_length"]),
        ("a\x00b", ["sequences[1].id", "NUL"]),
    ],
    ids=["1MB", "NUL"],
)
def test_bad_ids_are_refused(channel, records, bad_id, words):
    request = pb.EmbedRequest(
        sequences=[
            pb.Sequence(id="ok", sequence=records[0].sequence),
            pb.Sequence(id=bad_id, sequence=records[1].sequence),
        ]
    )
    error = rpc_error(pb_grpc.EmbeddingServiceStub(channel).Embed, request, timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert all(w in error.details() for w in words), error.details()


def test_long_id_refused_under_the_message_limit(stub, records):
    request = request_for(records[:1])
    request.sequences[0].id = "y" * 101
    error = rpc_error(stub.Embed, request, timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_id_length" in error.details() and "101" in error.details()


# --- on_invalid and the wording of errors --------------------------------------------------------


def test_on_invalid_over_the_wire(stub, records):
    good, bad = records[0], records[1].sequence[:20] + "@" + records[1].sequence[20:]
    sequences = [
        pb.Sequence(id="good", sequence=good.sequence),
        pb.Sequence(id="bad", sequence=bad),
    ]
    error = rpc_error(stub.Embed, pb.EmbedRequest(sequences=sequences), timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'bad'" in error.details() and "position 21" in error.details()
    assert "on_invalid" in error.details() and "--" not in error.details()

    def embed(on_invalid: int) -> pb.EmbedResponse:
        options = pb.EmbedOptions(on_invalid=on_invalid)
        return stub.Embed(pb.EmbedRequest(sequences=sequences, options=options), timeout=60)

    assert [e.id for e in embed(pb.ON_INVALID_SKIP).embeddings] == ["good"]
    replaced = embed(pb.ON_INVALID_REPLACE).embeddings
    assert [e.id for e in replaced] == ["good", "bad"] and replaced[1].length == len(bad)


def test_error_trailers_hold_any_id(stub):
    """An id that is not printable ASCII in the record-id trailer failed the call ("Invalid
    metadata", INTERNAL): it goes %-encoded. (Control characters are refused in ids.)"""
    request = pb.EmbedRequest(sequences=[pb.Sequence(id="é x%", sequence="MK@V")])
    error = rpc_error(stub.Embed, request, timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "position 3" in error.details()
    assert dict(error.trailing_metadata())["protssl-record-id"] == "%C3%A9 x%25"


def test_sdk_passes_on_invalid(server, records):
    with protssl.Client(server[0]) as client:
        result = client.embed({"a": records[0].sequence, "b": "MKV@L"}, on_invalid="skip")
        assert result.ids == ["a"]
        result = client.embed({"b": "MKV@L"}, on_invalid="replace")
        assert result.embeddings[0].length == 5


# --- undecodable requests -------------------------------------------------------------------------


def _invalid_utf8_request() -> bytes:
    """An EmbedRequest whose one Sequence has an id that is not UTF-8 (field 1 / field 1)."""
    sequence = b"\x0a\x02\xff\xfe" + b"\x12\x03MKV"
    return b"\x0a" + bytes([len(sequence)]) + sequence


@pytest.mark.parametrize(
    "payload", [b"\xff\xff\xff\xff", _invalid_utf8_request()], ids=["garbage", "bad-utf8"]
)
def test_undecodable_request_is_invalid_argument(channel, payload, server):
    assert (
        not pb.EmbedRequest.FromString(b"\x0a\x05\x12\x03MKV").sequences[0].id
    )  # framing is right
    unary = channel.unary_unary(EMBED)
    with pytest.raises(grpc.RpcError) as info:
        unary(payload, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid message" in info.value.details()
    stream = channel.stream_stream(EMBED_STREAM)
    with pytest.raises(grpc.RpcError) as info:
        list(stream(iter([payload]), timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- message size ---------------------------------------------------------------------------------


def test_response_over_the_message_limit_is_refused_up_front(server, stub):
    """5,000 pooled vectors with 100-character ids: the request fits 1 MiB, the response does not."""
    registry = server[1]
    before = registry.get_sample_value("protssl_embeddings_total", {"source": "computed"}) or 0
    request = pb.EmbedRequest(
        sequences=[pb.Sequence(id=f"{i:0100d}", sequence="MKV") for i in range(5000)]
    )
    assert request.ByteSize() < 2**20
    error = rpc_error(stub.Embed, request, timeout=60)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "max_message_mb" in error.details()
    after = registry.get_sample_value("protssl_embeddings_total", {"source": "computed"}) or 0
    assert after == before  # nothing was computed


def test_sdk_raises_message_too_large_not_overloaded(server):
    rng = np.random.default_rng(0)
    letters = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    sequences = ["".join(rng.choice(letters, 6000)) for _ in range(200)]  # 1.2 MB request
    with (
        protssl.Client(server[0], retries=0) as client,
        pytest.raises(MessageTooLargeError) as info,
    ):
        client.embed(sequences)
    assert "larger than max" in str(info.value) and "retry" not in str(info.value)


# --- streams --------------------------------------------------------------------------------------


class _Paced:
    """A request stream the test feeds one message at a time (None half-closes it)."""

    def __init__(self) -> None:
        self.messages: queue.Queue[pb.EmbedStreamRequest | None] = queue.Queue()

    def __iter__(self) -> Iterator[pb.EmbedStreamRequest]:
        while (message := self.messages.get()) is not None:
            yield message


def test_stream_results_come_back_before_the_next_message(stub, records):
    """A client that waits for its results before sending more used to hang to its deadline."""
    paced = _Paced()
    responses = stub.EmbedStream(iter(paced), timeout=60)
    for index, record in enumerate(records[:3]):
        paced.messages.put(
            pb.EmbedStreamRequest(sequences=[pb.Sequence(id=record.id, sequence=record.sequence)])
        )
        got = next(responses)
        assert got.embedding.id == record.id
        progress = next(responses)
        assert progress.progress.records_done == index + 1
    paced.messages.put(None)
    assert list(responses) == []


def test_stream_duplicates_refused_within_bounded_memory(stub, records):
    def stream(ids: list[list[str]]) -> list[pb.EmbedStreamResponse]:
        messages = [
            pb.EmbedStreamRequest(sequences=[pb.Sequence(id=i, sequence="MKV") for i in chunk])
            for chunk in ids
        ]
        return list(stub.EmbedStream(iter(messages), timeout=60))

    error = rpc_error(stream, [["a", "b"], ["a"]])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "'a'" in error.details()
    # past stream_id_memory (4) ids are no longer remembered: a late repeat is not refused
    replies = stream([["a", "b", "c", "d"], ["e"], ["e2"], ["e"]])
    assert sum(r.HasField("embedding") for r in replies) == 7


def test_seen_ids_memory_is_bounded():
    seen = _SeenIds(limit=1000)
    assert not any(seen.seen(f"{i:0100000d}") for i in range(5000))  # 5,000 ids of 100 kB each
    assert seen.seen("0" * 100_000)  # id 0, remembered
    assert len(seen._hashes) == 1000


def test_idle_stream_is_ended(stub, server):
    paced = _Paced()
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        list(stub.EmbedStream(iter(paced), timeout=30))
    paced.messages.put(None)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "stream_idle_timeout_s" in info.value.details()
    assert time.monotonic() - started < 10


def test_idle_streams_cannot_starve_health_or_embed(server, channel, stub, records):
    """8 idle streams with 8 workers made Health and Embed time out; now 4 are served at once."""
    streams: list[_Paced] = []
    outcomes: queue.Queue[grpc.StatusCode] = queue.Queue()

    def hold() -> None:
        paced = _Paced()
        streams.append(paced)
        try:
            list(stub.EmbedStream(iter(paced), timeout=30))
            outcomes.put(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            outcomes.put(exc.code())

    counted = {"limit": "max_streams"}
    before = server[1].get_sample_value("protssl_refused_calls_total", counted) or 0.0
    threads = [threading.Thread(target=hold) for _ in range(8)]
    for thread in threads:
        thread.start()
    refused = [outcomes.get(timeout=10) for _ in range(4)]
    assert refused == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 4
    assert server[1].get_sample_value("protssl_refused_calls_total", counted) == before + 4
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert len(stub.Embed(request_for(records[:1]), timeout=5).embeddings) == 1
    for paced in streams:
        paced.messages.put(None)
    for thread in threads:
        thread.join(timeout=30)
    assert [outcomes.get(timeout=1) for _ in range(4)] == [grpc.StatusCode.OK] * 4


def test_cancel_and_deadline_while_waiting_are_quiet(server, stub, caplog):
    """A client cancel or deadline while the server waits for the next message is not INTERNAL."""
    registry = server[1]
    internal = _count(registry, EMBED_STREAM, "INTERNAL")
    cancelled = _count(registry, EMBED_STREAM, "CANCELLED")
    expired = _count(registry, EMBED_STREAM, "DEADLINE_EXCEEDED")
    caplog.set_level(logging.INFO)
    paced = _Paced()
    paced.messages.put(pb.EmbedStreamRequest(sequences=[pb.Sequence(id="a", sequence="MKV")]))
    call = stub.EmbedStream(iter(paced), timeout=30)
    next(call)
    call.cancel()
    paced.messages.put(None)
    with pytest.raises(grpc.RpcError) as info:
        # long enough for the handler to start waiting on a loaded machine (else grpc's core
        # ends the call before the handler runs, and the server counts nothing)
        list(stub.EmbedStream(iter(_Paced()), timeout=2.0))
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        _count(registry, EMBED_STREAM, "CANCELLED") == cancelled
        or _count(registry, EMBED_STREAM, "DEADLINE_EXCEEDED") == expired
    ):
        time.sleep(0.05)
    assert _count(registry, EMBED_STREAM, "CANCELLED") == cancelled + 1
    assert _count(registry, EMBED_STREAM, "DEADLINE_EXCEEDED") == expired + 1
    assert _count(registry, EMBED_STREAM, "INTERNAL") == internal
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# --- classifiers ----------------------------------------------------------------------------------


def _example(
    record: ProteinRecord, labels: list[str], id_: str | None = None
) -> pb.LabelledSequence:
    return pb.LabelledSequence(id=id_ or record.id, sequence=record.sequence, labels=labels)


@pytest.mark.parametrize(
    ("name", "id_", "label", "words"),
    [
        ("a\x00b", None, "A", ["classifier name", "NUL"]),
        ("ok", "x\x00y", "A", ["id", "NUL"]),
        ("ok", None, "A;B", ["';'"]),
        ("ok", None, "", ["label", "empty"]),
        ("ok", None, "A\x00", ["label", "NUL"]),
    ],
    ids=["nul-name", "nul-id", "separator", "empty-label", "nul-label"],
)
def test_bad_classifier_fields_are_invalid_argument(channel, records, name, id_, label, words):
    examples = [_example(r, ["B"]) for r in records[:3]] + [_example(records[3], [label], id_)]
    error = rpc_error(
        pb_grpc.ClassifierServiceStub(channel).CreateClassifier,
        pb.CreateClassifierRequest(name=name, examples=examples),
        timeout=60,
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert all(w in error.details() for w in words), error.details()


def test_classifier_example_and_class_limits(channel, records):
    classifiers = pb_grpc.ClassifierServiceStub(channel)
    many = [_example(records[i % 6], [f"L{i % 2}"], f"e{i}") for i in range(13)]
    error = rpc_error(
        classifiers.CreateClassifier,
        pb.CreateClassifierRequest(name="many", examples=many),
        timeout=60,
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_examples" in error.details()
    wide = [_example(r, [f"L{i}"]) for i, r in enumerate(records[:4])]
    error = rpc_error(
        classifiers.CreateClassifier,
        pb.CreateClassifierRequest(name="wide", examples=wide),
        timeout=60,
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_classes" in error.details()
    ok = [_example(r, [f"L{i % 2}"]) for i, r in enumerate(records[:6])]
    classifiers.CreateClassifier(pb.CreateClassifierRequest(name="grow", examples=ok), timeout=60)
    more = [_example(records[i % 6], [f"L{i % 2}"], f"more{i}") for i in range(7)]
    error = rpc_error(
        classifiers.AddExamples, pb.AddExamplesRequest(name="grow", examples=more), timeout=60
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_examples" in error.details()
    classifiers.DeleteClassifier(pb.DeleteClassifierRequest(name="grow"), timeout=10)


def test_create_of_an_existing_name_is_already_exists_even_concurrently(server, records):
    support = [(r.sequence, f"L{i % 2}") for i, r in enumerate(records)]
    outcomes: list[object] = []

    def create() -> None:
        with protssl.Client(server[0]) as client:
            try:
                outcomes.append(client.create_classifier("race", support).version)
            except AlreadyExistsError as exc:
                outcomes.append(exc)

    threads = [threading.Thread(target=create) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(o for o in outcomes if isinstance(o, int)) == [1]
    assert sum(isinstance(o, AlreadyExistsError) for o in outcomes) == 2
    with protssl.Client(server[0]) as client:
        assert client.create_classifier("race", support, new_version=True).version == 2
        client.delete_classifier("race")


def test_calls_past_max_calls_are_refused_at_once(service_model):
    """Calls beyond max_calls (in progress or waiting) get RESOURCE_EXHAUSTED, not a queue."""
    with (
        running_server(service_model, max_calls=2, stream_idle_timeout_s=30) as (_, address, _),
        grpc.insecure_channel(address) as channel,
    ):
        stub = pb_grpc.EmbeddingServiceStub(channel)
        held = [_Paced(), _Paced()]
        calls = [stub.EmbedStream(iter(p), timeout=30) for p in held]
        time.sleep(0.5)  # both streams are open on the server
        started = time.monotonic()
        error = rpc_error(stub.ListModels, pb.ListModelsRequest(), timeout=10)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() - started < 5
        for paced in held:
            paced.messages.put(None)
        for call in calls:
            assert list(call) == []
        assert len(stub.ListModels(pb.ListModelsRequest(), timeout=10).models) == 1


def test_max_calls_counts_waiting_calls_and_refuses_in_protssl_words(
    service_model, caplog, monkeypatch
):
    """With one handler thread and max_calls 2, an open stream (in progress) and a call queued for
    the thread (waiting) fill the limit: the next calls get RESOURCE_EXHAUSTED at once, in protssl's
    words (not grpcio's "Concurrent RPC limit exceeded!"), counted in the metrics and logged at
    most once per interval with how many there were; the SDK raises OverloadedError."""
    import service.admission

    interval = 5.0  # the five refusals below come well within it, even on a loaded machine
    monkeypatch.setattr(service.admission, "LOG_EVERY_S", interval)
    models = "/protssl.v1.EmbeddingService/ListModels"
    with (
        caplog.at_level(logging.WARNING, logger="service.admission"),
        running_server(service_model, max_calls=2, workers=1, stream_idle_timeout_s=30) as (
            _,
            address,
            registry,
        ),
        grpc.insecure_channel(address) as channel,
        protssl.Client(address, retries=0) as client,
    ):
        stub = pb_grpc.EmbeddingServiceStub(channel)
        paced = _Paced()
        stream = stub.EmbedStream(iter(paced), timeout=30)
        next(iter(stream.initial_metadata()))  # the stream holds the only handler thread
        queued = stub.ListModels.future(pb.ListModelsRequest(), timeout=30)
        time.sleep(0.3)  # the call waits for the thread
        assert not queued.done()
        started = time.monotonic()
        errors = [rpc_error(stub.ListModels, pb.ListModelsRequest(), timeout=10)]
        logged_by = time.monotonic()  # the server logged the first refusal before answering it
        errors += [rpc_error(stub.ListModels, pb.ListModelsRequest(), timeout=10) for _ in range(3)]
        with pytest.raises(OverloadedError) as overloaded:
            client.list_models()
        assert time.monotonic() - started < interval
        message = (
            "2 calls are in progress or waiting, the most this server takes at once "
            "(max_calls: --max-calls 2, PROTSSL_MAX_CALLS): back off and retry"
        )
        assert [(e.code(), e.details()) for e in errors] == [
            (grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        ] * 4
        assert str(overloaded.value) == message
        refused = {"limit": "max_calls"}
        assert registry.get_sample_value("protssl_refused_calls_total", refused) == 5
        assert _count(registry, models, "RESOURCE_EXHAUSTED") == 5
        lines = [r.getMessage() for r in caplog.records if r.name == "service.admission"]
        assert len(lines) == 1, lines  # the first refusal; the next four fall in its interval
        assert lines[0].startswith(
            "refused 1 call (RESOURCE_EXHAUSTED) since the last such line: 2 calls in progress or "
            "waiting is the limit (--max-calls 2, PROTSSL_MAX_CALLS); raise it or add --processes"
        )
        time.sleep(max(0.0, logged_by + interval + 0.1 - time.monotonic()))
        error = rpc_error(stub.ListModels, pb.ListModelsRequest(), timeout=10)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        lines = [r.getMessage() for r in caplog.records if r.name == "service.admission"]
        assert len(lines) == 2 and lines[1].startswith("refused 5 calls"), lines
        paced.messages.put(None)  # the stream ends, the queued call gets the thread
        assert list(stream) == []
        assert len(queued.result().models) == 1
        assert len(stub.ListModels(pb.ListModelsRequest(), timeout=10).models) == 1
        assert registry.get_sample_value("protssl_refused_calls_total", refused) == 6


@pytest.mark.slow
def test_rss_does_not_ratchet_under_abuse(service_model_dir, tmp_path):
    """Rounds of large bad requests (1 MB ids, garbage bytes, over-limit responses, streams of
    big ids): the server's RSS after the fifth round stays within 10% of the second's."""
    import os
    import subprocess
    import sys

    import psutil
    from service_support import wait_for_line

    command = [sys.executable, "-m", "service", "--port", "0", "--metrics-port", "off"]
    command += ["--model", str(service_model_dir), "--dtype", "float32", "--max-message-mb", "4"]
    command += ["--database-url", f"sqlite:///{tmp_path / 'store.sqlite3'}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        match, _ = wait_for_line(process, r"serving protssl.v1 on (127.0.0.1:\d+)")
        server = psutil.Process(process.pid)
        with grpc.insecure_channel(match.group(1)) as channel:
            stub = pb_grpc.EmbeddingServiceStub(channel)
            raw = channel.unary_unary(EMBED)
            big_id = "i" * 1_000_000
            rss = []
            for _ in range(5):
                for _ in range(10):
                    request = pb.EmbedRequest(
                        sequences=[
                            pb.Sequence(id=big_id + str(i), sequence="MKV") for i in range(3)
                        ]
                    )
                    error = rpc_error(stub.Embed, request, timeout=30)
                    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
                    assert rpc_error(raw, b"\xff" * 3_000_000, timeout=30).code() == (
                        grpc.StatusCode.INVALID_ARGUMENT
                    )
                    per_residue = pb.EmbedRequest(
                        sequences=[
                            pb.Sequence(id=f"p{i}", sequence="MKV" * 10_000) for i in range(6)
                        ],
                        options=pb.EmbedOptions(pooling=pb.POOLING_PER_RESIDUE),
                    )
                    assert rpc_error(stub.Embed, per_residue, timeout=30).code() == (
                        grpc.StatusCode.INVALID_ARGUMENT
                    )
                    stream = [
                        pb.EmbedStreamRequest(sequences=[pb.Sequence(id=big_id, sequence="MKV")])
                    ]
                    code = rpc_error(
                        lambda s=stream: list(stub.EmbedStream(iter(s), timeout=30))
                    ).code()
                    assert code == grpc.StatusCode.INVALID_ARGUMENT
                time.sleep(0.5)
                rss.append(server.memory_info().rss)
        assert rss[-1] < rss[1] * 1.10, [r // 2**20 for r in rss]
    finally:
        process.terminate()
        process.communicate(timeout=60)


def test_a_client_pinging_too_often_is_sent_away(service_model):
    """Keepalive enforcement: pings every 200 ms (the server allows one per 10 s) end in GOAWAY."""
    options = [
        ("grpc.keepalive_time_ms", 200),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    with (
        running_server(service_model) as (_, address, _),
        grpc.insecure_channel(address, options=options) as channel,
    ):
        paced = _Paced()
        started = time.monotonic()
        error = rpc_error(
            lambda: list(pb_grpc.EmbeddingServiceStub(channel).EmbedStream(iter(paced), timeout=30))
        )
        paced.messages.put(None)
        assert error.code() == grpc.StatusCode.UNAVAILABLE and "pings" in error.details()
        assert time.monotonic() - started < 20


def test_a_list_over_the_message_limit_is_refused_not_failed_on_send(service_model, tmp_path):
    from protssl.store import Store, StoreConfig

    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    with Store(StoreConfig(url=url)) as store:
        for n in range(6):  # 6 x 1,000 labels of 200 characters: 1.2 MB
            classes = [f"{n}-{i}".ljust(200, "x") for i in range(1000)]
            store.classifiers.save(
                f"wide{n}",
                model_sha256=service_model.sha256,
                method="prototype",
                params={"classes": classes},
                blob=b"",
                examples=[],
                metrics={},
            )
    with (
        running_server(service_model, store=True, database_url=url, max_message_mb=1) as (
            _,
            address,
            _,
        ),
        grpc.insecure_channel(address) as channel,
    ):
        stub = pb_grpc.ClassifierServiceStub(channel)
        error = rpc_error(stub.ListClassifiers, pb.ListClassifiersRequest(), timeout=30)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_message_mb" in error.details()
        assert dict(error.trailing_metadata())["protssl-error-kind"] == "MessageTooLargeError"
        one = stub.GetClassifier(pb.GetClassifierRequest(name="wide0"), timeout=30)
        assert len(one.labels) == 1000


def test_idle_clock_starts_after_the_last_result(service_model, records):
    """A message whose results take longer than the idle timeout, then the next one right after
    them: the stream was busy, not idle, and goes on."""
    with (
        running_server(service_model, stream_idle_timeout_s=0.4) as (server, address, _),
        grpc.insecure_channel(address) as channel,
    ):
        stub = pb_grpc.EmbeddingServiceStub(channel)
        paced = _Paced()
        responses = stub.EmbedStream(iter(paced), timeout=60)
        server.batcher.run_task(lambda: time.sleep(1.2))  # the worker is busy for 3 idle timeouts
        for record in records[:2]:
            message = pb.Sequence(id=record.id, sequence=record.sequence)
            paced.messages.put(pb.EmbedStreamRequest(sequences=[message]))
            assert next(responses).embedding.id == record.id
            assert next(responses).HasField("progress")
        paced.messages.put(None)
        assert list(responses) == []


def test_one_huge_call_does_not_hold_the_worker_from_the_others(service_model):
    """A call of 300,000 residues used to keep every later call waiting until it was nearly done;
    turns now rotate every few forwards, so a one-sequence call is answered within a fraction."""
    rng = np.random.default_rng(0)
    letters = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    big = pb.EmbedRequest(
        sequences=[
            pb.Sequence(id=f"b{i}", sequence="".join(rng.choice(letters, 300))) for i in range(1000)
        ]
    )
    small = pb.EmbedRequest(sequences=[pb.Sequence(id="s", sequence="MKVLAAGIVGLLLAW")])
    with (
        running_server(service_model) as (_, address, _),
        grpc.insecure_channel(address) as channel,
    ):
        stub = pb_grpc.EmbeddingServiceStub(channel)
        took: dict[str, float] = {}

        def run_big() -> None:
            started = time.monotonic()
            assert len(stub.Embed(big, timeout=300).embeddings) == 1000
            took["big"] = time.monotonic() - started

        thread = threading.Thread(target=run_big)
        thread.start()
        time.sleep(0.2)
        small_latencies = []
        while thread.is_alive():
            started = time.monotonic()
            stub.Embed(small, timeout=300)
            small_latencies.append(time.monotonic() - started)
        thread.join()
    assert len(small_latencies) >= 3, (small_latencies, took)
    assert max(small_latencies) < 0.4 * took["big"], (small_latencies, took)
