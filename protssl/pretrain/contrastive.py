"""Contrastive self-supervision: pairs of views, cluster positives, the projection head, NT-Xent.

A pair is an anchor protein and its positive: with chance `cluster_positive_rate` (when clusters
are given and the anchor's cluster has another member) a different member of the anchor's
cluster, else the anchor itself. Each side is a random crop (a window of 50-100% of the cropped
length at a random offset); the loop then masks both sides with the MLM noise (`mask_tokens`), so
the views differ by crop and by masking/substitution, and in `mlm+contrastive` the masked-LM loss
comes from the same forward. With clusters, each pool holds one anchor per cluster (clusters are
drawn without replacement), so no batch holds two anchors of one cluster: no false negatives from
a shared cluster. Without clusters, anchors are distinct records.

The loss is NT-Xent (SimCLR): the mean-pooled last layer (`embed`'s mean pooling) goes through a
small MLP head (trained with the encoder, never exported), and each of the 2N projected views must
pick its partner among the other 2N-1 of its micro-batch. Under DDP the negatives are those of the
rank's own micro-batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from protssl.alphabet import ALPHABET, tokenize
from protssl.embedding import mean_over_residues
from protssl.errors import InvalidInputError
from protssl.model import ProteinEncoder
from protssl.pretrain.config import PretrainConfig
from protssl.pretrain.data import DataPosition, TrainingCorpus, micro_batches
from protssl.pretrain.objective import selected_lm_loss

__all__ = [
    "MIN_VIEW_FRACTION",
    "PROJECTION_DIM",
    "ContrastiveModel",
    "ProjectionHead",
    "contrastive_batches",
    "contrastive_losses",
    "nt_xent",
    "pool_pairs",
    "seeded_head",
    "view_crop",
]

MIN_VIEW_FRACTION = 0.5
"""A view keeps at least this share of the (cropped) sequence."""
PROJECTION_DIM = 128
"""Width of the projection the loss compares (capped at the encoder's width)."""


class ProjectionHead(nn.Module):
    """SimCLR's head: Linear, ReLU, Linear from the pooled vector to the compared projection."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(), nn.Linear(width, min(PROJECTION_DIM, width))
        )

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(N, C) pooled vectors to (N, D) projections."""
        return self.net(pooled)


class ContrastiveModel(nn.Module):
    """The encoder and its projection head as one module (what DDP wraps): last layer and projections."""

    def __init__(self, encoder: ProteinEncoder, head: ProjectionHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) tokens to the (B, T, C) last layer and the (B, D) projected mean-pooled rows."""
        out = self.encoder(tokens, repr_layers=(-1,), return_logits=False)
        hidden = out.representations[self.encoder.config.num_layers]
        return hidden, self.head(mean_over_residues(hidden.float(), tokens))


def seeded_head(width: int, seed: int) -> ProjectionHead:
    """A projection head with weights from `seed`, leaving torch's global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ProjectionHead(width)


def nt_xent(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean NT-Xent over 2N views: row i of `first` and of `second` are positives, all else negatives."""
    z = F.normalize(torch.cat([first, second]).float(), dim=1)
    n = first.shape[0]
    similarity = z @ z.T / temperature
    similarity = similarity.masked_fill(
        torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf")
    )
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(similarity, partner)


def contrastive_losses(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor | None,
    *,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """NT-Xent of a (2N, T) pair batch (anchors then positives), and the summed masked-LM loss of
    the same forward with its count when `targets` is given; inputs and targets on the CPU."""
    module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    assert isinstance(module, ContrastiveModel)
    device = module.encoder.embed_tokens.weight.device
    tokens = inputs.to(device, non_blocking=True)
    hidden, projected = model(tokens)
    pairs = projected.shape[0] // 2
    contrast = nt_xent(projected[:pairs], projected[pairs:], temperature)
    if targets is None:
        return contrast, None, 0
    mlm, count = selected_lm_loss(module.encoder, hidden, targets)
    return contrast, mlm, count


def view_crop(sequence: str, crop_residues: int, rng: np.random.Generator) -> str:
    """A random window of 50-100% of the sequence cut to `crop_residues`, at a random offset."""
    full = min(len(sequence), crop_residues)
    length = int(rng.integers(math.ceil(full * MIN_VIEW_FRACTION), full + 1))
    start = int(rng.integers(0, len(sequence) - length + 1))
    return sequence[start : start + length]


def pool_pairs(
    corpus: TrainingCorpus, config: PretrainConfig, epoch: int, pool: int
) -> list[tuple[int, int]] | None:
    """(anchor, positive) training indices of one pool (None past the epoch's end); deterministic.

    Anchors are distinct records, or with clusters one member each of distinct clusters (those
    of at least `cluster_min_members`).
    """
    rng = np.random.default_rng([config.seed, epoch, pool, 1])
    groups = corpus.clusters
    if groups is not None and config.cluster_min_members > 1:
        groups = tuple(g for g in groups if len(g) >= config.cluster_min_members)
        if not groups:
            raise InvalidInputError(
                f"no training cluster has {config.cluster_min_members} members "
                "(cluster_min_members)"
            )
    units = len(corpus.train) if groups is None else len(groups)
    if pool >= math.ceil(units / config.pool_sequences):
        return None
    order = np.random.default_rng([config.seed, epoch, 1]).permutation(units)
    chosen = order[pool * config.pool_sequences : (pool + 1) * config.pool_sequences]
    if groups is None:
        return [(int(i), int(i)) for i in chosen]
    pairs = []
    for cluster in chosen:
        members = groups[int(cluster)]
        first = int(rng.integers(0, len(members)))
        second = first
        if len(members) > 1 and rng.random() < config.cluster_positive_rate:
            second = (first + int(rng.integers(1, len(members)))) % len(members)
        pairs.append((members[first], members[second]))
    return pairs


def _pair_batches(
    pairs: Sequence[tuple[str, str]], max_tokens: int
) -> list[tuple[list[str], list[str]]]:
    """Pairs sorted by their longer view, packed so 2 x rows x (longest + 2) fits `max_tokens`."""
    order = sorted(range(len(pairs)), key=lambda i: -max(map(len, pairs[i])))
    batches: list[tuple[list[str], list[str]]] = []
    rows: list[int] = []
    for index in order:
        width = max(map(len, pairs[rows[0] if rows else index])) + 2
        if rows and 2 * (len(rows) + 1) * width > max_tokens:
            batches.append(([pairs[i][0] for i in rows], [pairs[i][1] for i in rows]))
            rows = []
        rows.append(index)
    if rows:
        batches.append(([pairs[i][0] for i in rows], [pairs[i][1] for i in rows]))
    return batches


def _tokens(sequences: Sequence[str]) -> torch.Tensor:
    """(B, longest + 2) token ids: BOS, residues, EOS, then pads."""
    width = max(map(len, sequences)) + 2
    tokens = np.full((len(sequences), width), ALPHABET.padding_idx, dtype=np.int64)
    tokens[:, 0] = ALPHABET.cls_idx
    for row, sequence in enumerate(sequences):
        tokens[row, 1 : len(sequence) + 1] = tokenize(sequence)
        tokens[row, len(sequence) + 1] = ALPHABET.eos_idx
    return torch.from_numpy(tokens)


def _pool_batches(
    corpus: TrainingCorpus, config: PretrainConfig, epoch: int, pool: int
) -> list[torch.Tensor] | None:
    """(2N, T) pair batches of one pool (anchors' views, then positives'), shuffled; deterministic."""
    pairs = pool_pairs(corpus, config, epoch, pool)
    if pairs is None:
        return None
    rng = np.random.default_rng([config.seed, epoch, pool, 2])
    views = [
        (
            view_crop(corpus.train[a], config.crop_residues, rng),
            view_crop(corpus.train[b], config.crop_residues, rng),
        )
        for a, b in pairs
    ]
    batches = [
        _tokens([*first, *second]) for first, second in _pair_batches(views, config.max_tokens)
    ]
    return [batches[i] for i in rng.permutation(len(batches))]


def contrastive_batches(
    corpus: TrainingCorpus, config: PretrainConfig, start: DataPosition
) -> Iterator[tuple[torch.Tensor, DataPosition]]:
    """Endless stream of pair batches from `start`, each with the position after it."""
    return micro_batches(corpus, config, start, _pool_batches)
