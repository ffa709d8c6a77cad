"""Few-shot function classifiers over protein embeddings: prototype, kNN, linear and contrastive heads.

A classifier is fitted on a handful of labelled vectors per layer (`{layer: (N, D) array}`), picks
the layer whose held-out accuracy on the support set is best, calibrates its probabilities by
temperature scaling on held-out scores, and sets its abstention thresholds from the same held-out
scores, so that `predict` says `unknown` instead of a confident wrong label:

- held-out scores are exact leave-one-out for `prototype` and `knn` (closed form), and k-fold
  cross-validation for the trained heads (`linear`, `contrastive`), which would need N refits;
- a query whose nearest support vector is less similar than almost every support vector's nearest
  other support vector is out of distribution → `unknown`. This gate uses plain cosine, before
  centring: centring on the support mean removes the direction all support vectors share, which
  is what sets them apart from unrelated proteins (IS-family classifiers on the shipped model:
  AUROC 0.93 against Pfam domains, against 0.79 centred);
- a query whose calibrated top probability is under the threshold that gave `target_precision` on
  held-out support (or, when none does, the best held-out micro-F1) is `unknown`, or, for dotted hierarchical labels (EC 1.1.1.1), the deepest
  parent (1.1.1.-) whose summed probability clears that level's own threshold;
- multi-label support (`label=A;B`): the extra labels whose probability is within a ratio of the
  top one are predicted too; the ratio is the one with the best held-out micro-F1.

Vectors are centred on the support mean and L2-normalised before every head. The core knows nothing
of models or SQL: `embed_for_fewshot` / `fit_records` / `classify_records` tie it to a protssl model,
and `save_classifier` / `load_classifier` to the store. State is JSON parameters plus one `.npz` blob
(no pickle).
"""

from __future__ import annotations

import collections
import io
import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from protssl.checkpoint import LoadedModel
from protssl.embed import EmbedConfig, embed_records_layers
from protssl.errors import InvalidInputError
from protssl.fasta import ProteinRecord

__all__ = [
    "METHODS",
    "UNKNOWN",
    "ClassifierCache",
    "FewShotClassifier",
    "FewShotConfig",
    "Prediction",
    "add_examples",
    "candidate_layers",
    "classify_records",
    "embed_for_fewshot",
    "fit_records",
    "load_classifier",
    "save_classifier",
]

log = logging.getLogger(__name__)

Method = Literal["prototype", "knn", "linear", "contrastive"]
Status = Literal["answered", "backed_off", "unknown"]
METHODS: tuple[str, ...] = ("prototype", "knn", "linear", "contrastive")
UNKNOWN = "unknown"
STATE_FORMAT = "protssl.fewshot"
STATE_VERSION = 1
_MASKED = -1.0e4  # score of a class that has no support left in a held-out fold
_TEMPERATURES = np.logspace(-3, 2, 101)


