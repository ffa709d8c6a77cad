"""protobuf ↔ protssl domain types, both ways: where the SDK and the server meet the wire.

Each proto enum is one `WireEnum` (its values by domain name, what an unset field means); each
message has its encoder and decoder side by side. Messages and domain types name their fields
alike, so codecs copy fields by name (`_to_message`, `_from_message`) and spell out what differs.
Only `protssl.client` and `service/` import this module or `protssl._proto`: the core never sees
protobuf. A wire value this side does not know is the caller's error (InvalidInputError).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
from google.protobuf.message import Message

from protssl._proto import protssl_pb2 as pb
from protssl.embedding import Embedding, Provenance
from protssl.errors import InvalidInputError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from protssl.auth import StoredToken
    from protssl.checkpoint import LoadedModel
    from protssl.fewshot import Prediction
    from protssl.store import StoredClassifier

__all__ = [
    "ACCEPTED_KEY",
    "CLASSIFIER_METHOD",
    "ERROR_KIND_KEY",
    "ON_INVALID",
    "POOLING",
    "VECTOR_DTYPE",
    "ClassifierInfo",
    "ClientPrediction",
    "EmbeddingDecoder",
    "ModelInfo",
    "TokenInfo",
    "WireEnum",
    "classifier_info_from_proto",
    "classifier_info_to_proto",
    "embedding_to_proto",
    "model_info_from_proto",
    "model_info_to_proto",
    "prediction_from_proto",
    "prediction_to_proto",
    "provenance_to_proto",
    "token_info_from_proto",
    "token_info_to_proto",
]

ERROR_KIND_KEY = "protssl-error-kind"
"""Trailing metadata of a failed call: the class name of the protssl error the server raised."""

ACCEPTED_KEY = "protssl-accepted"
"""Initial metadata a server sends as it starts a long call's work (a stream, a classify): a call
that then fails without an answer lost a server that was there, not one never reached."""


E = TypeVar("E", bound=int)
D = TypeVar("D", bound="DataclassInstance")
M = TypeVar("M", bound=Message)


class WireEnum(Generic[E]):
    """One proto enum: its wire values by domain name, and the name an unset (zero) field means."""

    def __init__(self, what: str, values: Mapping[str, E], default: str) -> None:
        self.what = what
        self.values = dict(values)
        self.names = {value: name for name, value in values.items()}
        self.default = default

    def value(self, name: str) -> E:
        """The wire value of a domain name; an unknown name is the caller's error."""
        if name not in self.values:
            raise InvalidInputError(
                f"{self.what} must be one of {', '.join(self.values)}, not {name!r}"
            )
        return self.values[name]

    def name(self, value: int) -> str:
        """The domain name of a wire value (zero: the default); an unknown value is the caller's error."""
        if value == 0:
            return self.default
        if value not in self.names:
            raise InvalidInputError(f"unknown {self.what} {value}")
        return self.names[value]


POOLING = WireEnum(
    "pooling",
    {
        "mean": pb.POOLING_MEAN,
        "bos": pb.POOLING_BOS,
        "segments": pb.POOLING_SEGMENTS,
        "per-residue": pb.POOLING_PER_RESIDUE,
    },
    default="mean",
)
VECTOR_DTYPE = WireEnum(
    "vector dtype",
    {"float32": pb.VECTOR_DTYPE_FLOAT32, "float16": pb.VECTOR_DTYPE_FLOAT16},
    default="float32",
)
CLASSIFIER_METHOD = WireEnum(
    "classifier method",
    {
        "auto": pb.CLASSIFIER_METHOD_UNSPECIFIED,
        "prototype": pb.CLASSIFIER_METHOD_PROTOTYPE,
        "knn": pb.CLASSIFIER_METHOD_KNN,
        "linear": pb.CLASSIFIER_METHOD_LINEAR,
        "contrastive": pb.CLASSIFIER_METHOD_CONTRASTIVE,
        "hybrid": pb.CLASSIFIER_METHOD_HYBRID,
    },
    default="auto",
)
ON_INVALID = WireEnum(
    "on_invalid",
    {"fail": pb.ON_INVALID_FAIL, "skip": pb.ON_INVALID_SKIP, "replace": pb.ON_INVALID_REPLACE},
    default="fail",
)
_PACKED: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
"""How each vector dtype is packed on the wire: little-endian."""


