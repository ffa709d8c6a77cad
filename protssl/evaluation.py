"""Honest evaluation of few-shot classifiers: metrics, N-way K-shot episodes, an anchor, a report.

Metrics follow EC-prediction papers (CLEAN): micro precision / recall / F1 over (query, label)
pairs, where an abstention predicts no label. A backed-off parent label (1.1.1.-) is not a leaf
answer: it counts as no label in the micro figures and is reported apart (`backoff_rate`,
`backoff_precision` = parent matches a true label's parent; None when nothing backed off, for
want of a back-off level or of a query that needed one). Also top-1 accuracy (forced choice:
the most probable leaf label, whatever the decision), abstention rate, and accuracy on answered.
"""

from __future__ import annotations

import html
import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protssl.durable import make_folder
from protssl.errors import InvalidInputError
from protssl.fewshot import UNKNOWN, FewShotClassifier, FewShotConfig, Prediction
from protssl.fewshot.episodes import Episode, sample_episodes
from protssl.pooling import SEGMENTS, segment_bounds

__all__ = [
    "AMINO_ACIDS",
    "Episode",
    "EvalResult",
    "composition_features",
    "evaluate_episodes",
    "evaluate_split",
    "label_metrics",
    "nn1_hits",
    "per_class_metrics",
    "reliability",
    "residue_codes",
    "sample_episodes",
    "segment_composition_features",
    "shown_metric",
    "standardise",
    "t_quantile_975",
    "write_report",
]

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
_AA_INDEX = {aa: i for i, aa in enumerate(AMINO_ACIDS)}


def residue_codes(sequence: str) -> np.ndarray:
    """Each residue's index in AMINO_ACIDS, -1 for any other letter: what counts are taken over."""
    return np.array([_AA_INDEX.get(c, -1) for c in sequence], dtype=np.int64)


def composition_features(sequences: Sequence[str]) -> np.ndarray:
    """Amino-acid (20) + dipeptide (400) composition per sequence, each part summing to 1: (N, 420).

    Residues outside the 20 standard ones are left out of the counts.
    """
    out = np.zeros((len(sequences), 420), dtype=np.float32)
    for row, sequence in enumerate(sequences):
        codes = residue_codes(sequence)
        single = codes[codes >= 0]
        if len(single):
            out[row, :20] = np.bincount(single, minlength=20) / len(single)
        pairs = codes[:-1] * 20 + codes[1:]
        pairs = pairs[(codes[:-1] >= 0) & (codes[1:] >= 0)]
        if len(pairs):
            out[row, 20:] = np.bincount(pairs, minlength=400) / len(pairs)
    return out


def segment_composition_features(sequences: Sequence[str]) -> np.ndarray:
    """`composition_features` of each of `segment_bounds`' stretches, end to end: (N, SEGMENTS*420).

    The model-free anchor for `segments` pooling: the same positional split, over composition.
    """
    return (
        np.stack(
            [
                composition_features([s[a:b] for a, b in segment_bounds(len(s))]).reshape(-1)
                for s in sequences
            ]
        )
        if sequences
        else np.zeros((0, SEGMENTS * 420), dtype=np.float32)
    )


def standardise(vectors: np.ndarray, normalise: str = "centre") -> np.ndarray:
    """Features centred on their mean; `zscore` also scales each to unit variance."""
    x = vectors - vectors.mean(0)
    if normalise == "zscore":
        x = x / vectors.std(0).clip(min=1e-6)
    return x


def nn1_hits(
    vectors: np.ndarray, labels: Sequence[AbstractSet[str]], normalise: str = "centre"
) -> np.ndarray:
    """Leave-one-out 1-NN by cosine, per record: True when the neighbour shares a label.

    Features are centred first; `zscore` also scales each to unit variance (rare dipeptides and
    quiet embedding dimensions then count as much as common ones).
    """
    x = standardise(vectors, normalise)
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    nearest = sims.argmax(1)
    return np.array([bool(labels[i] & labels[j]) for i, j in enumerate(nearest)])


def _parent_matches(parent: str, truth: Sequence[str]) -> bool:
    kept = [p for p in parent.split(".") if p != "-"]
    return any(t.split(".")[: len(kept)] == kept for t in truth)


