"""How one protein's residue states become one vector: the pooling names and segment means.

Kept free of torch so that the CLI's parsers can name the choices without loading the model stack.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from protssl.errors import InvalidInputError

__all__ = [
    "POOLED",
    "POOLINGS",
    "SEGMENTS",
    "Pooling",
    "pooled_width",
    "segment_bounds",
    "segment_means",
    "vector_values",
]

Pooling = Literal["mean", "bos", "segments", "per-residue"]
POOLINGS: tuple[str, ...] = ("mean", "bos", "segments", "per-residue")
POOLED: tuple[str, ...] = ("mean", "bos", "segments")
"""The poolings that give one vector per protein: what classifiers and recommendations use."""
SEGMENTS = 4
"""Stretches of equal length that `segments` pooling averages separately (chosen by measurement:
README, "Pooling")."""


def segment_bounds(length: int) -> list[tuple[int, int]]:
    """The SEGMENTS stretches [start, end) of a protein of `length` residues, N- to C-terminal.

    Residue i is in stretch floor(i * SEGMENTS / length); a protein shorter than SEGMENTS gives
    stretch j its residue floor(j * length / SEGMENTS) alone.
    """
    if length < 1:
        raise InvalidInputError("segment pooling needs at least one residue")
    starts = [-(-j * length // SEGMENTS) for j in range(SEGMENTS)]  # ceil: first i of stretch j
    if length < SEGMENTS:
        return [(j * length // SEGMENTS, j * length // SEGMENTS + 1) for j in range(SEGMENTS)]
    return list(zip(starts, [*starts[1:], length], strict=True))


def segment_means(per_residue: np.ndarray, *, groups: int = 1) -> np.ndarray:
    """(L, G*C) residue states → (G*SEGMENTS*C,): each layer's means over `segment_bounds`.

    The G layers' channels (concatenated by the embedding forward) stay contiguous, so splitting
    the vector G ways gives each layer's own vector.
    """
    length, width = per_residue.shape
    states = per_residue.astype(np.float64)
    means = np.stack([states[a:b].mean(0) for a, b in segment_bounds(length)])
    by_layer = means.reshape(SEGMENTS, groups, width // groups).transpose(1, 0, 2)
    return by_layer.reshape(-1).astype(np.float32)


def pooled_width(pooling: str, dim: int) -> int:
    """Values per pooled vector of one layer of `dim` channels (per residue for `per-residue`)."""
    return dim * SEGMENTS if pooling == "segments" else dim


def vector_values(pooling: str, dim: int, records: int, residues: int) -> int:
    """Values the vectors of `records` records (`residues` in all) hold: one pooled vector a
    record, or with `per-residue` one row a residue (what sizes an output or a store)."""
    rows = residues if pooling == "per-residue" else records
    return rows * pooled_width(pooling, dim)
