"""How a few-shot classifier is fitted: the heads on offer and `FewShotConfig`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from protssl.errors import InvalidInputError, refuse_non_finite

__all__ = [
    "CHOICES",
    "EMBEDDING_HEADS",
    "HMMER_PROFILE_SAMPLES",
    "METHODS",
    "MIN_PROFILE_SAMPLES",
    "FewShotConfig",
    "Method",
]

Method = Literal["auto", "prototype", "knn", "linear", "contrastive", "hybrid"]
METHODS: tuple[Method, ...] = ("prototype", "knn", "linear", "contrastive", "hybrid")
"""The heads a fitted classifier can have."""
CHOICES: tuple[Method, ...] = ("auto", *METHODS)
"""What a fit may be asked for: a head, or `auto` (resolved when fitting, see `FewShotConfig`)."""
EMBEDDING_HEADS: tuple[str, ...] = ("prototype", "knn")
"""The embedding heads `hybrid` can fall back to (their held-out scores are exact leave-one-out)."""

HMMER_PROFILE_SAMPLES = 200
"""HMMER's own profile calibration sample (`EmN`, `EvN`, `EfN`): what classifiers saved before
`profile_samples` existed were fitted with, and keep."""
MIN_PROFILE_SAMPLES = 20
"""Fewer simulated sequences than this leave HMMER's fits of its score distributions too loose."""


@dataclass(frozen=True)
class FewShotConfig:
    """How a few-shot classifier is fitted."""

    method: Method = "auto"
    """prototype (cosine to class centroids), knn, linear (logistic head), contrastive, hybrid
    (alignment of embedding-retrieved candidates where a significant hit exists, else `fallback`),
    or auto: hybrid when the support sequences are given (every face gives them; the most accurate
    head on every task of the README's few-shot benchmark), prototype for vectors alone."""
    k: int = 5
    """Neighbours that vote in `knn`."""
    target_precision: float = 0.9
    """Held-out precision on answered support queries that sets the abstention threshold."""
    ood_quantile: float = 0.02
    """Fraction of support vectors whose nearest-other similarity may fall below the OOD cut."""
    multi_label_ratio: float | None = None
    """Multi-label support: extra labels at >= this fraction of the top probability; None = the
    ratio with the best held-out micro-F1 on the support set."""
    hierarchical: Literal["auto", "yes", "no"] = "auto"
    """Back off dotted labels (1.1.1.1 → 1.1.1.-); auto = when every label is dotted."""
    folds: int = 5
    """Cross-validation folds for the trained heads' layer choice and calibration."""
    steps: int = 100
    """Full-batch optimiser steps for the linear and contrastive heads."""
    projection_dim: int = 64
    """Output width of the contrastive projection head."""
    contrastive_temperature: float = 0.1
    """Temperature of the supervised contrastive loss."""
    weight_decay: float = 1e-3
    """L2 penalty of the trained heads."""
    seed: int = 0
    """Seed of the trained heads' initialisation and of the fold assignment."""
    fallback: Literal["prototype", "knn"] = "knn"
    """`hybrid`: the embedding head that scores every class and answers when no hit is significant."""
    candidates: int = 200
    """`hybrid`: support sequences retrieved by embedding cosine and aligned to each query."""
    evalue: float = 1e-3
    """`hybrid`: the E-value (over the whole support) at which an alignment hit counts as evidence."""
    profile_samples: int = 50
    """`hybrid`: random sequences HMMER scores to calibrate the E-values of each query's profile,
    for each of its three score distributions. HMMER's own default, 200, takes 4x as long to build
    a profile (~22 against ~6 ms, the larger part of a search) for E-values within ~0.4 log10
    units of these (one shift per query) and the same few-shot results on every task of
    `bench/fewshot_quality.py`; classifiers saved before this setting keep 200."""
    calibration_rows: int = 1000
    """`hybrid`: support rows aligned held out to fit its weight, temperature and thresholds (a
    seeded sample of larger supports; each costs one alignment search)."""
    max_cells: int = 60_000_000
    """Largest examples x classes a fit takes (its held-out score matrices are that size, float64):
    fitting refuses more up front instead of running out of memory."""

    def __post_init__(self) -> None:
        refuse_non_finite(self)
        if self.method not in CHOICES:
            raise InvalidInputError(
                f"method must be one of {', '.join(CHOICES)}, not {self.method!r}"
            )
        if self.k < 1:
            raise InvalidInputError(f"k must be at least 1, got {self.k}")
        if not 0.0 < self.target_precision <= 1.0:
            raise InvalidInputError("target_precision must be in (0, 1]")
        if not 0.0 <= self.ood_quantile < 1.0:
            raise InvalidInputError("ood_quantile must be in [0, 1)")
        if self.multi_label_ratio is not None and not 0.0 < self.multi_label_ratio <= 1.0:
            raise InvalidInputError("multi_label_ratio must be in (0, 1]")
        if self.hierarchical not in ("auto", "yes", "no"):
            raise InvalidInputError("hierarchical must be auto, yes or no")
        if self.folds < 2:
            raise InvalidInputError(f"folds must be at least 2, got {self.folds}")
        if self.steps < 1 or self.projection_dim < 1:
            raise InvalidInputError("steps and projection_dim must be positive")
        if self.fallback not in EMBEDDING_HEADS:
            raise InvalidInputError(
                f"fallback must be one of {', '.join(EMBEDDING_HEADS)}, not {self.fallback!r}"
            )
        if min(self.candidates, self.calibration_rows, self.max_cells) < 1 or self.evalue <= 0:
            raise InvalidInputError(
                "candidates, calibration_rows, evalue and max_cells must be positive"
            )
        if self.profile_samples < MIN_PROFILE_SAMPLES:
            raise InvalidInputError(
                f"profile_samples must be at least {MIN_PROFILE_SAMPLES}, got {self.profile_samples}"
            )
        if self.contrastive_temperature <= 0 or self.weight_decay < 0:
            raise InvalidInputError("contrastive_temperature must be > 0, weight_decay >= 0")

    def resolved(self, with_sequences: bool) -> FewShotConfig:
        """This config with `auto` made the head a fit runs (and a classifier keeps)."""
        if self.method != "auto":
            return self
        return replace(self, method="hybrid" if with_sequences else "prototype")