# --- embeddings ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def provenance_to_proto(p: Provenance) -> pb.Provenance:
    """A provenance as protobuf, built once: a server's vectors share a handful of provenances.

    The message is shared: `pb.Embedding(provenance=...)` copies it, and nothing may edit it.
    """
    return _to_message(pb.Provenance, p, compute_dtype=p.dtype)


def embedding_to_proto(embedding: Embedding, *, cached: bool, dtype: str) -> pb.Embedding:
    """One embedding as a message, its vector packed little-endian in `dtype` (float32, float16)."""
    return pb.Embedding(
        id=embedding.id,
        length=embedding.length,
        dim=int(embedding.vector.shape[-1]),
        dtype=VECTOR_DTYPE.value(dtype),
        vector=embedding.vector.astype(_PACKED[dtype], copy=False).tobytes(),
        cached=cached,
        provenance=provenance_to_proto(embedding.provenance),
    )


class EmbeddingDecoder:
    """Embedding messages → (`Embedding`, cached); consecutive equal provenances share one object.

    A response's embeddings nearly always share one provenance, and building it field by field was
    most of the SDK's decoding time (1.5 of 2.7 ms client CPU for 500 cached vectors).
    """

    def __init__(self) -> None:
        self._message: pb.Provenance | None = None
        self._provenance: Provenance | None = None

    def provenance(self, p: pb.Provenance) -> Provenance:
        if self._provenance is None or p != self._message:
            self._message = p
            self._provenance = _from_message(Provenance, p, dtype=p.compute_dtype)
        return self._provenance

    def __call__(self, message: pb.Embedding) -> tuple[Embedding, bool]:
        provenance = self.provenance(message.provenance)
        packed = _PACKED[VECTOR_DTYPE.name(message.dtype)]
        vector = np.frombuffer(message.vector, dtype=packed).astype(np.float32)
        if provenance.pooling == "per-residue":
            vector = vector.reshape(message.length, message.dim)
        return Embedding(message.id, message.length, vector, provenance), message.cached


# --- models -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """A model the server serves."""

    name: str
    sha256: str
    """Of the weights: what every vector's provenance names."""
    num_layers: int
    embed_dim: int
    max_residues: int
    """Residues in one window; longer sequences are embedded in overlapping windows."""
    compute_dtype: str
    """What the model runs in: float32 or bfloat16."""
    parameters: int
    is_default: bool
    """Served when a request names no model."""
    default_layer: int
    """Served when a request names no layer."""
    recommended_pooling: str
    """The pooling the model's card recommends (`protssl analyze`); empty when it names none."""


def model_info_to_proto(model: LoadedModel, *, is_default: bool) -> pb.ModelInfo:
    """The model's name and sha256, its config's num_layers, embed_dim and max_residues, and the
    layer and pooling its card recommends."""
    config = model.encoder.config
    return _to_message(
        pb.ModelInfo,
        config,
        name=model.name,
        sha256=model.sha256,
        compute_dtype=model.dtype_name,
        parameters=config.num_parameters(),
        is_default=is_default,
        default_layer=model.default_layer,
        recommended_pooling=model.recommended_pooling or "",
    )


def model_info_from_proto(m: pb.ModelInfo) -> ModelInfo:
    return _from_message(ModelInfo, m)


