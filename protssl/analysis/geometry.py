"""The geometric view of a representation: alignment, uniformity, effective rank, neighbour purity.

Alignment and uniformity are Wang & Isola's (ICML 2020) on unit vectors: two views of one protein
should land close (alignment, lower is better) while all proteins spread over the sphere
(uniformity, lower is better). The effective rank is RankMe (Garrido et al., ICML 2023): how many
directions the vectors really use. Purity is the share of each vector's k nearest neighbours that
share its family. The metrics take plain arrays; `two_views` draws the augmented views.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from protssl.evaluation import AMINO_ACIDS, standardise
from protssl.fewshot.heads import normalise
from protssl.pretrain.data import crop_sequence

__all__ = [
    "alignment",
    "effective_rank",
    "knn_purity",
    "two_views",
    "uniformity",
    "unit_vectors",
]


def unit_vectors(x: np.ndarray) -> np.ndarray:
    """Rows centred on their mean, then L2-normalised: the cosine geometry every metric here uses.

    Pooled transformer states share a large common offset; without centring every pair of
    proteins looks alike and the metrics describe that offset, not the proteins.
    """
    return normalise(standardise(x))


def alignment(a: np.ndarray, b: np.ndarray, *, alpha: float = 2.0) -> float:
    """Mean ||a_i - b_i||^alpha over paired unit vectors (two views of protein i); 0 is perfect."""
    if a.shape != b.shape:
        raise ValueError(f"views must pair up: {a.shape} vs {b.shape}")
    return float((np.linalg.norm(a - b, axis=1) ** alpha).mean())


def uniformity(x: np.ndarray, *, t: float = 2.0) -> float:
    """log mean exp(-t ||x_i - x_j||^2) over distinct pairs of unit vectors; 0 = all identical."""
    n = len(x)
    if n < 2:
        raise ValueError("uniformity needs at least two vectors")
    x = x.astype(np.float64)
    norms = (x * x).sum(1)
    squared = np.clip(norms[:, None] + norms[None, :] - 2.0 * (x @ x.T), 0.0, None)
    pairs = squared[np.triu_indices(n, k=1)]
    # log-mean-exp, shifted by the largest term so that nothing underflows
    exponents = -t * pairs
    top = exponents.max()
    return float(top + np.log(np.exp(exponents - top).mean()))


def effective_rank(x: np.ndarray, *, eps: float = 1e-7) -> float:
    """RankMe: exp of the entropy of the singular values normalised to sum to 1 (1 to min(N, D))."""
    singular = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    total = singular.sum()
    if total <= 0:
        return 0.0
    p = singular / total + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def knn_purity(x: np.ndarray, labels: Sequence[str], *, k: int = 5) -> float:
    """Mean share of each unit vector's k nearest others (cosine) that carry its label."""
    n = len(x)
    if n < 2:
        raise ValueError("purity needs at least two vectors")
    k = min(k, n - 1)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # (N, k), in no order
    codes = np.unique(np.asarray(labels), return_inverse=True)[1]
    return float((codes[nearest] == codes[:, None]).mean())


def two_views(
    sequences: Sequence[str],
    *,
    crop_fraction: float = 0.5,
    max_residues: int = 256,
    substitution: float = 0.05,
    seed: int = 0,
) -> tuple[list[str], list[str]]:
    """Two augmented views of each sequence: independent random crops with residues substituted.

    A crop keeps `crop_fraction` of the sequence (at most `max_residues`) at a random offset; then
    each residue is replaced by a uniformly drawn standard amino acid with probability
    `substitution`. Seeded, so the same call gives the same views.
    """
    rng = np.random.default_rng(seed)
    alphabet = np.array(list(AMINO_ACIDS))
    views: tuple[list[str], list[str]] = ([], [])
    for sequence in sequences:
        length = max(1, min(max_residues, round(len(sequence) * crop_fraction)))
        for view in views:
            residues = np.array(list(crop_sequence(sequence, length, rng)))
            swap = rng.random(len(residues)) < substitution
            residues[swap] = rng.choice(alphabet, size=int(swap.sum()))
            view.append("".join(residues))
    return views
