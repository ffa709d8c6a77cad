"""A model's three views measured in one run, and the pooling and layer they recommend.

Every labelled set and the held-out views are embedded once, at every layer and with every
pooling compared (one forward per batch); all metrics are then computed on those arrays.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from protssl.analysis import geometry
from protssl.analysis.config import COMPARED_POOLINGS, SERVED_POOLINGS, AnalysisConfig
from protssl.analysis.data import DataSource, LabelledSet, load_labelled
from protssl.analysis.efficiency import (
    Curve,
    fewshot_draws,
    kmer_features,
    learning_curve,
)
from protssl.analysis.information import measure_information
from protssl.checkpoint import LoadedModel
from protssl.errors import InvalidInputError
from protssl.evaluation import composition_features, segment_composition_features, standardise
from protssl.pretrain.data import load_corpus
from protssl.pretrain.probe import pooled_layer_embeddings

__all__ = ["analyze"]

log = logging.getLogger(__name__)

_BASELINES: dict[str, tuple[Callable[[list[str]], np.ndarray], str]] = {
    "composition_z": (composition_features, "zscore"),
    "kmer3": (kmer_features, "centre"),
    "composition_segments_z": (segment_composition_features, "zscore"),
}
"""Model-free features beside the model's: (features of sequences, their standardisation)."""


def _curve_json(curve: Curve) -> dict[str, Any]:
    return {
        "mean": [round(v, 4) for v in curve.mean],
        "std": [round(v, 4) for v in curve.std],
        "area": round(curve.area, 4),
    }


def _geometry(
    model: LoadedModel, held_out: list[str], config: AnalysisConfig, progress: bool
) -> dict[str, Any]:
    """Alignment, uniformity and effective rank per pooling and layer, on two views of each record."""
    views = geometry.two_views(
        held_out,
        crop_fraction=config.crop_fraction,
        max_residues=config.view_residues,
        substitution=config.substitution,
        seed=config.seed,
    )
    first, second = (
        pooled_layer_embeddings(
            model.encoder,
            view,
            poolings=COMPARED_POOLINGS,
            dtype=model.dtype,
            max_tokens=config.max_tokens,
            desc=f"view {index}" if progress else None,
        )
        for index, view in enumerate(views, start=1)
    )
    out: dict[str, Any] = {}
    n = len(held_out)
    for pooling in COMPARED_POOLINGS:
        rows: dict[str, list[float]] = {"alignment": [], "uniformity": [], "effective_rank": []}
        for a, b in zip(first[pooling], second[pooling], strict=True):
            both = geometry.unit_vectors(np.concatenate([a, b]))  # one centre for both views
            rows["alignment"].append(round(geometry.alignment(both[:n], both[n:]), 4))
            rows["uniformity"].append(round(geometry.uniformity(both[:n]), 4))
            rows["effective_rank"].append(round(geometry.effective_rank(standardise(a)), 2))
        out[pooling] = rows
    return {
        "records": n,
        "crop_fraction": config.crop_fraction,
        "view_residues": config.view_residues,
        "substitution": config.substitution,
        "by_pooling": out,
    }


def _labelled(
    model: LoadedModel, labelled: LabelledSet, config: AnalysisConfig, progress: bool
) -> dict[str, Any]:
    """Neighbour purity per pooling and layer and, for few-shot sets, learning curves with baselines."""
    sequences = list(labelled.sequences)
    vectors = pooled_layer_embeddings(
        model.encoder,
        sequences,
        poolings=COMPARED_POOLINGS,
        dtype=model.dtype,
        max_tokens=config.max_tokens,
        desc=labelled.name if progress else None,
    )
    result: dict[str, Any] = {"records": len(sequences), "classes": labelled.classes}
    k = config.neighbours
    result["purity"] = {
        pooling: [
            round(geometry.knn_purity(geometry.unit_vectors(x), labelled.labels, k=k), 4)
            for x in vectors[pooling]
        ]
        for pooling in COMPARED_POOLINGS
    }
    if not labelled.fewshot:
        return result
    _, draws = fewshot_draws(
        labelled.labels,
        max_shots=max(config.shots),
        queries=config.queries,
        draws=config.draws,
        seed=config.seed,
    )
    result["baselines"] = {
        name: _curve_json(
            learning_curve(features(sequences), draws, shots=config.shots, normalisation=how)
        )
        for name, (features, how) in _BASELINES.items()
    }
    result["fewshot"] = {
        pooling: [
            _curve_json(learning_curve(layer, draws, shots=config.shots))
            for layer in vectors[pooling]
        ]
        for pooling in COMPARED_POOLINGS
    }
    return result