# --- classifiers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassifierInfo:
    """One version of a named classifier on the server, with its held-out support metrics."""

    name: str
    version: int
    """1 for the first fit; each refit under the same name adds one."""
    method: str
    """prototype, knn, linear or contrastive."""
    model_sha256: str
    """The model it was fitted on; it classifies with that model only."""
    labels: tuple[str, ...]
    examples: int
    """Support records it was fitted on."""
    metrics: dict[str, Any]
    """Held-out support metrics: held_out, top1_accuracy, answered_rate, accuracy_on_answered,
    layer_scores (layer: top-1), best_precision (None from older classifiers or servers), ..."""
    created_at: str
    """ISO 8601."""
    pooling: str = "mean"
    """Of the vectors it was fitted on, and classifies."""
    threshold: float | None = None
    """The confidence cut of an answer (hybrid: of answers an alignment hit decided); None from a
    server from before the cuts were sent, as are the cuts below."""
    fallback_threshold: float | None = None
    """Hybrid: the cut of answers without alignment evidence; None for the other methods."""
    ood_threshold: float | None = None
    """The out-of-distribution gate: a query whose nearest support example's cosine is under it
    is unknown."""
    multi_label_ratio: float | None = None
    """Extra labels at >= this fraction of the top probability; None: the top label only."""
    back_off_levels: tuple[dict[str, Any], ...] = ()
    """The parents dotted labels back off to, deepest first: `depth` (label parts kept),
    `parents` (labels at it), `threshold` (the cut on a parent's summed probability)."""


def classifier_info_to_proto(stored: StoredClassifier) -> pb.ClassifierInfo:
    """A stored classifier version as its protobuf summary."""
    metrics, cuts = stored.metrics, stored.cuts
    return pb.ClassifierInfo(
        id=str(stored.id),
        name=stored.name,
        version=stored.version,
        method=CLASSIFIER_METHOD.values.get(stored.method, pb.CLASSIFIER_METHOD_UNSPECIFIED),
        model_sha256=stored.model_sha256,
        labels=list(stored.classes),
        examples=len(stored.examples),
        metrics=pb.ClassifierMetrics(
            held_out=str(metrics.get("held_out", "")),
            top1_accuracy=float(metrics.get("top1_accuracy", 0.0)),
            answered_rate=float(metrics.get("answered_rate", 0.0)),
            accuracy_on_answered=metrics.get("accuracy_on_answered"),
            examples=int(metrics.get("examples", len(stored.examples))),
            classes=int(metrics.get("classes", 0)),
            layer=int(metrics.get("layer", 0)),
            layer_scores={int(k): float(v) for k, v in metrics.get("layer_scores", {}).items()},
            best_precision=metrics.get("best_precision"),
        ),
        created_at=stored.created_at.isoformat(),
        pooling=POOLING.value(stored.pooling),
        threshold=cuts["threshold"],
        fallback_threshold=cuts["fallback_threshold"],
        ood_threshold=cuts["ood_threshold"],
        multi_label_ratio=cuts["multi_label_ratio"],
        back_off_levels=[pb.BackOffLevel(**level) for level in cuts["back_off_levels"]],
    )


def _metrics_from_proto(metrics: pb.ClassifierMetrics) -> dict[str, Any]:
    """Every field of `metrics`, as `_field_values` reads them."""
    return _field_values(metrics, (f.name for f in metrics.DESCRIPTOR.fields))


def classifier_info_from_proto(message: pb.ClassifierInfo) -> ClassifierInfo:
    return _from_message(
        ClassifierInfo,
        message,
        # a fitted classifier has a head; zero (auto when asking) means the server did not say
        method=CLASSIFIER_METHOD.names.get(message.method, "unspecified")
        if message.method
        else "unspecified",
        pooling=POOLING.name(message.pooling),
        labels=tuple(message.labels),
        metrics=_metrics_from_proto(message.metrics),
        back_off_levels=tuple(
            {"depth": level.depth, "parents": level.parents, "threshold": level.threshold}
            for level in message.back_off_levels
        ),
    )


