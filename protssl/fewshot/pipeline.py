"""Few-shot classifiers on a protssl model: embed records, fit on them, classify with them.

The one path from records to predictions is `classify_records`: it checks that the classifier
meets the model it was fitted on (`check_model`), embeds the records at the classifier's layer and
pooling (here, or through a caller's `embed`, such as the service's batcher) and predicts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from protssl.checkpoint import LoadedModel
from protssl.embedding import CacheStats, EmbedConfig, Embedding, embed_records_layers
from protssl.errors import CheckpointError, InvalidInputError
from protssl.fasta import ProteinRecord, SequenceItem, as_records
from protssl.fewshot.classifier import (
    FewShotClassifier,
    Prediction,
    require_labels,
    support_classes,
)
from protssl.fewshot.config import FewShotConfig
from protssl.fewshot.heads import HybridHead, label_classes, label_sets, multi_hot

if TYPE_CHECKING:
    from protssl.store import EmbeddingCache

__all__ = [
    "EmbedFn",
    "Runner",
    "aligned_residues",
    "candidate_layers",
    "check_model",
    "classify_records",
    "embed_for_fewshot",
    "fit_records",
    "fit_residues",
    "progress_residues",
]

EmbedFn = Callable[[Sequence[ProteinRecord], int, str], np.ndarray]
"""(records, layer, pooling) → their (N, D) vectors in record order, from the checked model."""

Runner = Callable[[Callable[[], Any]], Any]
"""`run(step)` returns `step()`, run where the model may be used: the service passes its model
worker's, so that a classifier's embedding takes turns with other calls' batches."""


