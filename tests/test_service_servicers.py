"""The servicers through a real server on a loopback port: embeddings, streams, limits, the cache,
classifiers; each answer equals the library's in-process one."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import EXAMPLES
from service_support import (
    big_request,
    real_records,
    request_for,
    rpc_error,
    running_server,
    vectors,
)

from protssl import fewshot
from protssl._proto import protssl_pb2 as pb
from protssl._proto import protssl_pb2_grpc as pb_grpc
from protssl.checkpoint import LoadedModel, load_model
from protssl.embedding import EmbedConfig, cached_embeddings, embed_records
from protssl.fasta import ProteinRecord, read_fasta
from protssl.pooling import pooled_width
from protssl.store import Store, StoreConfig
from protssl.wire import POOLING

pytestmark = pytest.mark.service


LIMITS = {"max_sequences": 16, "max_residues": 20_000, "max_sequence_length": 5_000}


@pytest.fixture(scope="module")
def service_db_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'service.sqlite3'}"


@pytest.fixture(scope="module")
def server(service_model: LoadedModel, service_db_url: str) -> Iterator[tuple[object, str, object]]:
    """A server with a real SQLite store (cache + classifiers) and tight request limits."""
    with running_server(
        service_model, store=True, database_url=service_db_url, **LIMITS
    ) as running:
        yield running


@pytest.fixture(scope="module")
def channel(server: tuple[object, str, object]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server[1]) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.EmbeddingServiceStub:
    return pb_grpc.EmbeddingServiceStub(channel)


@pytest.mark.parametrize("pooling", ["mean", "bos", "segments", "per-residue"])
def test_embed_equals_in_process_embed_records_then_hits_the_cache(
    stub, service_model, service_records, pooling
):
    request = request_for(service_records, pooling=POOLING.value(pooling))
    response = stub.Embed(request, timeout=60)
    got = vectors(response)
    expected = {
        e.id: e for e in embed_records(service_records, service_model, EmbedConfig(pooling=pooling))
    }
    assert [e.id for e in response.embeddings] == [r.id for r in service_records]
    for message in response.embeddings:
        want = expected[message.id]
        np.testing.assert_allclose(got[message.id], want.vector, rtol=1e-4, atol=1e-5)
        dim = pooled_width(pooling, service_model.encoder.config.embed_dim)
        assert message.length == want.length and message.dim == dim
        assert not message.cached
        assert message.provenance.model_sha256 == service_model.sha256
        assert message.provenance.pooling == pooling
        assert message.provenance.windowed == want.provenance.windowed
    assert response.embeddings[-1].provenance.windowed  # the long record was windowed, not cut
    again = stub.Embed(request, timeout=60)
    assert all(e.cached for e in again.embeddings)
    assert [e.vector for e in again.embeddings] == [e.vector for e in response.embeddings]
    assert [e.provenance for e in again.embeddings] == [e.provenance for e in response.embeddings]


def test_float16_wire_and_layer(stub, service_model, service_records):
    response = stub.Embed(
        request_for(service_records[:3], dtype=pb.VECTOR_DTYPE_FLOAT16, layer=1), timeout=60
    )
    expected = {
        e.id: e.vector
        for e in embed_records(service_records[:3], service_model, EmbedConfig(layer=1))
    }
    assert all(
        e.dtype == pb.VECTOR_DTYPE_FLOAT16 and e.provenance.layer == 1 for e in response.embeddings
    )
    for key, value in vectors(response, "<f2").items():
        np.testing.assert_allclose(value, expected[key], rtol=2e-3, atol=2e-3)


def test_stream_sends_embeddings_and_progress(stub, service_records):
    chunks = [service_records[:3], service_records[3:6], service_records[6:]]
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
    assert set(streamed) == {r.id for r in service_records}
    assert len(progress) == 3
    assert progress[-1].records_done == len(service_records) == progress[-1].records_received
    assert progress[-1].residues_done == sum(len(r) for r in service_records)
    unary = vectors(stub.Embed(request_for(service_records), timeout=60))
    for key, message in streamed.items():
        np.testing.assert_allclose(np.frombuffer(message.vector, "<f4"), unary[key], atol=1e-5)


def test_stream_rejects_an_id_repeated_across_messages(stub, service_records):
    message = pb.EmbedStreamRequest(
        sequences=[pb.Sequence(id="x", sequence=service_records[0].sequence)]
    )
    error = rpc_error(lambda: list(stub.EmbedStream(iter([message, message]), timeout=30)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'x'" in error.details() and "duplicate" in error.details()


@pytest.mark.parametrize("fault", ["invalid residue", "duplicate id"])
def test_a_refused_message_ends_the_stream_after_the_earlier_messages_results(
    stub, sample_fasta, fault
):
    """A bad record in a later message is refused only once the results of the messages before
    it are back: the stream had cancelled the chunks still in flight, and a pipeline sending a
    generator lost them (16 of 32 came back, then the error)."""
    fresh = real_records(sample_fasta, 240, max_length=600)[120 + 60 * (fault == "duplicate id") :]
    good = [pb.Sequence(id=f"{fault[:3]}-{r.id}", sequence=r.sequence) for r in fresh[:48]]
    bad = (
        pb.Sequence(id="bad", sequence="MKT1AA")
        if fault == "invalid residue"
        else pb.Sequence(id=good[0].id, sequence="MKTAA")
    )
    messages = [pb.EmbedStreamRequest(sequences=good[i : i + 8]) for i in range(0, 48, 8)]
    messages.append(pb.EmbedStreamRequest(sequences=[bad]))
    got: list[str] = []

    def read() -> None:
        for reply in stub.EmbedStream(iter(messages), timeout=60):
            if reply.HasField("embedding"):
                got.append(reply.embedding.id)

    error = rpc_error(read)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ("#49" in error.details()) and (fault.split()[0] in error.details())
    assert sorted(got) == sorted(s.id for s in good)


def test_a_stream_numbers_records_across_its_messages(stub, service_records):
    """A bad record in a later message is named by its place in the whole stream (#5 here), and a
    message past the limits is told to send less per message, not to use the stream it is in."""
    records = [pb.Sequence(id=r.id, sequence=r.sequence) for r in service_records[:4]]
    bad = [pb.Sequence(id="gapped", sequence="MKT-AYIAK")]
    messages = [
        pb.EmbedStreamRequest(sequences=records[:2]),
        pb.EmbedStreamRequest(sequences=records[2:] + bad),
    ]
    error = rpc_error(lambda: list(stub.EmbedStream(iter(messages), timeout=30)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(
        "request stream: record 'gapped' (#5) at position 4: invalid residue '-'"
    )  # as a duplicate id in a stream is named
    assert "on_invalid skip drops the record" in error.details()
    assert "gaps strip" not in error.details()  # EmbedOptions has no gaps field
    many = pb.EmbedStreamRequest(sequences=[pb.Sequence(sequence="MKV")] * 17)
    error = rpc_error(lambda: list(stub.EmbedStream(iter([many]), timeout=30)))
    assert error.details() == (
        "17 sequences in one stream message; the limit is 16 (max_sequences): send fewer per "
        "message (the SDK: a smaller chunk)"
    )


@pytest.mark.parametrize(
    ("sequence", "said", "advice"),
    [
        ("", "record 'q' (#2): empty record (no residues)", None),
        ("MKT*AYIAK", "record 'q' (#2) at position 4: invalid residue '*'", "on_invalid skip"),
    ],
)
def test_embed_advises_only_the_options_a_request_has(
    stub, service_records, sequence, said, advice
):
    """Embed's advice names on_invalid, which EmbedOptions has, and never on_empty, on_duplicate
    or gaps, which it has not."""
    request = request_for(service_records[:1])
    request.sequences.add(id="q", sequence=sequence)
    error = rpc_error(stub.Embed, request, timeout=10)
    assert said in error.details(), error.details()
    assert (advice in error.details()) if advice else ";" not in error.details()
    assert not any(f in error.details() for f in ("on_empty", "on_duplicate", "gaps strip"))


def test_list_models(stub, service_model):
    (info,) = stub.ListModels(pb.ListModelsRequest(), timeout=10).models
    assert (info.name, info.sha256, info.embed_dim) == (
        service_model.name,
        service_model.sha256,
        64,
    )
    assert info.is_default and info.max_residues == 1022
    assert info.default_layer == service_model.default_layer
    assert info.recommended_pooling == ""  # the tiny model's card recommends none


def test_invalid_residue_names_index_id_and_position(stub, service_records):
    request = request_for(service_records[:1])
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


def test_cache_hits_and_misses_mix_in_one_request(server, stub, service_model, sample_fasta):
    fresh = real_records(sample_fasta, 60, max_length=300)[-4:]
    first = stub.Embed(request_for(fresh[:2]), timeout=30)
    mixed = stub.Embed(request_for(fresh), timeout=30)
    assert [e.cached for e in mixed.embeddings] == [True, True, False, False]
    assert mixed.embeddings[0].vector == first.embeddings[0].vector
    registry = server[2]
    assert registry.get_sample_value("protssl_embeddings_total", {"source": "cached"}) >= 2
    assert 0 < registry.get_sample_value("protssl_cache_hit_ratio") < 1


def test_cache_through_on_sqlite_and_postgresql(service_model, service_records, store_url):
    with (
        running_server(service_model, store=True, database_url=store_url) as (
            _,
            address,
            _registry,
        ),
        grpc.insecure_channel(address) as ch,
    ):
        stub = pb_grpc.EmbeddingServiceStub(ch)
        first = stub.Embed(request_for(service_records[:4]), timeout=60)
        again = stub.Embed(request_for(service_records[:4]), timeout=60)
    assert not any(e.cached for e in first.embeddings) and all(e.cached for e in again.embeddings)
    assert [e.vector for e in again.embeddings] == [e.vector for e in first.embeddings]


def test_an_int8_server_never_serves_the_float32_vectors_cached_beside_its_own(
    service_model, service_model_dir, service_records, sqlite_url
):
    """One store, one model file: a float32 server fills it, an int8 one computes and caches its own."""
    request = request_for(service_records[:4])
    answers = {}
    for dtype in ("float32", "int8", "int8"):
        model = service_model if dtype == "float32" else load_model(service_model_dir, dtype="int8")
        with (
            running_server(model, store=True, database_url=sqlite_url) as (_, address, _r),
            grpc.insecure_channel(address) as ch,
        ):
            stub = pb_grpc.EmbeddingServiceStub(ch)
            (info,) = stub.ListModels(pb.ListModelsRequest(), timeout=10).models
            response = stub.Embed(request, timeout=60)
        assert info.compute_dtype == dtype
        assert {e.provenance.compute_dtype for e in response.embeddings} == {dtype}
        answers.setdefault(dtype, []).append(response)
    assert not any(e.cached for e in answers["int8"][0].embeddings)
    assert all(e.cached for e in answers["int8"][1].embeddings)
    want = vectors(answers["float32"][0])
    for name, got in vectors(answers["int8"][0]).items():
        cosine = got @ want[name] / np.linalg.norm(got) / np.linalg.norm(want[name])
        assert 0.999 <= cosine < 1.0, name


def test_per_residue_past_the_message_size_is_refused_up_front(service_model):
    with (
        running_server(service_model, max_message_mb=1) as (_, address, registry),
        grpc.insecure_channel(address) as ch,
    ):
        request = big_request(8, 1000)  # 8,000 x 64 float32 = 2 MiB of per-residue vectors
        request.options.pooling = pb.POOLING_PER_RESIDUE
        error = rpc_error(pb_grpc.EmbeddingServiceStub(ch).Embed, request, timeout=30)
        assert registry.get_sample_value("protssl_forward_tokens_count") == 0  # nothing ran
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_message_mb" in error.details() and "EmbedStream" in error.details()


def test_unknown_enum_values_are_invalid_argument(stub, service_records):
    error = rpc_error(stub.Embed, request_for(service_records[:1], pooling=9), timeout=10)
    assert (
        error.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown pooling 9" in error.details()
    )
    error = rpc_error(stub.Embed, request_for(service_records[:1], dtype=7), timeout=10)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "vector dtype 7" in error.details()


def test_unknown_model_and_layer(stub, service_records):
    error = rpc_error(stub.Embed, request_for(service_records[:1], model="esm2-650m"), timeout=10)
    assert error.code() == grpc.StatusCode.NOT_FOUND and "tiny-test" in error.details()
    error = rpc_error(stub.Embed, request_for(service_records[:1], layer=9), timeout=10)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "layer 9" in error.details()


@pytest.fixture(scope="module")
def pfam(shared_file: Callable[..., Path]) -> dict[str, list[ProteinRecord]]:
    """Real Pfam seed domains by family (label=...)."""
    by_family: dict[str, list[ProteinRecord]] = {}
    for record in read_fasta(shared_file("families/pfam_seed_small.fasta")):
        by_family.setdefault(record.labels[0], []).append(record)
    return by_family


def test_classifier_lifecycle_and_classify_equals_in_process(
    channel, service_model, pfam, service_db_url
):
    classifiers = pb_grpc.ClassifierServiceStub(channel)
    families = ["fn3", "RRM_1", "Pkinase"]
    support = [r for f in families for r in pfam[f][:4]]
    queries = [r for f in families for r in pfam[f][4:6]]

    def examples(service_records: list[ProteinRecord]) -> list[pb.LabelledSequence]:
        return [
            pb.LabelledSequence(id=r.id, sequence=r.sequence, labels=r.labels)
            for r in service_records
        ]

    created = classifiers.CreateClassifier(
        pb.CreateClassifierRequest(name="families", examples=examples(support[:9])), timeout=120
    )
    assert (created.name, created.version, created.examples) == ("families", 1, 9)
    assert created.pooling == pb.POOLING_MEAN  # unset, and the tiny card recommends none
    assert (
        created.method == pb.CLASSIFIER_METHOD_HYBRID
    )  # unset: auto, with the support's sequences
    assert sorted(created.labels) == sorted(families)
    assert created.model_sha256 == service_model.sha256
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
    expected = fewshot.classify_records(classifier, queries, service_model)
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


def test_a_segments_classifier_classifies_with_segments_vectors(
    channel, service_model, pfam, service_db_url
):
    classifiers = pb_grpc.ClassifierServiceStub(channel)
    families = ["fn3", "RRM_1", "Pkinase"]
    support = [
        pb.LabelledSequence(id=r.id, sequence=r.sequence, labels=r.labels)
        for f in families
        for r in pfam[f][:4]
    ]
    queries = [r for f in families for r in pfam[f][4:6]]
    created = classifiers.CreateClassifier(
        pb.CreateClassifierRequest(
            name="by-stretch", examples=support, pooling=pb.POOLING_SEGMENTS
        ),
        timeout=120,
    )
    assert created.pooling == pb.POOLING_SEGMENTS
    held = classifiers.AddExamples(  # an example it holds as it is: no new version
        pb.AddExamplesRequest(name="by-stretch", examples=support[:1]), timeout=120
    )
    assert held.version == 1
    more = pfam["fn3"][6]
    added = classifiers.AddExamples(
        pb.AddExamplesRequest(
            name="by-stretch",
            examples=[pb.LabelledSequence(id=more.id, sequence=more.sequence, labels=more.labels)],
        ),
        timeout=120,
    )
    assert (added.version, added.pooling) == (2, pb.POOLING_SEGMENTS)
    reply = classifiers.Classify(
        pb.ClassifyRequest(
            name="by-stretch",
            sequences=[pb.Sequence(id=r.id, sequence=r.sequence) for r in queries],
        ),
        timeout=60,
    )
    with Store(StoreConfig(url=service_db_url)) as store:
        classifier, _ = fewshot.load_classifier(store, "by-stretch")
    assert classifier.info["pooling"] == "segments"
    expected = fewshot.classify_records(classifier, queries, service_model)
    assert [p.top[0].label for p in reply.predictions] == [p.top_label for p in expected]
    error = rpc_error(
        classifiers.CreateClassifier,
        pb.CreateClassifierRequest(
            name="per-residue", examples=support, pooling=pb.POOLING_PER_RESIDUE
        ),
        timeout=60,
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "pooled" in error.details()
    classifiers.DeleteClassifier(pb.DeleteClassifierRequest(name="by-stretch"), timeout=10)


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


def test_an_example_without_a_label_or_with_a_tab_in_one_is_named_without_fasta_advice(
    channel, pfam
):
    """A wire example has no FASTA header: one without labels is named as the example it is, and
    a label with a control character (a tab splits a TSV row) is refused before any fit."""
    classifiers = pb_grpc.ClassifierServiceStub(channel)
    support = [
        pb.LabelledSequence(id=r.id, sequence=r.sequence, labels=r.labels)
        for family in ("fn3", "RRM_1")
        for r in pfam[family][:3]
    ]
    unlabelled = pb.LabelledSequence(id="bare", sequence=pfam["fn3"][3].sequence)
    tabbed = pb.LabelledSequence(id="tabbed", sequence=pfam["fn3"][3].sequence, labels=["a\tb"])
    for extra, words in ((unlabelled, "example 'bare' (#7) has no label"), (tabbed, "'\\t'")):
        error = rpc_error(
            classifiers.CreateClassifier,
            pb.CreateClassifierRequest(name="unlabelled", examples=[*support, extra]),
            timeout=60,
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert words in error.details() and "FASTA" not in error.details(), error.details()


def test_a_classifier_fitted_on_another_model_is_failed_precondition(
    channel, pfam, service_model, service_db_url
):
    """The request is sound; the served model is not the classifier's: FAILED_PRECONDITION (the
    SDK's CheckpointError), naming both models, for Classify and AddExamples alike."""
    support = [r for family in ("fn3", "RRM_1") for r in pfam[family][:3]]
    fitted = fewshot.fit_records(support, service_model, fewshot.FewShotConfig(method="knn"))
    fitted.info.update(model_sha256="0" * 64, model_name="elsewhere")
    with Store(StoreConfig(url=service_db_url)) as store:
        fewshot.save_classifier(store, "other-model", fitted, support)
    classifiers = pb_grpc.ClassifierServiceStub(channel)
    query = pfam["fn3"][3]
    calls = (
        (
            classifiers.Classify,
            pb.ClassifyRequest(
                name="other-model", sequences=[pb.Sequence(id=query.id, sequence=query.sequence)]
            ),
        ),
        (
            classifiers.AddExamples,
            pb.AddExamplesRequest(
                name="other-model",
                examples=[
                    pb.LabelledSequence(id=query.id, sequence=query.sequence, labels=query.labels)
                ],
            ),
        ),
    )
    for method, request in calls:
        error = rpc_error(method, request, timeout=60)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
        assert "was fitted on model elsewhere (000000000000…)" in error.details()
    classifiers.DeleteClassifier(pb.DeleteClassifierRequest(name="other-model"), timeout=10)


def test_classify_numbers_a_chunks_queries_from_its_offset_and_advises_nothing_it_lacks(
    channel, pfam
):
    """A chunk of a longer input (`offset` 40) names its bad query by its place in the whole input,
    without advice: ClassifyRequest has no policy fields to set."""
    classifiers = pb_grpc.ClassifierServiceStub(channel)
    support = [
        pb.LabelledSequence(id=r.id, sequence=r.sequence, labels=r.labels)
        for family in ("fn3", "RRM_1")
        for r in pfam[family][:3]
    ]
    classifiers.CreateClassifier(pb.CreateClassifierRequest(name="numbered", examples=support))
    queries = [pb.Sequence(id="ok", sequence="MKTAYIAK"), pb.Sequence(id="stop", sequence="MK*TA")]
    error = rpc_error(
        classifiers.Classify,
        pb.ClassifyRequest(name="numbered", sequences=queries, offset=40),
        timeout=60,
    )
    assert error.details() == (
        "request: record 'stop' (#42) at position 3: invalid residue '*' (an internal stop codon)"
    )


def _create_hybrid(
    classifiers: pb_grpc.ClassifierServiceStub, name: str, support: list[ProteinRecord]
) -> None:
    """A hybrid classifier fitted over the wire on `support`."""
    created = classifiers.CreateClassifier(
        pb.CreateClassifierRequest(
            name=name,
            method=pb.CLASSIFIER_METHOD_HYBRID,
            examples=[
                pb.LabelledSequence(id=r.id, sequence=r.sequence, labels=r.labels) for r in support
            ],
        ),
        timeout=120,
    )
    assert created.method == pb.CLASSIFIER_METHOD_HYBRID


def test_hybrid_classifier_returns_the_evidence_it_used(
    channel, service_model, pfam, service_db_url
):
    """A close homologue of a support domain rests on alignment, a domain of another family on the
    embedding; the wire says which, as the library does in process."""
    classifiers = pb_grpc.ClassifierServiceStub(channel)
    families = ["fn3", "RRM_1", "Pkinase"]
    support = [r for f in families for r in pfam[f][:4]]
    other = next(f for f in sorted(pfam) if f not in families)
    source = support[5].sequence
    close = "".join("A" if i % 9 == 0 and c != "A" else c for i, c in enumerate(source))
    queries = [ProteinRecord("close", close), ProteinRecord("other", pfam[other][0].sequence)]
    _create_hybrid(classifiers, "hybrid", support)
    reply = classifiers.Classify(
        pb.ClassifyRequest(
            name="hybrid", sequences=[pb.Sequence(id=r.id, sequence=r.sequence) for r in queries]
        ),
        timeout=60,
    )
    got = {p.id: p for p in reply.predictions}
    assert got["close"].evidence == "alignment"
    assert got["close"].top[0].label == support[5].labels[0]
    assert got["other"].evidence == "embedding"
    with Store(StoreConfig(url=service_db_url)) as store:
        classifier, _ = fewshot.load_classifier(store, "hybrid")
    want = fewshot.classify_records(classifier, queries, service_model)
    assert [p.evidence for p in reply.predictions] == [p.evidence for p in want]
    classifiers.DeleteClassifier(pb.DeleteClassifierRequest(name="hybrid"), timeout=10)


def test_a_hybrid_classify_stops_aligning_once_its_deadline_passes(
    fitting_server, pfam, sample_fasta, caplog
):
    """A hybrid classifier aligns each query after its vector comes back; a call whose deadline
    passed went on aligning every query for nobody (the Embed path drops such work). Now it stops
    at the next search: its log line says the handler ended early, and when."""
    with grpc.insecure_channel(fitting_server[0]) as channel:  # default limits: 128 a call
        classifiers = pb_grpc.ClassifierServiceStub(channel)
        support = [r for f in ("fn3", "RRM_1", "Pkinase") for r in pfam[f][:4]]
        _create_hybrid(classifiers, "patient", support)
        long = [r for r in real_records(sample_fasta, 2000) if 400 <= len(r) <= 1200][:128]
        assert len(long) == 128  # a search's cost grows with the query: ~128 x 15 ms of alignment
        request = pb.ClassifyRequest(
            name="patient", sequences=[pb.Sequence(id=r.id, sequence=r.sequence) for r in long]
        )
        whole = []
        for _ in range(2):  # the first also puts the queries' vectors in the cache
            start = time.perf_counter()
            classifiers.Classify(request, timeout=120)
            whole.append(time.perf_counter() - start)
        full = min(whole)
        with caplog.at_level(logging.INFO, logger="service.calls"):
            error = rpc_error(classifiers.Classify, request, timeout=full / 5)
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            line, handler_s = _expired(caplog, "Classify")
        assert "message='the call ended first (DEADLINE_EXCEEDED)'" in line  # the handler raised
        assert handler_s < 0.6 * full, (handler_s, whole)
        classifiers.DeleteClassifier(pb.DeleteClassifierRequest(name="patient"), timeout=10)


def _expired(caplog: pytest.LogCaptureFixture, method: str) -> tuple[str, float]:
    """The server's log line for the `method` call that ended DEADLINE_EXCEEDED (waited for: the
    handler may run on past the deadline) and the seconds its handler ran."""

    def logged() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "service.calls" and f"/{method} code=DEADLINE_EXCEEDED" in r.getMessage()
        ]

    deadline = time.monotonic() + 60
    while not logged() and time.monotonic() < deadline:
        time.sleep(0.05)
    (line,) = logged()
    return line, float(re.search(r"latency_ms=([\d.]+)", line).group(1)) / 1000