@dataclass(frozen=True)
class FewShotConfig:
    """How a few-shot classifier is fitted."""

    method: Method = "prototype"
    """prototype (cosine to class centroids), knn, linear (logistic head) or contrastive."""
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

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidInputError(
                f"method must be one of {', '.join(METHODS)}, not {self.method!r}"
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
        if self.contrastive_temperature <= 0 or self.weight_decay < 0:
            raise InvalidInputError("contrastive_temperature must be > 0, weight_decay >= 0")


@dataclass(frozen=True)
class Prediction:
    """One query's answer: labels (or `unknown`), calibrated probability, and how it was reached."""

    id: str
    labels: tuple[str, ...]
    """Predicted labels; (`unknown`,) when the classifier abstains; a parent like 1.1.1.- on back-off."""
    probability: float
    """Calibrated probability of the first label (summed over children for a parent label)."""
    status: Status
    top_label: str
    """The most probable leaf label, whatever the decision (for forced-choice accuracy)."""
    top_probability: float
    nearest_similarity: float
    """Cosine to the nearest support vector in the chosen layer (uncentred: the OOD gate's space)."""
    top: tuple[tuple[str, float], ...] = ()
    """The most probable leaf labels with their calibrated probabilities, best first."""

    @property
    def label(self) -> str:
        return ";".join(self.labels)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["labels"] = list(self.labels)
        return data


# --- vector preparation ---------------------------------------------------------------------


def _normalise(x: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
    """Rows L2-normalised in float64, after subtracting `mean` when one is given."""
    centred = x.astype(np.float64)
    if mean is not None:
        centred = centred - mean
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return centred / np.maximum(norms, 1e-12)


def _multi_hot(labels: Sequence[tuple[str, ...]], classes: Sequence[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    y = np.zeros((len(labels), len(classes)), dtype=np.float64)
    for row, names in enumerate(labels):
        for name in names:
            y[row, index[name]] = 1.0
    return y


def _softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    z = scores / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold id per row, spreading each primary class over the folds."""
    rng = np.random.default_rng(seed)
    primary = y.argmax(1)
    assignment = np.empty(len(y), dtype=np.int64)
    offset = 0
    for cls in np.unique(primary):
        rows = rng.permutation(np.flatnonzero(primary == cls))
        assignment[rows] = (np.arange(len(rows)) + offset) % folds
        offset += len(rows)
    return assignment


# --- heads: fit on normalised vectors + multi-hot targets; score = (M, C), higher is better ----


class _Head:
    """A scoring head over normalised vectors; `held_out` gives honest scores for the support."""

    name = ""

    def fit(self, x: np.ndarray, y: np.ndarray, config: FewShotConfig) -> None:
        raise NotImplementedError

    def scores(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        raise NotImplementedError

    def held_out(self, x: np.ndarray, y: np.ndarray, config: FewShotConfig) -> np.ndarray:
        """Scores of each support row from a head that never saw it (k-fold by default)."""
        out = np.full(y.shape, _MASKED)
        assignment = _folds(y, min(config.folds, len(y)), config.seed)
        for fold in np.unique(assignment):
            train = assignment != fold
            head = type(self)()
            head.fit(x[train], y[train], config)
            out[~train] = head.scores(x[~train])
        return out


def _centroids(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    sums = y.T @ x  # (C, D)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return sums / np.maximum(norms, 1e-12)


class _Prototype(_Head):
    name = "prototype"

    def fit(self, x: np.ndarray, y: np.ndarray, config: FewShotConfig) -> None:
        self.centroids = _centroids(x, y)
        self.present = y.sum(0) > 0

    def scores(self, x: np.ndarray) -> np.ndarray:
        return np.where(self.present, x @ self.centroids.T, _MASKED)

    def held_out(self, x: np.ndarray, y: np.ndarray, config: FewShotConfig) -> np.ndarray:
        sums = y.T @ x  # (C, D)
        own = y[:, :, None] * x[:, None, :]  # (N, C, D): each row's contribution to its classes
        loo = sums[None] - own
        norms = np.linalg.norm(loo, axis=2)
        cos = np.einsum("nd,ncd->nc", x, loo) / np.maximum(norms, 1e-12)
        remaining = y.sum(0)[None] - y
        return np.where(remaining > 0, cos, _MASKED)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"centroids": self.centroids, "present": self.present}

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.centroids, self.present = arrays["centroids"], arrays["present"].astype(bool)


class _KNN(_Head):
    name = "knn"

    def __init__(self, k: int = 5) -> None:
        self.k = k

    def fit(self, x: np.ndarray, y: np.ndarray, config: FewShotConfig) -> None:
        self.k = config.k
        self.support, self.targets = x, y

    def _vote(self, sims: np.ndarray) -> np.ndarray:
        k = min(self.k, sims.shape[1])
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # (M, k)
        top_sims = np.take_along_axis(sims, top, axis=1)
        weights = 1.0 / np.maximum(1.0 - top_sims, 1e-3)  # inverse cosine distance
        weights = np.where(np.isfinite(top_sims), weights, 0.0)
        votes = np.einsum("mk,mkc->mc", weights, self.targets[top])
        share = votes / np.maximum(weights.sum(1, keepdims=True), 1e-12)
        return np.log(share + 1e-4)

    def scores(self, x: np.ndarray) -> np.ndarray:
        return self._vote(x @ self.support.T)

    def held_out(self, x: np.ndarray, y: np.ndarray, config: FewShotConfig) -> np.ndarray:
        self.fit(x, y, config)
        sims = x @ x.T
        np.fill_diagonal(sims, -np.inf)
        self.k = min(config.k, len(x) - 1)
        return self._vote(sims)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"support": self.support, "targets": self.targets, "k": np.array(self.k)}

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.support, self.targets, self.k = arrays["support"], arrays["targets"], int(arrays["k"])


def _train(module: nn.Module, loss_fn: Callable[[], torch.Tensor], config: FewShotConfig) -> None:
    """Full-batch Adam. The heads are tiny: one intra-op thread avoids thread hand-off costs that
    dominate (and explode on shared cores); the caller's setting is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        optimiser = torch.optim.Adam(module.parameters(), lr=0.01, weight_decay=config.weight_decay)
        for _ in range(config.steps):
            optimiser.zero_grad()
            loss = loss_fn()
            loss.backward()
            optimiser.step()
    finally:
        torch.set_num_threads(threads)
    module.eval()


class _Linear(_Head):
    """Softmax regression (multi-label rows share their probability mass) on scaled unit vectors."""

    name = "linear"
    scale = 10.0

    def fit(self, x: np.ndarray, y: np.ndarray, config: FewShotConfig) -> None:
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            layer = nn.Linear(x.shape[1], y.shape[1])
        inputs = torch.from_numpy((x * self.scale).astype(np.float32))
        targets = torch.from_numpy((y / y.sum(1, keepdims=True)).astype(np.float32))
        present = torch.from_numpy(y.sum(0) > 0)

        def loss() -> torch.Tensor:
            logits = layer(inputs).masked_fill(~present, _MASKED)
            return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()

        _train(layer, loss, config)
        self.weight = layer.weight.detach().numpy().astype(np.float64)
        self.bias = np.where(
            present.numpy(), layer.bias.detach().numpy().astype(np.float64), _MASKED
        )

    def scores(self, x: np.ndarray) -> np.ndarray:
        return (x * self.scale) @ self.weight.T + self.bias

    def arrays(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight, "bias": self.bias}

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.weight, self.bias = arrays["weight"], arrays["bias"]


class _Projection(nn.Module):
    def __init__(self, width: int, out: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(width, 2 * out)
        self.out = nn.Linear(2 * out, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.out(F.gelu(self.hidden(x))), dim=-1)


def _supcon_loss(z: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) over one full batch of unit vectors."""
    logits = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool)
    logits = logits.masked_fill(self_mask, -1e9)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = positives & ~self_mask
    counts = pos.sum(1)
    has = counts > 0
    if not bool(has.any()):
        return z.sum() * 0.0
    mean_log_prob = (log_prob * pos).sum(1)[has] / counts[has]
    return -mean_log_prob.mean()


class _Contrastive(_Head):
    """A small MLP projection trained with a supervised contrastive loss; prototypes in its space."""

    name = "contrastive"

    def fit(self, x: np.ndarray, y: np.ndarray, config: FewShotConfig) -> None:
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            projection = _Projection(x.shape[1], config.projection_dim)
        inputs = torch.from_numpy(x.astype(np.float32))
        targets = torch.from_numpy(y)
        positives = (targets @ targets.T) > 0

        def loss() -> torch.Tensor:
            return _supcon_loss(projection(inputs), positives, config.contrastive_temperature)

        _train(projection, loss, config)
        self.params = {
            k: v.detach().numpy().astype(np.float64) for k, v in projection.state_dict().items()
        }
        self.prototype = _Prototype()
        self.prototype.fit(self._project(x), y, config)

    def _project(self, x: np.ndarray) -> np.ndarray:
        hidden = x @ self.params["hidden.weight"].T + self.params["hidden.bias"]
        hidden = 0.5 * hidden * (1.0 + _erf(hidden / math.sqrt(2.0)))  # exact GELU
        out = hidden @ self.params["out.weight"].T + self.params["out.bias"]
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def scores(self, x: np.ndarray) -> np.ndarray:
        return self.prototype.scores(self._project(x))

    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"proj.{k}": v for k, v in self.params.items()}
        out.update({f"proto.{k}": v for k, v in self.prototype.arrays().items()})
        return out

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.params = {k[5:]: v for k, v in arrays.items() if k.startswith("proj.")}
        self.prototype = _Prototype()
        self.prototype.load({k[6:]: v for k, v in arrays.items() if k.startswith("proto.")})


def _erf(x: np.ndarray) -> np.ndarray:
    return torch.erf(torch.from_numpy(x)).numpy()


_HEADS: dict[str, type[_Head]] = {
    "prototype": _Prototype,
    "knn": _KNN,
    "linear": _Linear,
    "contrastive": _Contrastive,
}


# --- calibration and thresholds ----------------------------------------------------------------


def _calibrate(scores: np.ndarray, y: np.ndarray) -> float:
    """Temperature minimising the held-out negative log-likelihood of the true label set."""
    best_t, best_nll = 1.0, math.inf
    for t in _TEMPERATURES:
        p = _softmax(scores, float(t))
        nll = -np.log(np.maximum((p * (y > 0)).sum(1), 1e-12)).mean()
        if nll < best_nll:
            best_t, best_nll = float(t), float(nll)
    return best_t


def _threshold(confidence: np.ndarray, correct: np.ndarray, target: float) -> float:
    """Lowest confidence cut whose answered held-out set reaches `target` precision.

    When no cut reaches it, the cut with the best held-out micro-F1 (abstaining costs recall).
    """
    order = np.argsort(-confidence, kind="stable")
    conf, hits = confidence[order], correct[order].astype(np.float64)
    answered = np.arange(1, len(hits) + 1)
    right = np.cumsum(hits)
    precision = right / answered
    # only cut between distinct confidence values
    last_of_value = np.append(conf[1:] < conf[:-1], True)
    ok = np.flatnonzero(last_of_value & (precision >= target))
    if len(ok):
        return float(conf[ok[-1]])
    candidates = np.flatnonzero(last_of_value)
    f1 = 2 * right[candidates] / (answered[candidates] + len(hits))
    return float(conf[candidates[np.argmax(f1)]])


_RATIOS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def _label_sets(probs: np.ndarray, ratio: float) -> np.ndarray:
    """(M, C) 0/1: the top label plus labels at >= ratio x its probability."""
    top = probs.max(1, keepdims=True)
    chosen = probs >= ratio * top
    chosen[np.arange(len(probs)), probs.argmax(1)] = True
    return chosen


def _best_ratio(probs: np.ndarray, y: np.ndarray) -> float | None:
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


def _is_hierarchical(classes: Sequence[str]) -> bool:
    depths = {len(c.split(".")) for c in classes}
    return len(depths) == 1 and depths.pop() > 1 and all("" not in c.split(".") for c in classes)


def _parent(label: str, depth: int, full_depth: int) -> str:
    """`1.1.1.1` at depth 3 → `1.1.1.-`."""
    parts = label.split(".")[:depth]
    return ".".join(parts + ["-"] * (full_depth - depth))


@dataclass
class _Level:
    """One back-off level: each leaf class's parent index at this depth, and the level's threshold."""

    depth: int
    parents: list[str]
    member: np.ndarray  # (C, P) leaf → parent one-hot
    threshold: float


def _levels(classes: Sequence[str], hierarchical: bool) -> list[_Level]:
    if not hierarchical:
        return []
    full = len(classes[0].split("."))
    levels = []
    for depth in range(full - 1, 0, -1):
        parents = sorted({_parent(c, depth, full) for c in classes})
        index = {p: i for i, p in enumerate(parents)}
        member = np.zeros((len(classes), len(parents)))
        for row, c in enumerate(classes):
            member[row, index[_parent(c, depth, full)]] = 1.0
        levels.append(_Level(depth, parents, member, 1.0))
    return levels


# --- the classifier ---------------------------------------------------------------------------


@dataclass
class FewShotClassifier:
    """A fitted few-shot classifier; build with `fit`, restore with `from_state`."""

    config: FewShotConfig
    classes: tuple[str, ...]
    layer: int
    mean: np.ndarray
    head: _Head
    temperature: float
    threshold: float
    ood_threshold: float
    multi_label_ratio: float | None
    """Extra labels at >= this fraction of the top probability; None = top label only."""
    levels: list[_Level] = field(default_factory=list)
    layer_scores: dict[int, float] = field(default_factory=dict)
    """Held-out support accuracy of each candidate layer (the best one was chosen)."""
    support_metrics: dict[str, Any] = field(default_factory=dict)
    """Held-out metrics on the support set at the chosen layer and thresholds."""
    info: dict[str, Any] = field(default_factory=dict)
    """Where the vectors came from (model sha256, pooling); checked before classifying."""
    support_nn: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    """The L2-normalised support vectors of the chosen layer (for the out-of-distribution gate)."""
    ood_centred: bool = False
    """Whether the gate works in the centred space (classifiers saved before it moved to plain
    cosine keep their gate)."""

    @classmethod
    def fit(
        cls,
        features: Mapping[int, np.ndarray],
        labels: Sequence[Sequence[str]],
        config: FewShotConfig | None = None,
        *,
        info: Mapping[str, Any] | None = None,
    ) -> FewShotClassifier:
        """Fit on `{layer: (N, D) vectors}` and N label tuples; chooses the layer by held-out accuracy."""
        config = config or FewShotConfig()
        label_sets = [tuple(dict.fromkeys(ls)) for ls in labels]
        if not features:
            raise InvalidInputError("no vectors given to fit a classifier")
        if any(not ls for ls in label_sets):
            missing = next(i for i, ls in enumerate(label_sets) if not ls)
            raise InvalidInputError(f"support example #{missing + 1} has no label (label=...)")
        if any(UNKNOWN in ls for ls in label_sets):
            raise InvalidInputError(f"{UNKNOWN!r} is reserved and cannot be a class label")
        classes = tuple(sorted({c for ls in label_sets for c in ls}))
        if len(classes) < 2:
            raise InvalidInputError(f"need at least 2 classes, got {len(classes)}: {classes}")
        if len(label_sets) < 3:
            raise InvalidInputError("need at least 3 labelled examples")
        for layer, x in features.items():
            if x.ndim != 2 or len(x) != len(label_sets):
                raise InvalidInputError(
                    f"layer {layer}: expected ({len(label_sets)}, D) vectors, got {x.shape}"
                )
        y = _multi_hot(label_sets, classes)
        hierarchical = config.hierarchical == "yes" or (
            config.hierarchical == "auto" and _is_hierarchical(classes)
        )
        if hierarchical and not _is_hierarchical(classes):
            raise InvalidInputError("hierarchical=yes needs dotted labels of one depth (1.1.1.1)")

        keys: dict[int, tuple[float, float]] = {}
        held: dict[int, tuple[np.ndarray, float]] = {}
        for layer in sorted(features):
            x = _normalise(features[layer], features[layer].astype(np.float64).mean(0))
            scores = _HEADS[config.method]().held_out(x, y, config)
            temperature = _calibrate(scores, y)
            p = _softmax(scores, temperature)
            accuracy = float((y[np.arange(len(y)), p.argmax(1)] > 0).mean())
            log_lik = float(np.log(np.maximum((p * y).sum(1), 1e-12)).mean())
            keys[layer] = (accuracy, log_lik)
            held[layer] = (scores, temperature)
        # best held-out accuracy, then likelihood; max() keeps the earliest layer on a full tie
        layer = max(sorted(keys), key=lambda k: keys[k])
        layer_scores = {k: v[0] for k, v in keys.items()}
        mean = features[layer].astype(np.float64).mean(0)
        x = _normalise(features[layer], mean)
        head = _HEADS[config.method]()
        head.fit(x, y, config)

        scores, temperature = held[layer]
        probs = _softmax(scores, temperature)
        top = probs.argmax(1)
        top_p = probs[np.arange(len(y)), top]
        correct = y[np.arange(len(y)), top] > 0
        threshold = _threshold(top_p, correct, config.target_precision)
        levels = _levels(classes, hierarchical)
        for level in levels:
            parent_p = probs @ level.member
            parent_top = parent_p.argmax(1)
            parent_true = (y @ level.member) > 0
            level.threshold = _threshold(
                parent_p[np.arange(len(y)), parent_top],
                parent_true[np.arange(len(y)), parent_top],
                config.target_precision,
            )
        support_nn = _normalise(features[layer])
        sims = support_nn @ support_nn.T
        np.fill_diagonal(sims, -np.inf)
        nearest = sims.max(1)
        ood_threshold = float(np.quantile(nearest, config.ood_quantile)) if len(x) > 1 else -1.0
        answered = top_p >= threshold
        multi_label_ratio = None
        if any(len(ls) > 1 for ls in label_sets):
            multi_label_ratio = config.multi_label_ratio or _best_ratio(probs, y)
        support_metrics = {
            "held_out": "leave-one-out"
            if config.method in ("prototype", "knn")
            else f"{min(config.folds, len(y))}-fold",
            "top1_accuracy": float(correct.mean()),
            "answered_rate": float(answered.mean()),
            "accuracy_on_answered": float(correct[answered].mean()) if answered.any() else 0.0,
            "examples": len(y),
            "classes": len(classes),
        }
        classifier = cls(
            config=config,
            classes=classes,
            layer=layer,
            mean=mean,
            head=head,
            temperature=temperature,
            threshold=threshold,
            ood_threshold=ood_threshold,
            multi_label_ratio=multi_label_ratio,
            levels=levels,
            layer_scores=layer_scores,
            support_metrics=support_metrics,
            info=dict(info or {}),
            support_nn=support_nn,
        )
        log.info(
            "fitted %s classifier: %d classes, %d examples, layer %d (held-out accuracy %.3f), "
            "T=%.3g, threshold %.3f",
            config.method,
            len(classes),
            len(y),
            layer,
            layer_scores[layer],
            temperature,
            threshold,
        )
        return classifier

    # --- inference -----------------------------------------------------------------------

    def _vectors(
        self, features: np.ndarray | Mapping[int, np.ndarray], *, centred: bool = True
    ) -> np.ndarray:
        x = features[self.layer] if isinstance(features, Mapping) else features
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise InvalidInputError(
                f"expected (M, {self.mean.shape[0]}) vectors from layer {self.layer}, got {x.shape}"
            )
        return _normalise(x, self.mean if centred else None)

    def predict_proba(self, features: np.ndarray | Mapping[int, np.ndarray]) -> np.ndarray:
        """Calibrated (M, C) probabilities over `classes`."""
        return _softmax(self.head.scores(self._vectors(features)), self.temperature)

    def nearest_similarity(self, features: np.ndarray | Mapping[int, np.ndarray]) -> np.ndarray:
        """Cosine of each query to its nearest support vector (uncentred, unless an old state)."""
        x = self._vectors(features, centred=self.ood_centred)
        return (x @ self.support_nn.T).max(1)

    def predict(
        self,
        features: np.ndarray | Mapping[int, np.ndarray],
        ids: Sequence[str] | None = None,
        *,
        top_k: int = 3,
    ) -> list[Prediction]:
        """Labels with abstention and back-off for M query vectors (from the chosen layer).

        Each prediction also lists its `top_k` most probable leaf labels, whatever the decision.
        """
        if top_k < 1:
            raise InvalidInputError(f"top_k must be at least 1, got {top_k}")
        probs = self.predict_proba(features)
        nearest = self.nearest_similarity(features)
        ids = list(ids) if ids is not None else [f"query{i}" for i in range(len(probs))]
        if len(ids) != len(probs):
            raise InvalidInputError(f"{len(ids)} ids for {len(probs)} query vectors")
        out = []
        ranked = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
        for row, query_id in enumerate(ids):
            top = int(ranked[row, 0])
            labels, probability, status = self._decide(probs[row], float(nearest[row]))
            out.append(
                Prediction(
                    id=query_id,
                    labels=labels,
                    probability=probability,
                    status=status,
                    top_label=self.classes[top],
                    top_probability=float(probs[row, top]),
                    nearest_similarity=float(nearest[row]),
                    top=tuple((self.classes[i], float(probs[row, i])) for i in ranked[row]),
                )
            )
        return out

    def _decide(self, p: np.ndarray, nearest: float) -> tuple[tuple[str, ...], float, Status]:
        """Labels, probability and status for one query's calibrated probabilities."""
        top = int(p.argmax())
        top_p = float(p[top])
        if nearest < self.ood_threshold:
            return (UNKNOWN,), 0.0, "unknown"
        if top_p >= self.threshold:
            labels = [self.classes[top]]
            if self.multi_label_ratio is not None:
                extra = np.flatnonzero(p >= self.multi_label_ratio * top_p)
                labels += [self.classes[i] for i in extra if i != top]
            return tuple(labels), top_p, "answered"
        for level in self.levels:
            parent_p = p @ level.member
            best = int(parent_p.argmax())
            if parent_p[best] >= level.threshold:
                return (level.parents[best],), float(parent_p[best]), "backed_off"
        return (UNKNOWN,), top_p, "unknown"

    # --- state -----------------------------------------------------------------------------

    def to_state(self) -> tuple[dict[str, Any], bytes]:
        """JSON-able parameters and one `.npz` blob of arrays (loadable without pickle)."""
        params: dict[str, Any] = {
            "format": STATE_FORMAT,
            "format_version": STATE_VERSION,
            "config": asdict(self.config),
            "classes": list(self.classes),
            "layer": self.layer,
            "temperature": self.temperature,
            "threshold": self.threshold,
            "ood_threshold": self.ood_threshold,
            "ood_centred": self.ood_centred,
            "multi_label_ratio": self.multi_label_ratio,
            "levels": [
                {"depth": lv.depth, "parents": lv.parents, "threshold": lv.threshold}
                for lv in self.levels
            ],
            "layer_scores": {str(k): v for k, v in self.layer_scores.items()},
            "support_metrics": dict(self.support_metrics),
            "info": dict(self.info),
        }
        arrays = {f"head.{k}": np.asarray(v) for k, v in self.head.arrays().items()}
        arrays["mean"] = self.mean
        arrays["support_nn"] = self.support_nn
        for index, level in enumerate(self.levels):
            arrays[f"level{index}.member"] = level.member
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        return params, buffer.getvalue()

    @classmethod
    def from_state(cls, params: Mapping[str, Any], blob: bytes) -> FewShotClassifier:
        """Rebuild a classifier from `to_state()` output."""
        if params.get("format") != STATE_FORMAT or params.get("format_version") != STATE_VERSION:
            raise InvalidInputError(
                f"not a protssl few-shot classifier state (format={params.get('format')!r}, "
                f"version={params.get('format_version')!r})"
            )
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        config = FewShotConfig(**params["config"])
        head = _HEADS[config.method]()
        head.load({k[5:]: v for k, v in arrays.items() if k.startswith("head.")})
        levels = [
            _Level(
                int(lv["depth"]), list(lv["parents"]), arrays[f"level{i}.member"], lv["threshold"]
            )
            for i, lv in enumerate(params["levels"])
        ]
        return cls(
            config=config,
            classes=tuple(params["classes"]),
            layer=int(params["layer"]),
            mean=arrays["mean"],
            head=head,
            temperature=float(params["temperature"]),
            threshold=float(params["threshold"]),
            ood_threshold=float(params["ood_threshold"]),
            multi_label_ratio=params["multi_label_ratio"],
            levels=levels,
            layer_scores={int(k): float(v) for k, v in params["layer_scores"].items()},
            support_metrics=dict(params["support_metrics"]),
            info=dict(params["info"]),
            support_nn=arrays["support_nn"],
            ood_centred=bool(params.get("ood_centred", True)),
        )


# --- tying the core to a protssl model -------------------------------------------------------


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
) -> dict[int, np.ndarray]:
    """Mean-pooled vectors of `records` (in input order) at each layer, from one forward per batch."""
    config = config or EmbedConfig()
    if config.pooling == "per-residue":
        raise InvalidInputError("few-shot classifiers need pooled vectors (mean or bos)")
    wanted = tuple(layers)
    position = {r.id: i for i, r in enumerate(records)}
    if len(position) != len(records):
        raise InvalidInputError("record ids must be unique to embed for a classifier")
    out: dict[int, np.ndarray] = {}
    for by_layer in embed_records_layers(records, model, wanted, config, on_batch=on_batch):
        for layer, embedding in by_layer.items():
            if layer not in out:
                out[layer] = np.zeros((len(records), embedding.vector.shape[0]), dtype=np.float32)
            out[layer][position[embedding.id]] = embedding.vector
    return out


def _model_info(model: LoadedModel, config: EmbedConfig) -> dict[str, Any]:
    return {"model_sha256": model.sha256, "model_name": model.name, "pooling": config.pooling}


def fit_records(
    records: Sequence[ProteinRecord],
    model: LoadedModel,
    config: FewShotConfig | None = None,
    *,
    layers: Iterable[int] | None = None,
    embed_config: EmbedConfig | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> FewShotClassifier:
    """Embed labelled records at the candidate layers and fit a classifier on them."""
    embed_config = embed_config or EmbedConfig()
    unlabelled = [r.id for r in records if not r.labels]
    if unlabelled:
        raise InvalidInputError(
            f"record {unlabelled[0]!r} has no label; support records need label=... in the header"
        )
    chosen = (
        tuple(layers) if layers is not None else candidate_layers(model.encoder.config.num_layers)
    )
    features = embed_for_fewshot(records, model, chosen, embed_config, on_batch=on_batch)
    return FewShotClassifier.fit(
        features,
        [r.labels for r in records],
        config,
        info=_model_info(model, embed_config),
    )


def classify_records(
    classifier: FewShotClassifier,
    records: Sequence[ProteinRecord],
    model: LoadedModel,
    *,
    embed_config: EmbedConfig | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[Prediction]:
    """Embed records at the classifier's layer with the model it was fitted on, and predict."""
    expected = classifier.info.get("model_sha256")
    if expected and expected != model.sha256:
        wanted = classifier.info.get("model_name", "?")
        raise InvalidInputError(
            f"this classifier was fitted on model {wanted} ({expected[:12]}…), not "
            f"{model.name} ({model.sha256[:12]}…); pass that model with --model"
        )
    pooling = classifier.info.get("pooling", "mean")
    embed_config = embed_config or EmbedConfig(pooling=pooling)
    if embed_config.pooling != pooling:
        raise InvalidInputError(f"this classifier needs {pooling} pooling")
    if not records:
        return []
    features = embed_for_fewshot(
        records, model, (classifier.layer,), embed_config, on_batch=on_batch
    )
    return classifier.predict(features, [r.id for r in records])


# --- the store: named, versioned classifiers --------------------------------------------------


class _StoredClassifier(Protocol):
    name: str
    version: int
    model_sha256: str
    params: dict[str, Any]
    blob: bytes
    examples: Sequence[tuple[str, str, tuple[str, ...]]]


class _ClassifierRepository(Protocol):
    def save(
        self,
        name: str,
        *,
        model_sha256: str,
        method: str,
        params: dict[str, Any],
        blob: bytes,
        examples: Sequence[tuple[str, str, tuple[str, ...]]],
        metrics: dict[str, Any],
    ) -> Any: ...

    def get(self, name: str, version: int | None = None) -> Any: ...

    def identity(self, name: str, version: int | None = None) -> tuple[Any, ...]: ...


class _Store(Protocol):
    """What this module needs of `protssl.store.Store` (kept structural: the core needs no SQL)."""

    @property
    def classifiers(self) -> _ClassifierRepository: ...


def save_classifier(
    store: _Store,
    name: str,
    classifier: FewShotClassifier,
    examples: Sequence[ProteinRecord],
) -> Any:
    """Save a fitted classifier and its support records as the next version of `name`.

    Returns the store's `StoredClassifier` (version 1 for a new name).
    """
    params, blob = classifier.to_state()
    metrics: dict[str, Any] = dict(classifier.support_metrics)
    metrics["layer_scores"] = {str(k): v for k, v in classifier.layer_scores.items()}
    metrics["layer"] = classifier.layer
    return store.classifiers.save(
        name,
        model_sha256=str(classifier.info.get("model_sha256", "")),
        method=classifier.config.method,
        params=params,
        blob=blob,
        examples=[(r.id, r.sequence, tuple(r.labels)) for r in examples],
        metrics=metrics,
    )


def load_classifier(
    store: _Store, name: str, version: int | None = None
) -> tuple[FewShotClassifier, list[ProteinRecord]]:
    """A stored classifier (latest version unless given) and the support records it was fitted on."""
    stored = store.classifiers.get(name, version)
    examples = [ProteinRecord(i, s, tuple(labels)) for i, s, labels in stored.examples]
    return _from_stored(stored), examples


def _from_stored(stored: _StoredClassifier) -> FewShotClassifier:
    """The classifier a store row holds, its info naming the row's name and version."""
    classifier = FewShotClassifier.from_state(stored.params, stored.blob)
    classifier.info.update({"name": stored.name, "version": stored.version})
    return classifier


class ClassifierCache:
    """Loaded classifiers by stored identity, for callers that classify again and again.

    A lookup costs one small query (id, version, created_at) instead of the blob, the examples and
    deserialising: a saved version never changes, so a new version, a deletion or a name reused
    after one shows up as another identity. Thread-safe; the least recently used goes first.
    """

    def __init__(self, store: _Store, max_entries: int = 32) -> None:
        self.store = store
        self.max_entries = max_entries
        self._entries: collections.OrderedDict[tuple[Any, ...], tuple[Any, FewShotClassifier]]
        self._entries = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str, version: int | None = None) -> tuple[Any, FewShotClassifier]:
        """The store's `StoredClassifier` for `name` (latest version unless given) and the model."""
        key = self.store.classifiers.identity(name, version)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                return hit
        stored = self.store.classifiers.get(name, key[1])
        entry = (stored, _from_stored(stored))
        with self._lock:  # under the identity of the row read, should it differ from `key`
            self._entries[(stored.id, stored.version, stored.created_at)] = entry
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return entry


def add_examples(
    store: _Store,
    name: str,
    records: Sequence[ProteinRecord],
    model: LoadedModel,
    *,
    on_batch: Callable[[int], None] | None = None,
) -> Any:
    """Refit `name` on its latest examples plus `records` (same config) and save the next version.

    A record whose id is already among the examples replaces it.
    """
    latest, examples = load_classifier(store, name)
    expected = latest.info.get("model_sha256")
    if expected and expected != model.sha256:
        raise InvalidInputError(
            f"classifier {name!r} was fitted on model {expected[:12]}…, not {model.sha256[:12]}…; "
            "load the same model to add examples"
        )
    new_ids = {r.id for r in records}
    merged = [r for r in examples if r.id not in new_ids] + list(records)
    classifier = fit_records(
        merged,
        model,
        latest.config,
        embed_config=EmbedConfig(pooling=latest.info.get("pooling", "mean")),
        on_batch=on_batch,
    )
    return save_classifier(store, name, classifier, merged)