@dataclass(frozen=True)
class ClientPrediction:
    """A classified sequence: the decision (or abstention) and the top-k labels."""

    id: str
    label: str
    """Labels joined by ';', a parent like 1.1.1.- when backed off; empty when abstained."""
    probability: float
    """Calibrated: of the decision's label (a parent's summed over its leaves); when abstained, of
    the top label, the one declined."""
    status: str
    """answered, backed_off or unknown."""
    abstained: bool
    top: tuple[tuple[str, float], ...]
    """(label, calibrated probability), best first."""
    nearest_similarity: float
    evidence: str = "embedding"
    """alignment (a significant hit, hybrid classifiers) or embedding."""
    reason: str = ""
    """Why it abstained: out_of_distribution or below_threshold; empty when it did not (and from
    a server from before reasons were sent)."""

    def as_prediction(self) -> Prediction:
        """The decision as `classify_records` gives it in-process (abstention: labels `unknown`):
        what `protssl classify --server` writes, in the same table as a local run."""
        from protssl.fewshot import Prediction

        top_label, top_probability = self.top[0] if self.top else ("", 0.0)
        return Prediction(
            id=self.id,
            labels=tuple(self.label.split(";")) if self.label else ("unknown",),
            probability=self.probability,
            status=self.status,  # type: ignore[arg-type]
            top_label=top_label,
            top_probability=top_probability,
            nearest_similarity=self.nearest_similarity,
            top=self.top,
            evidence=self.evidence,  # type: ignore[arg-type]
            reason=self.reason or None,  # type: ignore[arg-type]
        )


def prediction_to_proto(decision: Prediction) -> pb.Prediction:
    """A classifier's decision as a message; an abstention has an empty label."""
    abstained = decision.status == "unknown"
    return pb.Prediction(
        id=decision.id,
        top=[pb.LabelScore(label=label, probability=p) for label, p in decision.top],
        abstained=abstained,
        label="" if abstained else decision.label,
        probability=decision.probability,
        status=decision.status,
        nearest_similarity=decision.nearest_similarity,
        evidence=decision.evidence,
        reason=decision.reason or "",
    )


def prediction_from_proto(p: pb.Prediction) -> ClientPrediction:
    return _from_message(ClientPrediction, p, top=tuple((t.label, t.probability) for t in p.top))


# --- API tokens ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenInfo:
    """An API token as the server lists it (never the token itself)."""

    id: str
    name: str
    role: str
    """read, write or admin."""
    created_at: str
    """ISO 8601, UTC."""
    revoked_at: str
    """ISO 8601, UTC; empty while the token is active."""


def token_info_to_proto(stored: StoredToken) -> pb.TokenInfo:
    """A stored token's public fields (its sha256 stays on the server)."""
    revoked = stored.revoked_at.isoformat() if stored.revoked_at is not None else ""
    return pb.TokenInfo(
        id=stored.id,
        name=stored.name,
        role=stored.role,
        created_at=stored.created_at.isoformat(),
        revoked_at=revoked,
    )


def token_info_from_proto(message: pb.TokenInfo) -> TokenInfo:
    return _from_message(TokenInfo, message)


def _from_message(kind: type[D], message: Any, **converted: Any) -> D:
    """A dataclass whose fields are the message's fields of the same names (`_field_values`), but
    for `converted`."""
    same = _field_values(message, (f.name for f in fields(kind) if f.name not in converted))
    return kind(**same, **converted)


def _field_values(message: Any, names: Iterable[str]) -> dict[str, Any]:
    """Fields as Python reads them: a map as a dict, an `optional` scalar left unset as None (a
    peer from before the field, or nothing to say), anything else as protobuf gives it."""
    optional, maps = _read_as(message.DESCRIPTOR)
    out = {}
    for name in names:
        value = getattr(message, name)
        if name in optional and not message.HasField(name):
            value = None
        elif name in maps:
            value = dict(value)
        out[name] = value
    return out


@functools.cache
def _read_as(descriptor: Any) -> tuple[frozenset[str], frozenset[str]]:
    """A message type's `optional` scalar fields and its map fields, by name (once per type: the
    SDK decodes every prediction through `_field_values`)."""
    optional = {f.name for f in descriptor.fields if f.message_type is None and f.has_presence}
    maps = {
        f.name
        for f in descriptor.fields
        if f.message_type is not None and f.message_type.GetOptions().map_entry
    }
    return frozenset(optional), frozenset(maps)


def _to_message(kind: type[M], value: Any, **converted: Any) -> M:
    """A message whose fields are `value`'s attributes of the same names, but for `converted`."""
    names = [f.name for f in kind.DESCRIPTOR.fields if f.name not in converted]
    return kind(**{name: getattr(value, name) for name in names}, **converted)