def candidate_layers(num_layers: int) -> tuple[int, ...]:
    """Layers worth trying: up to 5 spread over the model's upper two thirds, the last included."""
    start = max(1, num_layers // 3)
    count = min(5, num_layers - start + 1)
    return tuple(sorted({round(float(v)) for v in np.linspace(start, num_layers, count)}))


def embed_for_fewshot(
    records: Sequence[ProteinRecord],
    model: LoadedModel,
    layers: Iterable[int],
    config: EmbedConfig | None = None,
    *,
    on_batch: Callable[[int], None] | None = None,
    cache: EmbeddingCache | None = None,
    stats: CacheStats | None = None,
    run: Runner | None = None,
) -> dict[int, np.ndarray]:
    """Pooled vectors (`config.pooling`, mean by default) of `records` (in input order) at each
    layer, from one forward per batch.

    With `cache` (a store's embedding cache) vectors already there are read, not computed, and
    computed ones are written back; `stats` counts both. `on_batch` gets each record's residues
    once its vectors are at hand, computed or read from the cache (a long record's overlapping
    windows counted once), so a bar over the records' residues ends at its total. `run` runs each
    step that may use the model (default: here).
    """
    config = config or EmbedConfig()
    classifier_embed_config(config.pooling, model)
    wanted = tuple(layers)
    position = {r.id: i for i, r in enumerate(records)}
    if len(position) != len(records):
        raise InvalidInputError("record ids must be unique to embed for a classifier")
    out: dict[int, np.ndarray] = {}
    steps = embed_records_layers(records, model, wanted, config, cache=cache, stats=stats)

    def step() -> dict[int, Embedding] | None:
        return next(steps, None)

    with contextlib.closing(steps):
        while (by_layer := step() if run is None else run(step)) is not None:
            for layer, embedding in by_layer.items():
                if layer not in out:
                    out[layer] = np.zeros((len(records), embedding.vector.shape[0]), np.float32)
                out[layer][position[embedding.id]] = embedding.vector
            if on_batch is not None:
                on_batch(embedding.length)
    return out


def classifier_embed_config(pooling: str | None, model: LoadedModel) -> EmbedConfig:
    """How a classifier's vectors are made: `pooling` must give one vector per record; None is
    the pooling the model's card recommends (`protssl analyze`), else mean. The classifier records
    it and embeds its queries the same way, so unlike a bare vector its shape never surprises."""
    pooling = pooling or model.recommended_pooling or "mean"
    if pooling == "per-residue":
        raise InvalidInputError("few-shot classifiers need pooled vectors (mean, bos or segments)")
    return EmbedConfig(pooling=pooling)  # type: ignore[arg-type]


def _model_info(model: LoadedModel, config: EmbedConfig) -> dict[str, Any]:
    return {"model_sha256": model.sha256, "model_name": model.name, "pooling": config.pooling}


def check_model(classifier: FewShotClassifier, model: LoadedModel) -> None:
    """Refuse a model other than the one the classifier was fitted on: its vectors mean nothing to it.

    A `CheckpointError` (gRPC FAILED_PRECONDITION): the request is sound, the model at hand is not
    the classifier's (a server serving another model answers every call on it so).
    """
    expected = classifier.info.get("model_sha256")
    if not expected or expected == model.sha256:
        return
    info = classifier.info
    which = (
        f"classifier {info['name']!r} v{info['version']}" if "name" in info else "this classifier"
    )
    raise CheckpointError(
        f"{which} was fitted on model {info.get('model_name', '?')} ({expected[:12]}…), not on "
        f"{model.name} ({model.sha256[:12]}…); use the model it was fitted on"
    )


def fit_records(
    records: Sequence[SequenceItem],
    model: LoadedModel,
    config: FewShotConfig | None = None,
    *,
    layers: Iterable[int] | None = None,
    embed_config: EmbedConfig | None = None,
    on_batch: Callable[[int], None] | None = None,
    cache: EmbeddingCache | None = None,
    stats: CacheStats | None = None,
    run: Runner | None = None,
) -> FewShotClassifier:
    """Embed labelled records (protssl's, or Biopython's with `label=` in the description) at the
    candidate layers (through `cache` when given; each model step through `run`) and fit here;
    without `embed_config`, on the pooling `classifier_embed_config` picks for the model.

    `on_batch` gets each record's residues once its vectors are at hand and, for a hybrid fit,
    each held-out alignment's: `fit_residues` is what it adds up to. Raising in it stops the fit.
    """
    labelled = as_records(records)
    embed_config = embed_config or classifier_embed_config(None, model)
    require_labels([r.labels for r in labelled], [r.id for r in labelled])
    support_classes(label_sets([r.labels for r in labelled]), config or FewShotConfig())
    chosen = (
        tuple(layers) if layers is not None else candidate_layers(model.encoder.config.num_layers)
    )
    features = embed_for_fewshot(
        labelled, model, chosen, embed_config, on_batch=on_batch, cache=cache, stats=stats, run=run
    )
    return FewShotClassifier.fit(
        features,
        [r.labels for r in labelled],
        config,
        info=_model_info(model, embed_config),
        sequences=[r.sequence for r in labelled],
        on_search=on_batch,
    )


def fit_residues(records: Sequence[ProteinRecord], config: FewShotConfig | None = None) -> int:
    """What `fit_records`' `on_batch` adds up to: each record's residues once, and a hybrid fit's
    (the default's) held-out alignments, each support row it aligns counted again."""
    return sum(len(r.sequence) for r in records) + aligned_residues(records, config)


def aligned_residues(records: Sequence[ProteinRecord], config: FewShotConfig | None = None) -> int:
    """What a fit on `records` reports to `FewShotClassifier.fit`'s `on_search`: the residues of
    the support rows a hybrid fit (the default's) aligns held out; 0 for the other heads."""
    config = (config or FewShotConfig()).resolved(with_sequences=True)
    if config.method != "hybrid":
        return 0
    examples = label_sets([r.labels for r in records])
    y = multi_hot(examples, label_classes(examples))
    return sum(len(records[i].sequence) for i in HybridHead.aligned_rows(y, config))


def classify_records(
    classifier: FewShotClassifier,
    records: Sequence[SequenceItem],
    model: LoadedModel,
    *,
    embed_config: EmbedConfig | None = None,
    on_batch: Callable[[int], None] | None = None,
    top_k: int = 3,
    embed: EmbedFn | None = None,
    cache: EmbeddingCache | None = None,
    stats: CacheStats | None = None,
) -> list[Prediction]:
    """Embed records (or sequences, or Biopython records) at the classifier's layer with the model
    it was fitted on, and predict.

    `embed` replaces embedding here with `model` (the service passes its batcher's), else
    vectors go through `cache` when given; each prediction lists its `top_k` most probable labels.
    `on_batch` gets each query's residues once its vector is at hand and, for a hybrid classifier,
    again once it is aligned (`progress_residues`: what a bar over both counts to).
    """
    check_model(classifier, model)
    queries = as_records(records)
    pooling = classifier.info.get("pooling", "mean")
    embed_config = embed_config or EmbedConfig(pooling=pooling)
    if embed_config.pooling != pooling:
        raise InvalidInputError(f"this classifier needs {pooling} pooling")
    if not queries:
        return []
    if embed is not None:
        vectors = embed(queries, classifier.layer, pooling)
    else:
        features = embed_for_fewshot(
            queries,
            model,
            (classifier.layer,),
            embed_config,
            on_batch=on_batch,
            cache=cache,
            stats=stats,
        )
        vectors = features[classifier.layer]
    return classifier.predict(
        vectors,
        [r.id for r in queries],
        top_k=top_k,
        sequences=[r.sequence for r in queries],
        on_search=on_batch,
    )


def progress_residues(classifier: FewShotClassifier, residues: int) -> int:
    """What `classify_records`' `on_batch` adds up to over queries of `residues` residues: a
    hybrid classifier aligns each query after embedding it, so its residues count twice."""
    return residues * (2 if classifier.config.method == "hybrid" else 1)