@pytest.fixture(scope="module")
def fitting_server(
    service_model: LoadedModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """A server with the default request limits (a support of 72 fits in one request) and its
    store's URL."""
    url = f"sqlite:///{tmp_path_factory.mktemp('fitting') / 'store.sqlite3'}"
    with running_server(service_model, store=True, database_url=url) as (_, address, _):
        yield address, url


def _create_request(name: str, support: list[ProteinRecord]) -> pb.CreateClassifierRequest:
    """The default head (auto: hybrid, the sequences being at hand) on `support`."""
    return pb.CreateClassifierRequest(
        name=name,
        new_version=True,
        examples=[
            pb.LabelledSequence(id=r.id, sequence=r.sequence, labels=r.labels) for r in support
        ],
    )


def test_embed_calls_are_answered_while_a_classifier_fits_and_its_vectors_are_cached(
    fitting_server, service_model, sample_fasta
):
    """A fit ran on the model worker whole, its hybrid alignments included (seconds to minutes):
    every Embed call waited for it. Now only its embedding steps go there, taking turns with other
    calls' batches, and its vectors go through the store's cache like every other face's."""
    address, url = fitting_server
    support = list(read_fasta(EXAMPLES / "labelled.fasta"))  # 72 transposases, 6 families
    request = _create_request("busy", support)
    with grpc.insecure_channel(address) as channel:
        classifiers = pb_grpc.ClassifierServiceStub(channel)
        embedder = pb_grpc.EmbeddingServiceStub(channel)
        first = classifiers.CreateClassifier(request, timeout=300)
        layers = fewshot.candidate_layers(service_model.encoder.config.num_layers)
        with Store(StoreConfig(url=url)) as store:
            for layer in layers:  # a new version embeds nothing again
                config = EmbedConfig(layer=layer, pooling=POOLING.name(first.pooling))
                cached = cached_embeddings(support, service_model, config, store.embeddings)
                assert all(hit is not None for hit in cached), layer

        queries = iter(real_records(sample_fasta, 400, max_length=600))
        fitted: list[float] = []

        def fit() -> None:
            start = time.perf_counter()
            classifiers.CreateClassifier(request, timeout=300)
            fitted.append(time.perf_counter() - start)

        fitting = threading.Thread(target=fit)
        fitting.start()
        waits = []
        while fitting.is_alive():
            record = next(queries)  # not cached: a forward on the model worker
            start = time.perf_counter()
            embedder.Embed(request_for([record]), timeout=300)
            waits.append(time.perf_counter() - start)
        fitting.join()
    assert len(waits) >= 5, (waits, fitted)
    assert max(waits) < 0.3 * fitted[0], (max(waits), fitted)


def test_a_fit_stops_once_its_deadline_passes(fitting_server, caplog):
    """An expired CreateClassifier went on fitting on the model worker for nobody (the handler
    answered at the deadline); now the fit ends at its next step and its CPU use with it."""
    address, _ = fitting_server
    support = list(read_fasta(EXAMPLES / "labelled.fasta"))
    request = _create_request("late", support)
    with grpc.insecure_channel(address) as channel:
        classifiers = pb_grpc.ClassifierServiceStub(channel)
        classifiers.CreateClassifier(request, timeout=300)  # the vectors cached: fits align
        start = time.perf_counter()
        classifiers.CreateClassifier(request, timeout=300)
        full = time.perf_counter() - start
        with caplog.at_level(logging.INFO, logger="service.calls"):
            error = rpc_error(classifiers.CreateClassifier, request, timeout=full / 5)
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            time.sleep(full / 5)  # the searches under way when it expired end
            cpu, start = time.process_time(), time.perf_counter()
            time.sleep(full / 2)  # the server is in this process: what it burns for nobody
            cpu, wall = time.process_time() - cpu, time.perf_counter() - start
            line, handler_s = _expired(caplog, "CreateClassifier")
        assert "message='the call ended first (DEADLINE_EXCEEDED)'" in line  # the handler raised
        assert handler_s < 0.6 * full, (handler_s, full)
        assert cpu < 0.5 * wall, (cpu, wall, full)  # before: 2 x wall, both cores aligning
        latest = classifiers.GetClassifier(pb.GetClassifierRequest(name="late"), timeout=10)
        assert latest.version == 2  # the expired fit saved nothing


def test_a_fit_that_expires_while_embedding_ends_cleanly_and_keeps_its_vectors(
    fitting_server, service_model, sample_fasta, caplog
):
    """A deadline that passes while one of the fit's forwards runs on the model worker: the
    handler closed the embedding while the worker was still running it (ValueError: generator
    already executing, logged with its traceback, or INTERNAL to the client). Now it waits for
    that forward, ends DEADLINE_EXCEEDED, and the vectors of the forwards done stay in the cache.

    The deadline is half the time the same embedding takes here; a call that finished first (the
    server quicker than that timing) or had cached nothing yet is tried again on new records with
    half or twice the deadline, until one expired part way."""
    address, url = fitting_server
    pool = real_records(sample_fasta, 300, max_length=1000)[60:252]
    layers = fewshot.candidate_layers(service_model.encoder.config.num_layers)
    config = EmbedConfig(layer=layers[-1], pooling="mean")
    part_way = []
    with grpc.insecure_channel(address) as channel:
        classifiers = pb_grpc.ClassifierServiceStub(channel)
        for attempt in range(4):
            examples = [
                ProteinRecord(r.id, r.sequence, (f"L{i % 2}",))
                for i, r in enumerate(pool[attempt * 48 : (attempt + 1) * 48])
            ]
            if attempt == 0:
                start = time.perf_counter()
                fewshot.embed_for_fewshot(examples, service_model, layers)  # the same work
                deadline = (time.perf_counter() - start) / 2
            caplog.clear()
            request = _create_request(f"expired-{attempt}", examples)
            with caplog.at_level(logging.INFO):
                try:
                    classifiers.CreateClassifier(request, timeout=deadline)
                    finished = True
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error.details()
                    _expired(caplog, "CreateClassifier")  # logged DEADLINE_EXCEEDED
                    finished = False
            raised = [r.getMessage() for r in caplog.records if r.exc_info]
            assert not raised, raised
            with Store(StoreConfig(url=url)) as store:
                hits = cached_embeddings(examples, service_model, config, store.embeddings)
            kept = sum(hit is not None for hit in hits)
            if not finished and 0 < kept < len(examples):
                part_way.append(kept)
                break
            deadline = deadline / 2 if finished or kept == len(examples) else deadline * 2
    assert part_way, "no call expired part way through its embedding"