def label_metrics(
    truth: Sequence[Sequence[str]], predictions: Sequence[Prediction]
) -> dict[str, float | None]:
    """Micro P/R/F1 over labels, top-1 accuracy, abstention and back-off rates, accuracy on answered;
    `backoff_precision` and `accuracy_on_answered` are None (not applicable) when no prediction
    backed off, or none was answered."""
    if len(truth) != len(predictions):
        raise InvalidInputError(f"{len(truth)} true label sets for {len(predictions)} predictions")
    tp = fp = fn = 0
    top1 = answered = answered_right = backed = backed_right = abstained = 0
    for labels, prediction in zip(truth, predictions, strict=True):
        true = set(labels)
        predicted = set(prediction.labels) if prediction.status == "answered" else set()
        tp += len(true & predicted)
        fp += len(predicted - true)
        fn += len(true - predicted)
        top1 += prediction.top_label in true
        if prediction.status == "answered":
            answered += 1
            answered_right += prediction.labels[0] in true
        elif prediction.status == "backed_off":
            backed += 1
            backed_right += _parent_matches(prediction.labels[0], labels)
        else:
            abstained += 1
    n = len(truth)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n": n,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "top1_accuracy": top1 / n if n else 0.0,
        "abstention_rate": abstained / n if n else 0.0,
        "backoff_rate": backed / n if n else 0.0,
        "backoff_precision": backed_right / backed if backed else None,
        "answered_rate": answered / n if n else 0.0,
        "accuracy_on_answered": answered_right / answered if answered else None,
    }


def per_class_metrics(
    truth: Sequence[Sequence[str]], predictions: Sequence[Prediction]
) -> dict[str, dict[str, float]]:
    """Precision, recall and support of every true or predicted leaf label."""
    counts: dict[str, list[int]] = {}  # label -> [tp, fp, fn]
    for labels, prediction in zip(truth, predictions, strict=True):
        true = set(labels)
        predicted = set(prediction.labels) if prediction.status == "answered" else set()
        for label in true | predicted:
            row = counts.setdefault(label, [0, 0, 0])
            row[0] += label in true and label in predicted
            row[1] += label in predicted and label not in true
            row[2] += label in true and label not in predicted
    out = {}
    for label in sorted(counts):
        tp, fp, fn = counts[label]
        out[label] = {
            "precision": tp / (tp + fp) if tp + fp else 0.0,
            "recall": tp / (tp + fn) if tp + fn else 0.0,
            "support": tp + fn,
        }
    return out


