"""A fitted few-shot classifier: layer choice, calibration, abstention, predictions and state.

`FewShotClassifier.fit` takes a handful of labelled vectors per layer (`{layer: (N, D) array}`),
picks the layer whose held-out accuracy on the support set is best, calibrates its probabilities by
temperature scaling on held-out scores, and sets its abstention thresholds from the same held-out
scores, so that `predict` says `unknown` instead of a confident wrong label:

- a query whose nearest support vector is less similar than almost every support vector's nearest
  other support vector is out of distribution → `unknown`. This gate uses plain cosine, before
  centring: centring on the support mean removes the direction all support vectors share, which
  is what sets them apart from unrelated proteins (IS-family classifiers on the shipped model:
  AUROC 0.93 against Pfam domains, against 0.79 centred);
- a query whose calibrated top probability is under the threshold that gave `target_precision` on
  held-out support (or, when none does, the most precise one) is `unknown`, or, for dotted
  hierarchical labels (EC 1.1.1.1), the deepest parent (1.1.1.-) whose summed probability clears
  that level's own threshold;
- multi-label support (`label=A;B`): the extra labels whose probability is within a ratio of the
  top one are predicted too; the ratio is the one with the best held-out micro-F1.

Vectors are centred on the support mean and L2-normalised before every head. State is JSON
parameters plus one `.npz` blob (no pickle).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

import protssl.fewshot.calibration as calibration
from protssl.errors import InvalidInputError
from protssl.fewshot.config import HMMER_PROFILE_SAMPLES, FewShotConfig
from protssl.fewshot.heads import (
    HEADS,
    Head,
    HybridHead,
    label_classes,
    label_sets,
    multi_hot,
    normalise,
)

__all__ = [
    "UNKNOWN",
    "Evidence",
    "FewShotClassifier",
    "Prediction",
    "Reason",
    "Status",
    "require_labels",
    "support_classes",
]

log = logging.getLogger(__name__)

Status = Literal["answered", "backed_off", "unknown"]
Evidence = Literal["alignment", "embedding"]
Reason = Literal["out_of_distribution", "below_threshold"]
UNKNOWN = "unknown"
STATE_FORMAT = "protssl.fewshot"
STATE_VERSION = 1


@dataclass(frozen=True)
class Prediction:
    """One query's answer: labels (or `unknown`), calibrated probability, and how it was reached."""

    id: str
    labels: tuple[str, ...]
    """Predicted labels; (`unknown`,) when the classifier abstains; a parent like 1.1.1.- on back-off."""
    probability: float
    """Calibrated probability of the decision: of the first label when answered, of the parent
    (summed over its leaves) when backed off, and of the top leaf label, the one declined, when
    `unknown` (whatever the `reason`; then it equals `top_probability`)."""
    status: Status
    top_label: str
    """The most probable leaf label, whatever the decision (for forced-choice accuracy)."""
    top_probability: float
    nearest_similarity: float
    """Cosine to the nearest support vector in the chosen layer (uncentred: the OOD gate's space)."""
    top: tuple[tuple[str, float], ...] = ()
    """The most probable leaf labels with their calibrated probabilities, best first."""
    evidence: Evidence = "embedding"
    """What the top label rests on: `alignment` (a significant hit, hybrid method) or `embedding`."""
    reason: Reason | None = None
    """Why a query is `unknown`: `out_of_distribution` (its nearest support example is under the
    gate's cosine, `nearest_similarity`) or `below_threshold` (in distribution, but its top label's
    probability is under the confidence cut and no back-off level's parent clears its own);
    None when answered or backed off."""

    @property
    def label(self) -> str:
        """The labels joined by `;`, as TSV output and the wire show them."""
        return ";".join(self.labels)

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (labels as a list)."""
        data = asdict(self)
        data["labels"] = list(self.labels)
        return data


def support_classes(examples: Sequence[tuple[str, ...]], config: FewShotConfig) -> tuple[str, ...]:
    """The classes of labelled `examples` (from `label_sets`), once they are a support a classifier
    can be fitted on: 2 classes or more, 3 examples or more, within `config.max_cells`. Checked
    before any vector is computed, and again by the fit."""
    classes = label_classes(examples)
    if len(classes) < 2:
        raise InvalidInputError(
            f"need at least 2 classes, got {len(classes)}: {', '.join(map(repr, classes))}"
        )
    if len(examples) < 3:
        raise InvalidInputError("need at least 3 labelled examples")
    if len(examples) * len(classes) > config.max_cells:
        raise InvalidInputError(
            f"{len(examples)} examples x {len(classes)} classes = "
            f"{len(examples) * len(classes):,} held-out scores, over the limit of "
            f"{config.max_cells:,} (max_cells; 8 bytes each): fit fewer classes or examples"
        )
    return classes


def require_labels(
    labels: Sequence[Sequence[str]], ids: Sequence[str] | None = None, *, source: str = ""
) -> None:
    """Refuse rows without a label, naming the first three and counting the rest: support and
    evaluation truth need one each; and the first row labelled `unknown`, the abstention's label.

    A row is named by its id when `ids` are given, else by its position; `source` (a file) is
    prefixed to the message.
    """
    where = f"{source}: " if source else ""

    def name(row: int) -> str:
        return f"record {ids[row]!r}" if ids is not None else f"support example #{row + 1}"

    reserved = next((row for row, names in enumerate(labels) if UNKNOWN in names), None)
    if reserved is not None:
        raise InvalidInputError(
            f"{where}{name(reserved)} has the label {UNKNOWN!r}, which a classifier answers when "
            "it abstains: name that class otherwise"
        )
    missing = [row for row, names in enumerate(labels) if not names]
    if not missing:
        return
    named = [name(row) for row in missing[:3]]
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    rows = "records" if ids is not None else "support examples"
    what = f"{named[0]} has" if len(missing) == 1 else f"{len(missing)} {rows} have"
    listed = "" if len(missing) == 1 else f": {', '.join(named)}{more}"
    raise InvalidInputError(
        f"{where}{what} no label{listed} (write >ID label=A or label=A;B in the FASTA header)"
    )


@dataclass
class FewShotClassifier:
    """A fitted few-shot classifier; build with `fit`, restore with `from_state`."""

    config: FewShotConfig
    classes: tuple[str, ...]
    layer: int
    mean: np.ndarray
    head: Head
    temperature: float
    threshold: float
    ood_threshold: float
    multi_label_ratio: float | None
    """Extra labels at >= this fraction of the top probability; None = top label only."""
    levels: list[calibration.Level] = field(default_factory=list)
    layer_scores: dict[int, float] = field(default_factory=dict)
    """Held-out support accuracy of each candidate layer (the best one was chosen)."""
    support_metrics: dict[str, Any] = field(default_factory=dict)
    """Held-out metrics on the support set at the chosen layer and thresholds."""
    info: dict[str, Any] = field(default_factory=dict)
    """Where the vectors came from (model sha256, pooling); checked before classifying."""
    support_nn: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    """The L2-normalised support vectors of the chosen layer (for the out-of-distribution gate)."""
    fallback_threshold: float | None = None
    """`hybrid`: the confidence cut of answers without alignment evidence (`threshold` is then
    the cut of those with it); None for the other methods."""
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
        sequences: Sequence[str] | None = None,
        on_search: Callable[[int], None] | None = None,
    ) -> FewShotClassifier:
        """Fit on `{layer: (N, D) vectors}` and N label tuples (a string is one label, not its
        letters); chooses the layer by held-out accuracy.

        `sequences` (the N support sequences) are needed by the `hybrid` method, which `auto` (the
        default) then is; it chooses its layer by its embedding head's held-out accuracy. Its
        held-out alignments report each search's residues to `on_search` (progress; raising
        stops the fit).
        """
        config = (config or FewShotConfig()).resolved(with_sequences=sequences is not None)
        examples = label_sets(labels)
        if not features:
            raise InvalidInputError("no vectors given to fit a classifier")
        require_labels(examples)
        classes = support_classes(examples, config)
        if config.method == "hybrid" and (sequences is None or len(sequences) != len(examples)):
            raise InvalidInputError(
                "the hybrid method needs the support sequences, one per example"
            )
        for layer, x in features.items():
            if x.ndim != 2 or len(x) != len(examples):
                raise InvalidInputError(
                    f"layer {layer}: expected ({len(examples)}, D) vectors, got {x.shape}"
                )
        y = multi_hot(examples, classes)
        hierarchical = config.hierarchical == "yes" or (
            config.hierarchical == "auto" and calibration.is_hierarchical(classes)
        )
        if hierarchical and not calibration.is_hierarchical(classes):
            raise InvalidInputError("hierarchical=yes needs dotted labels of one depth (1.1.1.1)")

        keys: dict[int, tuple[float, float]] = {}
        held: dict[int, tuple[np.ndarray, float]] = {}
        selector = config.fallback if config.method == "hybrid" else config.method
        for layer in sorted(features):
            x = normalise(features[layer], features[layer].astype(np.float64).mean(0))
            scores = HEADS[selector]().held_out(x, y, config)
            temperature = calibration.calibrate(scores, y)
            p = calibration.softmax(scores, temperature)
            accuracy = float((y[np.arange(len(y)), p.argmax(1)] > 0).mean())
            log_lik = float(np.log(np.maximum((p * y).sum(1), 1e-12)).mean())
            keys[layer] = (accuracy, log_lik)
            held[layer] = (scores, temperature)
        # best held-out accuracy, then likelihood; max() keeps the earliest layer on a full tie
        layer = max(sorted(keys), key=lambda k: keys[k])
        layer_scores = {k: v[0] for k, v in keys.items()}
        mean = features[layer].astype(np.float64).mean(0)
        x = normalise(features[layer], mean)
        # thresholds from rows that could be right: a lone example of its class never is
        evidence = calibration.informative(y)
        if config.method == "hybrid":
            hybrid = HybridHead(list(sequences or ()))
            scores = hybrid.held_out(x, y, config, on_search=on_search)
            rows = hybrid.held_rows  # the support rows it aligned held out (a sample of a big one)
            scores, y_held, evidence = scores[rows], y[rows], evidence[rows]
            aligned = hybrid.held_hits[rows]
            temperature = calibration.calibrate(scores, y_held, evidence)
            head: Head = hybrid
        else:
            head = HEADS[config.method]()
            scores, temperature = held[layer]
            y_held, aligned = y, np.zeros(len(y), dtype=bool)
        head.fit(x, y, config)

        probs = calibration.softmax(scores, temperature)
        top = probs.argmax(1)
        top_p = probs[np.arange(len(y_held)), top]
        correct = y_held[np.arange(len(y_held)), top] > 0

        def cut(rows: np.ndarray, strict: bool = False) -> float:
            return calibration.precision_threshold(
                top_p[rows], correct[rows], config.target_precision, strict=strict
            )

        # hybrid: a cut for answers resting on alignment and one for the embedding fallback, so
        # that precise alignments do not carry imprecise embedding answers past a shared cut; the
        # fallback answers only where its held-out answers reach the target precision
        cut_rows = evidence & aligned if (evidence & aligned).any() else evidence
        threshold = cut(cut_rows)
        fallback_threshold = None
        if config.method == "hybrid":
            fallback_threshold = cut(evidence & ~aligned, strict=True)
        levels = calibration.back_off_levels(classes, hierarchical)
        for level in levels:
            parent_p = probs[evidence] @ level.member
            parent_top = parent_p.argmax(1)
            parent_true = (y_held[evidence] @ level.member) > 0
            rows = np.arange(len(parent_p))
            level.threshold = calibration.precision_threshold(
                parent_p[rows, parent_top], parent_true[rows, parent_top], config.target_precision
            )
        support_nn = normalise(features[layer])
        nearest = _nearest_other(support_nn)
        ood_threshold = float(np.quantile(nearest, config.ood_quantile)) if len(x) > 1 else -1.0
        fallback_cut = threshold if fallback_threshold is None else fallback_threshold
        answered = top_p >= np.where(aligned, threshold, fallback_cut)
        multi_label_ratio = None
        if any(len(ls) > 1 for ls in examples):
            multi_label_ratio = config.multi_label_ratio or calibration.best_ratio(probs, y_held)
        support_metrics = {
            "held_out": "leave-one-out"
            if config.method in ("prototype", "knn", "hybrid")
            else f"{min(config.folds, len(y))}-fold",
            "top1_accuracy": float(correct.mean()),
            "informative_examples": int(evidence.sum()),
            "held_out_examples": len(y_held),
            "answered_rate": float(answered.mean()),
            "accuracy_on_answered": float(correct[answered].mean()) if answered.any() else None,
            "best_precision": calibration.best_precision(top_p[cut_rows], correct[cut_rows]),
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
            fallback_threshold=fallback_threshold,
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
        return normalise(x, self.mean if centred else None)

    def predict_proba(
        self,
        features: np.ndarray | Mapping[int, np.ndarray],
        sequences: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Calibrated (M, C) probabilities over `classes` (`sequences`: the queries', for hybrid)."""
        return self._scored(features, sequences)[0]

    def _scored(
        self,
        features: np.ndarray | Mapping[int, np.ndarray],
        sequences: Sequence[str] | None,
        on_search: Callable[[int], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities and, per query, whether alignment evidence decided its top."""
        x = self._vectors(features)
        if isinstance(self.head, HybridHead):
            if sequences is None:
                raise InvalidInputError("a hybrid classifier needs the query sequences")
            scores, aligned = self.head.score_queries(x, sequences, on_search)
        else:
            scores, aligned = self.head.scores(x), np.zeros(len(x), dtype=bool)
        return calibration.softmax(scores, self.temperature), aligned

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
        sequences: Sequence[str] | None = None,
        on_search: Callable[[int], None] | None = None,
    ) -> list[Prediction]:
        """Labels with abstention and back-off for M query vectors (from the chosen layer).

        Each prediction also lists its `top_k` most probable leaf labels, whatever the decision,
        and the evidence it rests on; `sequences` (the queries') are needed by hybrid classifiers,
        which call `on_search` with each query's residues once its alignment search is done.
        """
        if top_k < 1:
            raise InvalidInputError(f"top_k must be at least 1, got {top_k}")
        probs, aligned = self._scored(features, sequences, on_search)
        nearest = self.nearest_similarity(features)
        ids = list(ids) if ids is not None else [f"query{i}" for i in range(len(probs))]
        if len(ids) != len(probs):
            raise InvalidInputError(f"{len(ids)} ids for {len(probs)} query vectors")
        out = []
        ranked = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
        for row, query_id in enumerate(ids):
            top = int(ranked[row, 0])
            labels, probability, status, reason = self._decide(
                probs[row], float(nearest[row]), bool(aligned[row])
            )
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
                    evidence="alignment" if aligned[row] else "embedding",
                    reason=reason,
                )
            )
        return out

    def _decide(
        self, p: np.ndarray, nearest: float, aligned: bool = False
    ) -> tuple[tuple[str, ...], float, Status, Reason | None]:
        """Labels, probability, status and, when unknown, why, for one query's calibrated
        probabilities; an unknown's probability is its top label's, whatever the reason.

        A significant alignment hit (`aligned`) puts the query in distribution whatever its cosine.
        """
        top = int(p.argmax())
        top_p = float(p[top])
        if nearest < self.ood_threshold and not aligned:
            return (UNKNOWN,), top_p, "unknown", "out_of_distribution"
        cut = self.threshold
        if not aligned and self.fallback_threshold is not None:
            cut = self.fallback_threshold
        if top_p >= cut:
            labels = [self.classes[top]]
            if self.multi_label_ratio is not None:
                extra = np.flatnonzero(p >= self.multi_label_ratio * top_p)
                labels += [self.classes[i] for i in extra if i != top]
            return tuple(labels), top_p, "answered", None
        for level in self.levels:
            parent_p = p @ level.member
            best = int(parent_p.argmax())
            if parent_p[best] >= level.threshold:
                return (level.parents[best],), float(parent_p[best]), "backed_off", None
        return (UNKNOWN,), top_p, "unknown", "below_threshold"

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
            "fallback_threshold": self.fallback_threshold,
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
        # saved before profile_samples existed: fitted with HMMER's own
        config = FewShotConfig(**{"profile_samples": HMMER_PROFILE_SAMPLES, **params["config"]})
        head = HEADS[config.method]()
        head.load({k[5:]: v for k, v in arrays.items() if k.startswith("head.")})
        # saved before single-parent levels were left out: such a level is dropped, as a refit
        # would, so a query that only it caught is unknown (below_threshold)
        levels = [
            calibration.Level(
                int(lv["depth"]), list(lv["parents"]), arrays[f"level{i}.member"], lv["threshold"]
            )
            for i, lv in enumerate(params["levels"])
            if calibration.tells_apart(lv["parents"])
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
            fallback_threshold=params.get("fallback_threshold"),
        )


def _nearest_other(x: np.ndarray, block: int = 1024) -> np.ndarray:
    """Each row's highest dot product with another row, a block of rows at a time (no N x N)."""
    out = np.empty(len(x))
    for start in range(0, len(x), block):
        sims = x[start : start + block] @ x.T
        rows = np.arange(len(sims))
        sims[rows, rows + start] = -np.inf
        out[start : start + block] = sims.max(1)
    return out
