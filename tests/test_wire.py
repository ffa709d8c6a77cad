"""protssl.wire: every proto enum value has one domain name, and each message decodes to what was encoded."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from protssl import wire
from protssl._proto import protssl_pb2 as pb
from protssl.checkpoint import load_model
from protssl.embedding import POOLINGS, Embedding, Provenance
from protssl.errors import InvalidInputError
from protssl.fewshot import CHOICES, Prediction
from protssl.store import StoredClassifier
from protssl.store.config import VECTOR_DTYPES

PROVENANCE = Provenance(
    model_name="tiny-test",
    model_sha256="ab" * 32,
    layer=2,
    pooling="mean",
    dtype="bfloat16",
    window_policy="window:62:16",
    windowed=False,
    windows=1,
)


def test_every_enum_value_has_one_name_and_an_unset_field_means_the_default() -> None:
    for enum, proto, names in (
        (wire.POOLING, pb.Pooling, POOLINGS),
        (wire.VECTOR_DTYPE, pb.VectorDType, VECTOR_DTYPES),
        (wire.CLASSIFIER_METHOD, pb.ClassifierMethod, CHOICES),
    ):
        assert tuple(enum.values) == names  # the wire names are the library's
        named_zero = enum.default not in POOLINGS + VECTOR_DTYPES  # `auto` is the unset value
        assert sorted(enum.values.values()) == sorted(
            v for v in proto.values() if v != 0 or named_zero
        )
        for name, value in enum.values.items():
            assert (enum.name(value), enum.value(name)) == (name, value)
    assert (wire.POOLING.name(0), wire.VECTOR_DTYPE.name(0), wire.CLASSIFIER_METHOD.name(0)) == (
        "mean",
        "float32",
        "auto",
    )
    assert wire.CLASSIFIER_METHOD.value("auto") == pb.CLASSIFIER_METHOD_UNSPECIFIED


def test_unknown_enum_names_and_values_are_the_callers_error() -> None:
    with pytest.raises(InvalidInputError, match="unknown pooling 9"):
        wire.POOLING.name(9)
    with pytest.raises(InvalidInputError, match="unknown vector dtype 7"):
        wire.VECTOR_DTYPE.name(7)
    with pytest.raises(
        InvalidInputError, match="pooling must be one of mean, bos, segments, per-residue"
    ):
        wire.POOLING.value("max")
    with pytest.raises(InvalidInputError, match="classifier method must be one of auto, prototype"):
        wire.CLASSIFIER_METHOD.value("svm")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_embeddings_decode_to_what_was_encoded(dtype: str) -> None:
    rng = np.random.default_rng(0)
    pooled = Embedding("a", 7, rng.standard_normal(16).astype(np.float32), PROVENANCE)
    per_residue = Embedding(
        "b",
        3,
        rng.standard_normal((3, 16)).astype(np.float32),
        Provenance(**{**PROVENANCE.as_dict(), "pooling": "per-residue"}),  # type: ignore[arg-type]
    )
    decode = wire.EmbeddingDecoder()
    for embedding, cached in ((pooled, True), (per_residue, False)):
        message = wire.embedding_to_proto(embedding, cached=cached, dtype=dtype)
        assert message.dtype == wire.VECTOR_DTYPE.value(dtype)
        got, got_cached = decode(pb.Embedding.FromString(message.SerializeToString()))
        assert (got.id, got.length, got.provenance, got_cached) == (
            embedding.id,
            embedding.length,
            embedding.provenance,
            cached,
        )
        assert got.vector.dtype == np.float32 and got.vector.shape == embedding.vector.shape
        expected = embedding.vector.astype(dtype).astype(np.float32)
        assert got.vector.tobytes() == expected.tobytes()


def test_consecutive_equal_provenances_decode_to_one_object() -> None:
    vector = np.ones(4, dtype=np.float32)
    messages = [
        wire.embedding_to_proto(Embedding(i, 1, vector, PROVENANCE), cached=False, dtype="float32")
        for i in ("a", "b")
    ]
    decode = wire.EmbeddingDecoder()
    first, second = (decode(m)[0] for m in messages)
    assert first.provenance is second.provenance


def test_model_classifier_and_prediction_messages_round_trip(tiny_model_dir: Path) -> None:
    model = load_model(tiny_model_dir, dtype="float32")
    config = model.encoder.config
    assert wire.model_info_from_proto(
        wire.model_info_to_proto(model, is_default=True)
    ) == wire.ModelInfo(
        name="tiny-test",
        sha256=model.sha256,
        num_layers=config.num_layers,
        embed_dim=config.embed_dim,
        max_residues=config.max_residues,
        compute_dtype="float32",
        parameters=config.num_parameters(),
        is_default=True,
        default_layer=config.num_layers,
        recommended_pooling="",
    )
    created = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    stored = StoredClassifier(
        id=4,
        name="families",
        version=2,
        model_sha256=model.sha256,
        method="knn",
        params={"classes": ["fn3", "RRM_1"]},
        blob=b"",
        examples=(("a", "MKV", ("fn3",)), ("b", "MKL", ("RRM_1",))),
        metrics={"held_out": "leave-one-out", "top1_accuracy": 0.5, "classes": 2, "layer": 1},
        created_at=created,
    )
    assert wire.classifier_info_from_proto(
        wire.classifier_info_to_proto(stored)
    ) == wire.ClassifierInfo(
        name="families",
        version=2,
        method="knn",
        model_sha256=model.sha256,
        labels=("fn3", "RRM_1"),
        examples=2,
        metrics={
            "held_out": "leave-one-out",
            "top1_accuracy": 0.5,
            "answered_rate": 0.0,
            "accuracy_on_answered": None,  # unset: it answered none (or an older classifier)
            "examples": 2,
            "classes": 2,
            "layer": 1,
            "layer_scores": {},
            "best_precision": None,  # a classifier fitted before it was kept, not a 0.0
        },
        created_at=created.isoformat(),
    )
    scored = dataclasses.replace(
        stored,
        metrics={**stored.metrics, "layer_scores": {"1": 0.5, "2": 0.25}, "best_precision": 0.8},
    )
    got = wire.classifier_info_from_proto(wire.classifier_info_to_proto(scored)).metrics
    assert (got["layer_scores"], got["best_precision"]) == ({1: 0.5, 2: 0.25}, 0.8)
    # a fitted classifier has a head: an unset method is a server that did not say, not `auto`
    unsaid = wire.classifier_info_to_proto(stored)
    unsaid.ClearField("method")
    assert wire.classifier_info_from_proto(unsaid).method == "unspecified"
    # the cuts a decision is held to travel too (unset above: read as a server without them)
    cuts = {
        "threshold": 0.4,
        "fallback_threshold": None,
        "ood_threshold": 0.85,
        "multi_label_ratio": 0.5,
        "levels": [
            {"depth": 3, "parents": ["1.1.1.-", "2.1.1.-"], "threshold": 0.6},
            {"depth": 2, "parents": ["1.1.-.-", "2.1.-.-"], "threshold": 0.7},
        ],
    }
    with_cuts = dataclasses.replace(stored, params={**stored.params, **cuts})
    got = wire.classifier_info_from_proto(wire.classifier_info_to_proto(with_cuts))
    assert (got.threshold, got.fallback_threshold, got.ood_threshold, got.multi_label_ratio) == (
        0.4,
        None,
        0.85,
        0.5,
    )
    assert got.back_off_levels == (
        {"depth": 3, "parents": 2, "threshold": 0.6},
        {"depth": 2, "parents": 2, "threshold": 0.7},
    )
    answered = Prediction(
        "q1", ("fn3",), 0.75, "answered", "fn3", 0.75, 0.9, (("fn3", 0.75),), "alignment"
    )
    abstained = Prediction(
        "q2", ("unknown",), 0.5, "unknown", "RRM_1", 0.5, 0.1, (), reason="out_of_distribution"
    )
    assert [
        wire.prediction_from_proto(wire.prediction_to_proto(p)) for p in (answered, abstained)
    ] == [
        wire.ClientPrediction(
            "q1", "fn3", 0.75, "answered", False, (("fn3", 0.75),), 0.9, "alignment"
        ),
        wire.ClientPrediction(
            "q2", "", 0.5, "unknown", True, (), 0.1, "embedding", "out_of_distribution"
        ),
    ]
    # back as `classify_records` gives it (what `protssl classify --server` writes)
    back = wire.prediction_from_proto(wire.prediction_to_proto(abstained)).as_prediction()
    assert (back.labels, back.probability, back.reason) == (
        ("unknown",),
        0.5,
        "out_of_distribution",
    )
    assert (
        wire.prediction_from_proto(wire.prediction_to_proto(answered)).as_prediction().reason
        is None
    )