def reliability(
    confidence: np.ndarray, correct: np.ndarray, bins: int = 10
) -> tuple[list[dict[str, float]], float]:
    """Per-bin mean confidence, accuracy and count over [0, 1], and the expected calibration error."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        mask = index == b
        if not mask.any():
            continue
        conf, acc = float(confidence[mask].mean()), float(correct[mask].mean())
        table.append({"low": edges[b], "high": edges[b + 1], "confidence": conf, "accuracy": acc})
        table[-1]["count"] = int(mask.sum())
        ece += mask.mean() * abs(conf - acc)
    return table, float(ece)


def shown_metric(value: object) -> str:
    """A metric as tables show it: floats to 3 decimals, None (not applicable) as `n/a`."""
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _pca_2d(x: np.ndarray) -> np.ndarray:
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def write_report(
    directory: str | Path, result: EvalResult, *, title: str = "Few-shot evaluation"
) -> Path:
    """Write `embedding_pca.png`, `reliability.png`, `report.md` and `index.html`; returns the HTML path."""
    # imported here: only reports need matplotlib; Figure draws without pyplot's global state
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    directory = Path(directory)
    make_folder(directory, what="report folder")
    support_vectors, query_vectors = result.support_vectors, result.query_vectors
    support_labels, query_labels = result.support_labels, result.query_vector_labels
    predictions, metrics = result.predictions, result.metrics
    both = np.concatenate([support_vectors, query_vectors]).astype(np.float64)
    points = _pca_2d(both) if len(both) >= 2 else np.zeros((len(both), 2))
    first = [ls[0] if ls else UNKNOWN for ls in itertools.chain(support_labels, query_labels)]
    names = sorted(set(first))
    colours = {name: i for i, name in enumerate(names)}
    figure = Figure(figsize=(7, 6))
    axes = figure.subplots()
    palette = colormaps["tab20"]
    is_support = np.arange(len(first)) < len(support_vectors)
    for name in names:
        mask = np.array([f == name for f in first])
        colour = palette(colours[name] % 20)
        label = name if len(names) <= 20 else None
        support_xy, query_xy = points[mask & is_support], points[mask & ~is_support]
        axes.scatter(
            support_xy[:, 0], support_xy[:, 1], marker="o", s=28, color=colour, label=label
        )
        axes.scatter(query_xy[:, 0], query_xy[:, 1], marker="x", s=28, color=colour)
    axes.set_title(f"{title}: PCA of embeddings (o support, x query)")
    axes.set_xlabel("PC 1")
    axes.set_ylabel("PC 2")
    if len(names) <= 20:
        axes.legend(fontsize=7, loc="best")
    figure.savefig(directory / "embedding_pca.png", dpi=110, bbox_inches="tight")

    confidence = np.array([p.top_probability for p in predictions])
    correct = np.array(
        [p.top_label in set(t) for p, t in zip(predictions, result.truth, strict=True)]
    )
    table, ece = reliability(confidence, correct)
    figure = Figure(figsize=(5, 5))
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    if table:
        axes.bar(
            [(b["low"] + b["high"]) / 2 for b in table],
            [b["accuracy"] for b in table],
            width=0.09,
            alpha=0.7,
            label="accuracy in bin",
        )
        axes.plot(
            [b["confidence"] for b in table], [b["accuracy"] for b in table], "o-", label="mean"
        )
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("calibrated top probability")
    axes.set_ylabel("accuracy")
    axes.set_title(f"Reliability (ECE {ece:.3f})")
    axes.legend(fontsize=8, loc="upper left")
    figure.savefig(directory / "reliability.png", dpi=110, bbox_inches="tight")

    classes = per_class_metrics(result.truth, predictions)
    metric_rows = [(k, shown_metric(v)) for k, v in metrics.items()]
    md = [f"# {title}", "", "| metric | value |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in metric_rows]
    md += [f"| expected calibration error | {ece:.3f} |", ""]
    md += ["![PCA](embedding_pca.png) ![reliability](reliability.png)", ""]
    md += ["| class | precision | recall | support |", "|---|---|---|---|"]
    class_rows = [
        (name, f"{c['precision']:.3f}", f"{c['recall']:.3f}", str(c["support"]))
        for name, c in classes.items()
    ]
    md += ["| " + " | ".join(row) + " |" for row in class_rows]
    (directory / "report.md").write_text("\n".join(md) + "\n")

    def cells(values: Sequence[object], tag: str = "td") -> str:
        return "".join(f"<{tag}>{html.escape(str(v))}</{tag}>" for v in values)

    page = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><table>",
        *(f"<tr>{cells(row)}</tr>" for row in metric_rows),
        f"<tr>{cells(('expected calibration error', f'{ece:.3f}'))}</tr></table>",
        "<p><img src='embedding_pca.png' alt='PCA'> <img src='reliability.png' alt='reliability'></p>",
        f"<table><tr>{cells(('class', 'precision', 'recall', 'support'), 'th')}</tr>",
        *(f"<tr>{cells(row)}</tr>" for row in class_rows),
        "</table>",
        f"<script type='application/json' id='metrics'>{html.escape(json.dumps(dict(metrics)))}</script>",
        "</body></html>",
    ]
    path = directory / "index.html"
    path.write_text("\n".join(page) + "\n")
    return path


@dataclass(frozen=True)
class EvalResult:
    """Predictions for labelled queries, their metrics, and the vectors a report draws."""

    metrics: dict[str, Any]
    truth: list[tuple[str, ...]]
    predictions: list[Prediction]
    support_vectors: np.ndarray
    support_labels: list[tuple[str, ...]]
    query_vectors: np.ndarray
    query_vector_labels: list[tuple[str, ...]]
    layers: list[int]
    """The layer each fitted classifier chose (one per episode, or one)."""


def evaluate_split(
    support: Mapping[int, np.ndarray],
    support_labels: Sequence[Sequence[str]],
    query: Mapping[int, np.ndarray],
    query_labels: Sequence[Sequence[str]],
    config: FewShotConfig,
    *,
    query_ids: Sequence[str] | None = None,
    support_sequences: Sequence[str] | None = None,
    query_sequences: Sequence[str] | None = None,
    on_search: Callable[[int], None] | None = None,
) -> EvalResult:
    """Fit on the support vectors (per layer), predict the queries, and score them.

    The sequences are needed by the hybrid method only; its held-out and query searches report
    each one's residues to `on_search` (progress: `aligned_residues` + the queries' residues).
    """
    classifier = FewShotClassifier.fit(
        support, support_labels, config, sequences=support_sequences, on_search=on_search
    )
    predictions = classifier.predict(
        query, query_ids, sequences=query_sequences, on_search=on_search
    )
    truth = [tuple(t) for t in query_labels]
    metrics: dict[str, Any] = dict(label_metrics(truth, predictions))
    metrics["layer"] = classifier.layer
    return EvalResult(
        metrics=metrics,
        truth=truth,
        predictions=predictions,
        support_vectors=support[classifier.layer],
        support_labels=[tuple(s) for s in support_labels],
        query_vectors=query[classifier.layer],
        query_vector_labels=truth,
        layers=[classifier.layer],
    )


def _t_within(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with `df` degrees of freedom, in closed form for an integer `df`
    (Abramowitz & Stegun 26.7.3-4): a finite sum of powers of cos(atan(t / sqrt(df)))."""
    theta = math.atan(t / math.sqrt(df))
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:  # sin(theta) (1 + 1/2 cos^2 + 1·3/(2·4) cos^4 + ... up to cos^(df-2))
        term = total = 1.0
        for power in range(2, df - 1, 2):
            term *= cos2 * (power - 1) / power
            total += term
        return sin * total
    # 2/pi (theta + sin(theta) (cos + 2/3 cos^3 + 2·4/(3·5) cos^5 + ... up to cos^(df-2)))
    term = math.cos(theta)
    total = term if df > 1 else 0.0
    for power in range(3, df - 1, 2):
        term *= cos2 * (power - 1) / power
        total += term
    return 2 / math.pi * (theta + sin * total)


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` >= 1 degrees of freedom (12.706 for 1, 4.303
    for 2, toward 1.960): a 95% interval of a mean of n values is it at n - 1 times the standard
    error, where 1.96 would be too narrow for a few episodes (2.2 times, for 3). Bisection on the
    exact CDF, as scipy is not a dependency."""
    if df < 1:
        raise InvalidInputError(f"Student's t needs 1 or more degrees of freedom, not {df}")
    low, high = 0.0, 16.0
    while _t_within(high, df) < 0.95:
        high *= 2
    for _ in range(100):
        middle = (low + high) / 2
        if _t_within(middle, df) < 0.95:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def evaluate_episodes(
    features: Mapping[int, np.ndarray],
    labels: Sequence[Sequence[str]],
    episodes: Sequence[Episode],
    config: FewShotConfig,
    *,
    sequences: Sequence[str] | None = None,
    on_search: Callable[[int], None] | None = None,
) -> EvalResult:
    """Run each episode (fit on its support rows, predict its query rows); pool the predictions.

    `sequences` (one per row of `features`) are needed by the hybrid method only; `on_search` as
    `evaluate_split` takes it, over every episode.

    Metrics are micro over all episodes' queries, plus the mean of per-episode top-1 accuracy and
    the half-width of its 95% Student-t interval (`episode_top1_ci95`; None from one episode,
    which says nothing of the spread). The report vectors are those of the layer chosen most often.
    """
    truth: list[tuple[str, ...]] = []
    predictions: list[Prediction] = []
    layers: list[int] = []
    per_episode: list[float] = []
    for episode in episodes:
        support_rows, query_rows = list(episode.support), list(episode.query)
        result = evaluate_split(
            {k: v[support_rows] for k, v in features.items()},
            [labels[i] for i in support_rows],
            {k: v[query_rows] for k, v in features.items()},
            [labels[i] for i in query_rows],
            config,
            support_sequences=None if sequences is None else [sequences[i] for i in support_rows],
            query_sequences=None if sequences is None else [sequences[i] for i in query_rows],
            on_search=on_search,
        )
        truth += result.truth
        predictions += result.predictions
        layers += result.layers
        per_episode.append(result.metrics["top1_accuracy"])
    metrics: dict[str, Any] = dict(label_metrics(truth, predictions))
    accuracies = np.array(per_episode)
    metrics["episodes"] = len(episodes)
    metrics["episode_top1_mean"] = float(accuracies.mean())
    metrics["episode_top1_ci95"] = (
        t_quantile_975(len(accuracies) - 1)
        * float(accuracies.std(ddof=1))
        / math.sqrt(len(accuracies))
        if len(accuracies) > 1
        else None
    )
    layer = max(set(layers), key=layers.count)
    metrics["layer"] = layer
    last = episodes[-1]
    return EvalResult(
        metrics=metrics,
        truth=truth,
        predictions=predictions,
        support_vectors=features[layer][list(last.support)],
        support_labels=[tuple(labels[i]) for i in last.support],
        query_vectors=features[layer][list(last.query)],
        query_vector_labels=[tuple(labels[i]) for i in last.query],
        layers=layers,
    )
