"""The scoring heads of a few-shot classifier: prototype, kNN, linear and contrastive.

Every head is fitted on L2-normalised vectors and multi-hot targets and scores queries as (M, C),
higher is better. `held_out` gives honest scores for the support set itself: exact leave-one-out
for `prototype` and `knn` (closed form), k-fold cross-validation for the trained heads (`linear`,
`contrastive`), which would need N refits. The trained heads are tiny torch modules fitted by
full-batch Adam; their weights are kept as numpy arrays, so a fitted head scores without torch
modules and its state is plain arrays.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from protssl.errors import InvalidInputError
from protssl.fewshot.config import HMMER_PROFILE_SAMPLES, FewShotConfig

if TYPE_CHECKING:
    from protssl.fewshot.alignment import Aligner

__all__ = [
    "HEADS",
    "Head",
    "HybridHead",
    "label_classes",
    "label_sets",
    "multi_hot",
    "normalise",
]

_MASKED = -1.0e4  # score of a class that has no support left in a held-out fold
_QUERY_BLOCK = 512
"""Query rows scored against the support at once: memory stays rows x support, not N x N."""


def normalise(x: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
    """Rows L2-normalised in float64, after subtracting `mean` when one is given."""
    centred = x.astype(np.float64)
    if mean is not None:
        centred = centred - mean
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return centred / np.maximum(norms, 1e-12)


def label_sets(labels: Sequence[str | Sequence[str]]) -> list[tuple[str, ...]]:
    """Each example's labels once each, in their order; a string is one label, not its letters."""
    return [tuple(dict.fromkeys((ls,) if isinstance(ls, str) else ls)) for ls in labels]


def label_classes(labels: Sequence[tuple[str, ...]]) -> tuple[str, ...]:
    """The classes a fit on `labels` (from `label_sets`) has: every label, sorted."""
    return tuple(sorted({c for ls in labels for c in ls}))


def multi_hot(labels: Sequence[tuple[str, ...]], classes: Sequence[str]) -> np.ndarray:
    """(N, C) 0/1 targets: row n has a 1 at each of its labels' class columns."""
    index = {c: i for i, c in enumerate(classes)}
    y = np.zeros((len(labels), len(classes)), dtype=np.float64)
    for row, names in enumerate(labels):
        for name in names:
            y[row, index[name]] = 1.0
    return y


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


class Head:
    """A scoring head over normalised vectors; `held_out` gives honest scores for the support."""

    name = ""

    def fit(self, x: np.ndarray, y: np.ndarray, config: FewShotConfig) -> None:
        """Fit on (N, D) normalised vectors and their (N, C) multi-hot targets."""
        raise NotImplementedError

    def scores(self, x: np.ndarray) -> np.ndarray:
        """(M, C) scores of M normalised query vectors; a class without support scores lowest."""
        raise NotImplementedError

    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted parameters as named arrays (saved without pickle)."""
        raise NotImplementedError

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Restore the parameters `arrays()` gave."""
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


class _Prototype(Head):
    name = "prototype"

    def fit(self, x: np.ndarray, y: np.ndarray, config: FewShotConfig) -> None:
        self.centroids = _centroids(x, y)
        self.present = y.sum(0) > 0

    def scores(self, x: np.ndarray) -> np.ndarray:
        return np.where(self.present, x @ self.centroids.T, _MASKED)

    def held_out(self, x: np.ndarray, y: np.ndarray, config: FewShotConfig) -> np.ndarray:
        # leave-one-out centroid of class c for row n: sums_c - y_nc x_n; its dot with x_n and its
        # norm follow from (N, C) products, so memory stays N x C (no N x C x D tensor)
        sums = y.T @ x  # (C, D)
        dots = x @ sums.T  # (N, C)
        own = (x * x).sum(1)[:, None]  # (N, 1)
        loo_dots = dots - y * own
        loo_sq = (sums * sums).sum(1)[None] - 2.0 * y * dots + y * y * own
        cos = loo_dots / np.maximum(np.sqrt(np.maximum(loo_sq, 0.0)), 1e-12)
        remaining = y.sum(0)[None] - y
        return np.where(remaining > 0, cos, _MASKED)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"centroids": self.centroids, "present": self.present}

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.centroids, self.present = arrays["centroids"], arrays["present"].astype(bool)


