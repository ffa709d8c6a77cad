"""Calibration and abstention: temperature, confidence thresholds, extra labels, EC back-off.

Everything here works on held-out support scores: `calibrate` picks the temperature,
`precision_threshold` the confidence cut that reaches a target precision (or comes closest),
`best_ratio` the extra-label ratio of multi-label support, and `back_off_levels` the parents
(1.1.1.-) that dotted labels back off to (`tells_apart`: only levels of two or more).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "NEVER",
    "Level",
    "TemperatureFit",
    "back_off_levels",
    "best_precision",
    "best_ratio",
    "calibrate",
    "fit_temperature",
    "informative",
    "is_hierarchical",
    "precision_threshold",
    "softmax",
    "tells_apart",
]

_TEMPERATURES = np.logspace(-3, 2, 101)
NEVER = 1.0 + 1e-9
"""A confidence threshold no probability reaches (JSON-safe, unlike inf)."""


def softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    """Row-wise softmax of `scores / temperature` (max-shifted, so large scores do not overflow)."""
    z = scores / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


_CALIBRATION_ROWS = 2000
"""Held-out rows the temperature is fitted on at most (evenly spaced): more change it little."""


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature and the mean held-out log-likelihood it gives (0 rows: -inf)."""

    temperature: float
    log_likelihood: float


def informative(y: np.ndarray) -> np.ndarray:
    """(N,) rows whose held-out score can be right: a true class keeps support without the row.

    A class with one example leaves nothing to score its own example against, so that row says
    nothing about how far scores can be trusted.
    """
    truth = y > 0
    remaining = truth.sum(0)[None] - truth
    return (truth & (remaining > 0)).any(1)


def fit_temperature(
    scores: np.ndarray, y: np.ndarray, evidence: np.ndarray | None = None
) -> TemperatureFit:
    """Temperature maximising the held-out likelihood of the true label set, on informative rows.

    `evidence` marks those rows when `y` is a sample of the support (default: `informative(y)`).
    Without informative rows there is no evidence to sharpen anything: the highest temperature,
    whose probabilities stay near uniform.
    """
    rows = np.flatnonzero(informative(y) if evidence is None else evidence)
    if len(rows) == 0:
        return TemperatureFit(float(_TEMPERATURES[-1]), -math.inf)
    if len(rows) > _CALIBRATION_ROWS:
        rows = rows[np.linspace(0, len(rows) - 1, _CALIBRATION_ROWS).round().astype(np.int64)]
    scores, truth = scores[rows], y[rows] > 0
    best_t, best_nll = 1.0, math.inf
    for t in _TEMPERATURES:
        p = softmax(scores, float(t))
        nll = -np.log(np.maximum((p * truth).sum(1), 1e-12)).mean()
        if nll < best_nll:
            best_t, best_nll = float(t), float(nll)
    return TemperatureFit(best_t, -best_nll)


def calibrate(scores: np.ndarray, y: np.ndarray, evidence: np.ndarray | None = None) -> float:
    """Temperature minimising the held-out negative log-likelihood of the true label set."""
    return fit_temperature(scores, y, evidence).temperature


def _cuts(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each confidence cut between distinct values, highest first, and the held-out precision of
    answering every row at or above it."""
    order = np.argsort(-confidence, kind="stable")
    conf, hits = confidence[order], correct[order].astype(np.float64)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    last_of_value = np.append(conf[1:] < conf[:-1], True)[: len(conf)]
    return conf[last_of_value], precision[last_of_value]


def best_precision(confidence: np.ndarray, correct: np.ndarray) -> float:
    """The highest held-out precision any confidence cut reaches (0 without rows)."""
    _, precision = _cuts(confidence, correct)
    return float(precision.max()) if len(precision) else 0.0


def precision_threshold(
    confidence: np.ndarray, correct: np.ndarray, target: float, *, strict: bool = False
) -> float:
    """Lowest confidence cut whose answered held-out set reaches `target` precision.

    When no cut reaches it, the lowest cut with the highest held-out precision, so that a higher
    target never answers more; with `strict`, or with no correct answer at all (or no rows), a
    cut above every probability: never answer.
    """
    if not correct.any():
        return NEVER
    cuts, precision = _cuts(confidence, correct)
    ok = np.flatnonzero(precision >= target)
    if len(ok):
        return float(cuts[ok[-1]])
    if strict:
        return NEVER
    return float(cuts[np.flatnonzero(precision == precision.max())[-1]])


_RATIOS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def _label_sets(probs: np.ndarray, ratio: float) -> np.ndarray:
    """(M, C) 0/1: the top label plus labels at >= ratio x its probability."""
    top = probs.max(1, keepdims=True)
    chosen = probs >= ratio * top
    chosen[np.arange(len(probs)), probs.argmax(1)] = True
    return chosen


def best_ratio(probs: np.ndarray, y: np.ndarray) -> float | None:
    """The extra-label ratio with the best held-out micro-F1; None when the top label alone wins."""
    truth = y > 0

    def f1(chosen: np.ndarray) -> float:
        tp = float((chosen & truth).sum())
        return 2 * tp / (float(chosen.sum()) + float(truth.sum()))

    top_only = np.zeros_like(truth)
    top_only[np.arange(len(probs)), probs.argmax(1)] = True
    best, best_f1 = None, f1(top_only)
    for ratio in _RATIOS:
        score = f1(_label_sets(probs, ratio))
        if score > best_f1:
            best, best_f1 = ratio, score
    return best


def is_hierarchical(classes: Sequence[str]) -> bool:
    """Whether every label is dotted to one depth (1.1.1.1), so that parents can be backed off to."""
    depths = {len(c.split(".")) for c in classes}
    return len(depths) == 1 and depths.pop() > 1 and all("" not in c.split(".") for c in classes)


def _parent(label: str, depth: int, full_depth: int) -> str:
    """`1.1.1.1` at depth 3 → `1.1.1.-`."""
    parts = label.split(".")[:depth]
    return ".".join(parts + ["-"] * (full_depth - depth))


def tells_apart(parents: Sequence[str]) -> bool:
    """Whether a back-off level whose parents are `parents` says anything about a query: one
    parent that every class shares (8 EC classes all under `2.`: `2.-.-.-`) is true of whatever
    the classifier is asked, and its summed probability is always 1, so backing off to it would
    be a sure "correct" answer that tells nothing. Such a level is not offered."""
    return len(parents) > 1


@dataclass
class Level:
    """One back-off level: each leaf class's parent index at this depth, and the level's threshold."""

    depth: int
    parents: list[str]
    member: np.ndarray  # (C, P) leaf → parent one-hot
    threshold: float


def back_off_levels(classes: Sequence[str], hierarchical: bool) -> list[Level]:
    """Back-off levels from the deepest parent (1.1.1.-) up, those that `tells_apart` only;
    thresholds are set by the caller."""
    if not hierarchical:
        return []
    full = len(classes[0].split("."))
    out = []
    for depth in range(full - 1, 0, -1):
        parents = sorted({_parent(c, depth, full) for c in classes})
        if not tells_apart(parents):
            continue
        index = {p: i for i, p in enumerate(parents)}
        member = np.zeros((len(classes), len(parents)))
        for row, c in enumerate(classes):
            member[row, index[_parent(c, depth, full)]] = 1.0
        out.append(Level(depth, parents, member, 1.0))
    return out