def _selection(sets: dict[str, dict[str, Any]], layers: int) -> dict[str, Any]:
    """Score each (pooling, layer): the mean of its learning-curve areas and purities; the best."""
    scores: dict[str, list[float]] = {}
    for pooling in COMPARED_POOLINGS:
        parts = [
            [
                *(s["fewshot"][pooling][layer]["area"] for s in sets.values() if "fewshot" in s),
                *(s["purity"][pooling][layer] for s in sets.values()),
            ]
            for layer in range(layers + 1)
        ]
        scores[pooling] = [round(float(np.mean(p)), 4) for p in parts]

    def best(poolings: tuple[str, ...]) -> dict[str, Any]:
        pooling, layer = max(
            ((p, k) for p in poolings for k in range(layers + 1)),
            key=lambda pk: (scores[pk[0]][pk[1]], pk[1]),
        )
        return {"pooling": pooling, "layer": layer, "score": scores[pooling][layer]}

    return {
        "how": "mean over labelled sets of the learning-curve area (mean top-1 accuracy over "
        "the shot counts) and of the k-NN family purity",
        "score": scores,
        "best": best(COMPARED_POOLINGS),
        "recommended": best(SERVED_POOLINGS),
    }


def analyze(
    model: LoadedModel,
    data: DataSource,
    config: AnalysisConfig | None = None,
    *,
    model_path: Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Measure `model`'s information, geometry and data efficiency on `data`; the full result."""
    config = config or AnalysisConfig()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    encoder = model.encoder
    recipe = dict((model.card.training or {}).get("recipe") or {})
    val_fraction = float(recipe.get("val_fraction", 0.02))
    window = min(int(recipe.get("crop_residues", 1022)), encoder.config.max_residues)
    corpus = load_corpus(data.corpus, val_fraction=val_fraction)
    timings["corpus"] = time.perf_counter() - started

    mark = time.perf_counter()
    information = measure_information(
        encoder,
        corpus.train,
        corpus.val[: config.val_records],
        window_residues=window,
        dtype=model.dtype,
        max_tokens=config.max_tokens,
    )
    timings["information"] = time.perf_counter() - mark

    mark = time.perf_counter()
    geometry = _geometry(model, list(corpus.val[: config.view_records]), config, progress)
    timings["geometry_views"] = time.perf_counter() - mark

    per_class = max(config.shots) + config.queries
    sets: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for spec in data.labelled:
        missing = [str(p) for p in spec.files if not p.is_file()]
        if missing:
            skipped[spec.name] = f"missing {', '.join(missing)}"
            log.warning("skipping %s: %s", spec.name, skipped[spec.name])
            continue
        mark = time.perf_counter()
        labelled = load_labelled(
            spec, per_class=per_class, min_class=per_class if spec.fewshot else 2
        )
        if labelled.classes < 2:
            skipped[spec.name] = (
                f"fewer than two classes with {per_class} records (the most shots and queries "
                "per class): fewer --shots or --queries measure it"
            )
            log.warning("skipping %s: %s", spec.name, skipped[spec.name])
            continue
        sets[spec.name] = _labelled(model, labelled, config, progress)
        timings[spec.name] = time.perf_counter() - mark
    if not sets:
        raise InvalidInputError(f"no labelled set could be measured ({skipped})")

    return {
        "model": {
            "name": model.name,
            "sha256": model.sha256,
            "path": str(model_path) if model_path else None,
            "layers": encoder.config.num_layers,
            "dtype": model.dtype_name,
        },
        "data": {"source": data.name, "note": data.note, "val_fraction": val_fraction},
        "config": {**asdict(config), "shots": list(config.shots)},
        "information": {**information.to_json(), "window_residues": window},
        "geometry": geometry,
        "labelled": sets,
        "skipped": skipped,
        "selection": _selection(sets, encoder.config.num_layers),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