class _KNN(Head):
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
        votes = np.zeros((len(sims), self.targets.shape[1]))
        for j in range(k):  # one (M, C) slice at a time: no (M, k, C) tensor
            votes += weights[:, j, None] * self.targets[top[:, j]]
        share = votes / np.maximum(weights.sum(1, keepdims=True), 1e-12)
        return np.log(share + 1e-4)

    def scores(self, x: np.ndarray) -> np.ndarray:
        return self._votes(x)

    def _votes(self, x: np.ndarray, *, leave_out: bool = False) -> np.ndarray:
        """Votes of each query, a block of rows at a time (no queries x support matrix);
        `leave_out`: the queries are the support rows, each kept out of its own vote."""
        out = np.empty((len(x), self.targets.shape[1]))
        for start in range(0, len(x), _QUERY_BLOCK):
            sims = x[start : start + _QUERY_BLOCK] @ self.support.T
            if leave_out:
                rows = np.arange(len(sims))
                sims[rows, rows + start] = -np.inf
            out[start : start + len(sims)] = self._vote(sims)
        return out

    def held_out(self, x: np.ndarray, y: np.ndarray, config: FewShotConfig) -> np.ndarray:
        self.fit(x, y, config)
        self.k = min(config.k, len(x) - 1)
        return self._votes(x, leave_out=True)

    def arrays(self) -> dict[str, np.ndarray]:
        rows, cols = np.nonzero(self.targets)  # sparse: the (N, C) targets are mostly zeros
        return {
            "support": self.support,
            "target_rows": rows,
            "target_cols": cols,
            "classes": np.array(self.targets.shape[1]),
            "k": np.array(self.k),
        }

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.support, self.k = arrays["support"], int(arrays["k"])
        if "targets" in arrays:  # states saved before the targets went sparse
            self.targets = arrays["targets"]
            return
        self.targets = np.zeros((len(self.support), int(arrays["classes"])))
        self.targets[arrays["target_rows"], arrays["target_cols"]] = 1.0


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to `threads` inside, and back to exactly what it was after.

    The count is process-wide: torch work on other threads meanwhile runs on that many threads too
    (in the service, heads are fitted on the model worker, where no batch runs meanwhile).
    """
    before = torch.get_num_threads()
    if before == threads:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(module: nn.Module, loss_fn: Callable[[], torch.Tensor], config: FewShotConfig) -> None:
    """Full-batch Adam on one intra-op thread: the heads are so small that handing work to more
    threads costs more than it saves (fitting `linear` on examples/labelled.fasta, 72 records x 5
    layers, on 2 busy cores: 2.3 s on one thread, 41 s on torch's default two)."""
    with _torch_threads(1):
        optimiser = torch.optim.Adam(module.parameters(), lr=0.01, weight_decay=config.weight_decay)
        for _ in range(config.steps):
            optimiser.zero_grad()
            loss = loss_fn()
            loss.backward()
            optimiser.step()
    module.eval()


class _Linear(Head):
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


class _Contrastive(Head):
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


_MAX_SIGNIFICANCE = 100.0
"""-log10(E-value) is capped here: beyond it every hit is equally certain."""
_WEIGHTS = np.logspace(-2, 1, 7)
"""Weights of alignment significance against embedding score that `hybrid` chooses from."""


class HybridHead(Head):
    """Embedding retrieval, then alignment: each class scores `fallback + weight x significance`.

    Significance is -log10 of the E-value of the class's best hit among the query's `candidates`
    nearest support vectors (cosine), counted only at or under `config.evalue`; a query without
    such a hit keeps the embedding head's scores alone, at the embedding head's own temperature.
    The weight and the hit rows' temperature are those whose held-out likelihood on support rows
    with a hit is best, so both branches come out calibrated (the classifier's temperature then
    stays near 1). Scoring needs the query sequences (`score_queries`).
    """

    name = "hybrid"

    def __init__(self, sequences: Sequence[str] = ()) -> None:
        self.sequences = list(sequences)
        self.weight = self.hit_scale = self.miss_scale = 1.0
        self.fallback: str = "knn"
        self.held_rows = np.zeros(0, dtype=np.int64)
        self.held_hits = np.zeros(0, dtype=bool)
        self.profile_samples = HMMER_PROFILE_SAMPLES
        self._aligner: Aligner | None = None

    def _setup(self, x: np.ndarray, y: np.ndarray, config: FewShotConfig) -> None:
        if len(self.sequences) != len(x):
            raise InvalidInputError(
                f"the hybrid head needs one support sequence per example: "
                f"{len(self.sequences)} sequences for {len(x)} examples"
            )
        self.fallback, self.candidates, self.evalue = (
            config.fallback,
            config.candidates,
            config.evalue,
        )
        if self.profile_samples != config.profile_samples:
            self.profile_samples, self._aligner = config.profile_samples, None
        self.support, self.n_classes = x, y.shape[1]
        self.members = [np.flatnonzero(row) for row in y]

    def _align(self) -> Aligner:
        if self._aligner is None:
            from protssl.fewshot.alignment import Aligner

            self._aligner = Aligner(self.sequences, profile_samples=self.profile_samples)
        return self._aligner

    def significance(
        self,
        x: np.ndarray,
        queries: Sequence[str],
        *,
        leave_out: np.ndarray | None = None,
        on_search: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """(M, C) -log10 E-value of each class's best significant hit among the candidates (0: none).

        `leave_out`: the support row each query is (held-out scoring), kept out of its candidates.
        Queries are searched on torch's threads at once (the thread budget embedding has);
        `on_search` gets each query's residues as its search ends (progress).
        """
        out = np.zeros((len(queries), self.n_classes))
        aligner = self._align()
        k = min(self.candidates, len(self.support) - (0 if leave_out is None else 1))
        if k < 1:
            return out
        for start in range(0, len(queries), _QUERY_BLOCK):
            sims = x[start : start + _QUERY_BLOCK] @ self.support.T
            if leave_out is not None:
                rows = np.arange(len(sims))
                sims[rows, leave_out[start : start + len(sims)]] = -np.inf
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            orders = [
                candidates[np.argsort(-sims[offset, candidates], kind="stable")].tolist()
                for offset, candidates in enumerate(top)
            ]
            block = queries[start : start + len(orders)]
            searches = aligner.search_many(block, orders, torch.get_num_threads())
            # closed at once if `on_search` raises: the searches not started are dropped
            with contextlib.closing(searches) as searched:
                for row, hits in enumerate(searched, start):
                    if on_search is not None:
                        on_search(len(queries[row]))
                    for index, evalue, _ in hits:
                        if evalue > self.evalue:
                            break
                        value = min(-math.log10(max(evalue, 1e-300)), _MAX_SIGNIFICANCE)
                        cols = self.members[index]
                        out[row, cols] = np.maximum(out[row, cols], value)
        return out

    @staticmethod
    def aligned_rows(y: np.ndarray, config: FewShotConfig) -> np.ndarray:
        """The support rows a fit aligns held out: the informative rows (the others say nothing),
        at most `config.calibration_rows` of them, drawn with `config.seed`; each costs one search."""
        from protssl.fewshot import calibration

        useful = np.flatnonzero(calibration.informative(y))
        pool = useful if len(useful) else np.arange(len(y))
        if len(pool) > config.calibration_rows:
            rng = np.random.default_rng(config.seed)
            pool = np.sort(rng.choice(pool, size=config.calibration_rows, replace=False))
        return pool

    def held_out(
        self,
        x: np.ndarray,
        y: np.ndarray,
        config: FewShotConfig,
        *,
        on_search: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Leave-one-out scores; only the rows of `held_rows` (`aligned_rows`) are aligned (and
        valid). `on_search` gets each one's residues as its search ends; raising stops the fit."""
        from protssl.fewshot import calibration

        self._setup(x, y, config)
        evidence = calibration.informative(y)
        pool = self.held_rows = self.aligned_rows(y, config)
        embedding = HEADS[config.fallback]().held_out(x, y, config)
        # the embedding head's own temperature, from every informative row: a query without a
        # significant hit gets the probabilities the embedding head alone would give it
        self.miss_scale = 1.0 / calibration.fit_temperature(embedding, y, evidence).temperature
        align = np.zeros_like(embedding)
        align[pool] = self.significance(
            x[pool], [self.sequences[i] for i in pool], leave_out=pool, on_search=on_search
        )
        self.held_hits = align.max(1) > 0
        hits = pool[self.held_hits[pool]]
        best = -math.inf
        self.weight, self.hit_scale = 1.0, self.miss_scale
        for weight in _WEIGHTS if len(hits) else ():
            scores = embedding[hits] + weight * align[hits]
            fit = calibration.fit_temperature(scores, y[hits], evidence[hits])
            if fit.log_likelihood > best:
                best, self.weight = fit.log_likelihood, float(weight)
                self.hit_scale = 1.0 / fit.temperature
        return self._combine(embedding, align, self.held_hits)

    def _combine(self, embedding: np.ndarray, align: np.ndarray, hits: np.ndarray) -> np.ndarray:
        """Rows with a significant hit: (embedding + weight x significance) / their temperature;
        the others: the embedding scores over the embedding head's temperature."""
        combined = (embedding + self.weight * align) * self.hit_scale
        return np.where(hits[:, None], combined, embedding * self.miss_scale)

    def fit(self, x: np.ndarray, y: np.ndarray, config: FewShotConfig) -> None:
        self._setup(x, y, config)
        self.embedding = HEADS[config.fallback]()
        self.embedding.fit(x, y, config)

    def scores(self, x: np.ndarray) -> np.ndarray:
        raise InvalidInputError("the hybrid head scores queries with their sequences")

    def score_queries(
        self,
        x: np.ndarray,
        sequences: Sequence[str],
        on_search: Callable[[int], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(M, C) scores and, per query, whether a significant hit (alignment evidence) scored it."""
        if len(sequences) != len(x):
            raise InvalidInputError(f"{len(sequences)} query sequences for {len(x)} query vectors")
        align = self.significance(x, sequences, on_search=on_search)
        hits = align.max(1) > 0
        return self._combine(self.embedding.scores(x), align, hits), hits

    def arrays(self) -> dict[str, np.ndarray]:
        from protssl.fewshot.alignment import pack

        rows = np.repeat(np.arange(len(self.members)), [len(m) for m in self.members])
        out = {f"embedding.{k}": v for k, v in self.embedding.arrays().items()}
        out.update({f"sequences.{k}": v for k, v in pack(self.sequences).items()})
        out.update(
            {
                "support": self.support,
                "member_rows": rows,
                "member_cols": np.concatenate([*self.members, np.zeros(0, dtype=np.int64)]),
                "classes": np.array(self.n_classes),
                "weight": np.array(self.weight),
                "scales": np.array([self.hit_scale, self.miss_scale]),
                "candidates": np.array(self.candidates),
                "evalue": np.array(self.evalue),
                "fallback": np.array(self.fallback),
                "profile_samples": np.array(self.profile_samples),
            }
        )
        return out

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        from protssl.fewshot.alignment import unpack

        self.fallback = str(arrays["fallback"])
        self.embedding = HEADS[self.fallback]()
        self.embedding.load({k[10:]: v for k, v in arrays.items() if k.startswith("embedding.")})
        self.sequences = unpack(
            {k[10:]: v for k, v in arrays.items() if k.startswith("sequences.")}
        )
        self.support = arrays["support"]
        self.n_classes = int(arrays["classes"])
        rows, cols = arrays["member_rows"], arrays["member_cols"]
        counts = np.bincount(rows, minlength=len(self.support))
        self.members = np.split(cols, np.cumsum(counts)[:-1])
        self.weight, self.candidates = float(arrays["weight"]), int(arrays["candidates"])
        self.hit_scale, self.miss_scale = (float(v) for v in arrays["scales"])
        self.evalue = float(arrays["evalue"])
        self.profile_samples = int(arrays.get("profile_samples", HMMER_PROFILE_SAMPLES))
        self._aligner = None


HEADS: dict[str, type[Head]] = {
    "prototype": _Prototype,
    "knn": _KNN,
    "linear": _Linear,
    "contrastive": _Contrastive,
    "hybrid": HybridHead,
}
