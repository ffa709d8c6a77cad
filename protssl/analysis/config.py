"""How much a model report measures (`AnalysisConfig`), where its data lives, the poolings compared.

Kept apart from the measuring modules so that `protssl analyze --help` shows the defaults without
importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from protssl.errors import InvalidInputError, refuse_non_finite
from protssl.pooling import POOLED

__all__ = [
    "COMPARED_POOLINGS",
    "DEFAULT_DATA_DIR",
    "DEFAULT_SHOTS",
    "EXAMPLES_DIR",
    "SERVED_POOLINGS",
    "AnalysisConfig",
]

_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = _ROOT.parent / "shared" / "data"
"""The shared data beside a clone (`../shared/data`)."""
EXAMPLES_DIR = _ROOT / "examples"
"""The few real records a clone ships, used when the shared data is absent."""

DEFAULT_SHOTS: tuple[int, ...] = (1, 2, 4, 8, 16)
COMPARED_POOLINGS: tuple[str, ...] = ("mean", "bos", "max", "segments")
SERVED_POOLINGS: tuple[str, ...] = POOLED
"""The poolings `protssl embed` and the service offer: a recommendation is one of these."""


@dataclass(frozen=True)
class AnalysisConfig:
    """How much a model report measures; the defaults run in minutes on two CPU cores."""

    val_records: int = 384
    """Held-out corpus records for bits per residue (whole sequences, abutting windows)."""
    view_records: int = 384
    """Held-out corpus records for alignment, uniformity and effective rank."""
    shots: tuple[int, ...] = DEFAULT_SHOTS
    """Labelled examples per class on the learning curves."""
    queries: int = 2
    """Held-out records per class in every few-shot draw."""
    draws: int = 5
    """Random splits per learning curve (mean and spread)."""
    neighbours: int = 5
    """k of the k-nearest-neighbour family purity."""
    crop_fraction: float = 0.5
    """Share of a protein each view keeps (a random crop)."""
    view_residues: int = 256
    """Longest crop of a view."""
    substitution: float = 0.05
    """Chance that a view's residue is replaced by a random amino acid."""
    seed: int = 0
    max_tokens: int = 8192
    """Token budget of one forward batch."""

    def __post_init__(self) -> None:
        refuse_non_finite(self)
        if min(self.val_records, self.view_records) < 2:
            raise InvalidInputError("val_records and view_records must be at least 2")
        if not self.shots or min(self.shots) < 1 or list(self.shots) != sorted(set(self.shots)):
            raise InvalidInputError("shots must be increasing positive counts, e.g. 1,2,4,8,16")
        if self.queries < 1 or self.draws < 1 or self.neighbours < 1:
            raise InvalidInputError("queries, draws and neighbours must be at least 1")
        if not 0.0 < self.crop_fraction <= 1.0 or not 0.0 <= self.substitution < 1.0:
            raise InvalidInputError("crop_fraction must be in (0, 1], substitution in [0, 1)")
        if self.view_residues < 1 or self.max_tokens < 8:
            raise InvalidInputError("view_residues must be positive and max_tokens at least 8")
