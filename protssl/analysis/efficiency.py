"""The data-efficiency view: few-shot accuracy against labelled examples per class, with baselines.

A learning curve: for each draw, every class's records are shuffled; the last `queries` are held
out, the first k (1, 2, 4, 8, 16) are the support. The classifier is protssl's prototype head
(cosine to class centroids), forced to choose, so the figure is top-1 accuracy. Every feature set
meets the same draws, so curves compare pairwise. Baselines: composition (`protssl.evaluation`)
and k-mer counts, both free of any model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from protssl.analysis.config import DEFAULT_SHOTS
from protssl.evaluation import residue_codes, standardise
from protssl.fewshot.config import FewShotConfig
from protssl.fewshot.heads import HEADS, multi_hot, normalise

__all__ = [
    "Curve",
    "FewShotDraw",
    "fewshot_accuracy",
    "fewshot_draws",
    "kmer_features",
    "learning_curve",
]


def kmer_features(sequences: Sequence[str], *, k: int = 3) -> np.ndarray:
    """(N, 20^k) k-mer frequencies over the 20 standard residues (k-mers with others skipped)."""
    width = 20**k
    out = np.zeros((len(sequences), width), dtype=np.float32)
    for row, sequence in enumerate(sequences):
        codes = residue_codes(sequence)
        if len(codes) < k:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(codes, k)  # (L - k + 1, k)
        windows = windows[(windows >= 0).all(1)]
        if len(windows):
            index = windows @ (20 ** np.arange(k - 1, -1, -1))
            out[row] = np.bincount(index, minlength=width) / len(windows)
    return out


@dataclass(frozen=True)
class FewShotDraw:
    """One random split: per class, its records in drawn order and which of them are queries."""

    support_order: tuple[tuple[int, ...], ...]
    """Per class, the rows that may be support, in drawn order (the first k are k-shot's support)."""
    queries: tuple[int, ...]
    query_classes: tuple[int, ...]


def fewshot_draws(
    labels: Sequence[str],
    *,
    max_shots: int,
    queries: int = 2,
    draws: int = 5,
    seed: int = 0,
) -> tuple[tuple[str, ...], list[FewShotDraw]]:
    """The classes with at least `max_shots + queries` records, and `draws` seeded splits of them."""
    by_class: dict[str, list[int]] = {}
    for row, label in enumerate(labels):
        by_class.setdefault(label, []).append(row)
    classes = tuple(sorted(c for c, rows in by_class.items() if len(rows) >= max_shots + queries))
    if len(classes) < 2:
        raise ValueError(f"fewer than two classes have {max_shots + queries} records")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        support_order, query_rows, query_classes = [], [], []
        for index, cls in enumerate(classes):
            rows = [by_class[cls][i] for i in rng.permutation(len(by_class[cls]))]
            support_order.append(tuple(rows[:-queries]))
            query_rows += rows[-queries:]
            query_classes += [index] * queries
        out.append(FewShotDraw(tuple(support_order), tuple(query_rows), tuple(query_classes)))
    return classes, out


def fewshot_accuracy(features: np.ndarray, draw: FewShotDraw, shots: int) -> float:
    """Top-1 accuracy of the prototype head fitted on `shots` records per class of one draw."""
    support = [row for rows in draw.support_order for row in rows[:shots]]
    support_classes = [(str(c),) for c, rows in enumerate(draw.support_order) for _ in rows[:shots]]
    names = [str(c) for c in range(len(draw.support_order))]
    head = HEADS["prototype"]()
    head.fit(normalise(features[support]), multi_hot(support_classes, names), FewShotConfig())
    predicted = head.scores(normalise(features[list(draw.queries)])).argmax(1)
    return float((predicted == np.array(draw.query_classes)).mean())


@dataclass(frozen=True)
class Curve:
    """Few-shot top-1 accuracy per number of examples per class: mean and spread over draws."""

    shots: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def area(self) -> float:
        """Mean accuracy over the shot counts: one number for the whole curve."""
        return float(np.mean(self.mean))


def learning_curve(
    features: np.ndarray,
    draws: Sequence[FewShotDraw],
    *,
    shots: Sequence[int] = DEFAULT_SHOTS,
    normalisation: str = "centre",
) -> Curve:
    """The learning curve of one feature set over `draws` (features standardised over all rows)."""
    x = standardise(features.astype(np.float64), normalisation)
    by_shot = np.array([[fewshot_accuracy(x, draw, k) for draw in draws] for k in shots])
    return Curve(
        tuple(shots),
        tuple(float(v) for v in by_shot.mean(1)),
        tuple(float(v) for v in by_shot.std(1)),
    )
