"""How good an encoder is while it trains: validation loss, its unigram floor, per-layer vectors, a 1-NN probe.

Benchmarks and the training loop score models through these; none of them trains.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protssl.alphabet import ALPHABET, tokenize
from protssl.batching import WindowPolicy, token_batches
from protssl.embedding import pool_rows
from protssl.errors import InvalidInputError
from protssl.evaluation import composition_features, nn1_hits
from protssl.fasta import FastaPolicy, read_fasta
from protssl.model import ProteinEncoder
from protssl.pooling import pooled_width
from protssl.pretrain.data import packed_tokens
from protssl.pretrain.objective import autocast, mask_tokens, mlm_loss_sum
from protssl.progress import progress_bar

__all__ = [
    "FunctionProbe",
    "layer_embeddings",
    "masked_lm_loss",
    "pooled_layer_embeddings",
    "unigram_perplexity",
    "validation_loss",
]

# Validation masks come from their own seed, apart from the training ones.
_VALIDATION_SEED_OFFSET = 1_000_003


@torch.no_grad()
def validation_loss(
    encoder: ProteinEncoder,
    batches: Sequence[torch.Tensor],
    *,
    mask_prob: float,
    seed: int,
    dtype: torch.dtype,
) -> float:
    """Mean masked cross-entropy over `batches`, with masks fixed by `seed` (the same every call)."""
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    generator = torch.Generator().manual_seed(seed + _VALIDATION_SEED_OFFSET)
    total, count = 0.0, 0
    for tokens in batches:
        inputs, targets = mask_tokens(tokens, mask_prob=mask_prob, generator=generator)
        with autocast(device, dtype):
            loss, n = mlm_loss_sum(encoder, inputs, targets)
        total += float(loss)
        count += n
    encoder.train(was_training)
    return total / max(count, 1)


def masked_lm_loss(
    encoder: ProteinEncoder,
    sequences: Sequence[str],
    *,
    window_residues: int,
    max_tokens: int = 4096,
    mask_prob: float = 0.15,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> float:
    """Mean masked cross-entropy over every residue of `sequences` (cut into abutting windows).

    The perplexity of a held-out set is exp of this; masks come from `seed`, so it is repeatable.
    """
    batches = packed_tokens(
        sequences,
        max_tokens=max_tokens,
        window_residues=window_residues,
        policy=WindowPolicy(overlap=0),
    )
    return validation_loss(encoder, batches, mask_prob=mask_prob, seed=seed, dtype=dtype)


def unigram_perplexity(train: Sequence[str], val: Sequence[str]) -> float:
    """Perplexity on the validation residues of residue frequencies counted on the training set."""
    vocab = len(ALPHABET.all_toks)
    counts = np.ones(vocab)  # add-one smoothing
    for sequence in train:
        counts += np.bincount(tokenize(sequence), minlength=vocab)
    log_p = np.log(counts / counts.sum())
    total, n = 0.0, 0
    for sequence in val:
        ids = tokenize(sequence)
        total -= float(log_p[ids].sum())
        n += len(ids)
    return math.exp(total / n)


def layer_embeddings(
    encoder: ProteinEncoder,
    sequences: Sequence[str],
    *,
    dtype: torch.dtype = torch.float32,
    max_tokens: int = 8192,
    desc: str | None = None,
) -> np.ndarray:
    """(layers + 1, N, D) mean-pooled vectors of every layer (0 = token embeddings).

    Sequences longer than the model's window are cut to it: this scores a bare encoder while it
    trains or right after, not a user's proteins (that is `protssl.embed`, which windows them).
    """
    pooled = pooled_layer_embeddings(
        encoder, sequences, poolings=("mean",), dtype=dtype, max_tokens=max_tokens, desc=desc
    )
    return pooled["mean"]


@torch.no_grad()
def pooled_layer_embeddings(
    encoder: ProteinEncoder,
    sequences: Sequence[str],
    *,
    poolings: Sequence[str],
    dtype: torch.dtype = torch.float32,
    max_tokens: int = 8192,
    desc: str | None = None,
) -> dict[str, np.ndarray]:
    """(layers + 1, N, width) vectors of every layer per pooling (`pool_rows`'), from one forward;
    width is `pooled_width` (D, or SEGMENTS * D for `segments`).

    Sequences are cut to the model's window, as in `layer_embeddings`.
    """
    device = next(encoder.parameters()).device
    n_layers = encoder.config.num_layers
    dim = encoder.config.embed_dim
    out = {
        pooling: np.zeros(
            (n_layers + 1, len(sequences), pooled_width(pooling, dim)), dtype=np.float32
        )
        for pooling in poolings
    }
    cropped = [s[: encoder.config.max_residues] for s in sequences]
    batches = list(
        token_batches(
            cropped,
            max_tokens=max_tokens,
            window_residues=encoder.config.max_residues,
            policy=WindowPolicy(),
        )
    )
    was_training = encoder.training
    encoder.eval()
    for batch in progress_bar(batches, desc=desc, leave=False, disable=desc is None):
        tokens = batch.tokens
        with autocast(device, dtype):
            result = encoder(
                tokens.to(device), repr_layers=range(n_layers + 1), return_logits=False
            )
        items = [window.item for window in batch.windows]
        for layer, hidden in result.representations.items():
            hidden = hidden.float().cpu()
            for pooling in poolings:
                out[pooling][layer, items] = pool_rows(hidden, tokens, pooling)
    encoder.train(was_training)
    return out


@dataclass(frozen=True)
class FunctionProbe:
    """Labelled records scored while a model trains: leave-one-out 1-NN over mean-pooled vectors."""

    sequences: tuple[str, ...]
    labels: tuple[frozenset[str], ...]
    composition_nn1: float
    """The floor: the same 1-NN over amino-acid + dipeptide composition vectors."""

    @classmethod
    def from_fasta(cls, path: str | Path) -> FunctionProbe:
        """Records with `label=` from `path`; at least two labels, each on two or more records."""
        records = list(read_fasta(path, policy=FastaPolicy(on_invalid="replace")))
        unlabelled = [r.id for r in records if not r.labels]
        if unlabelled:
            raise InvalidInputError(
                f"{path}: record {unlabelled[0]!r} has no label= (the function probe needs labels)"
            )
        counts = collections.Counter(label for r in records for label in r.labels)
        if sum(1 for n in counts.values() if n >= 2) < 2:
            raise InvalidInputError(
                f"{path}: the function probe needs two labels with two or more records each"
            )
        sequences = tuple(r.sequence for r in records)
        labels = tuple(frozenset(r.labels) for r in records)
        floor = nn1_hits(composition_features(sequences), labels).mean()
        return cls(sequences, labels, round(float(floor), 4))

    def score(self, encoder: ProteinEncoder, dtype: torch.dtype) -> dict[str, Any]:
        """1-NN accuracy of the last layer and of the best layer, with that layer."""
        by_layer = [
            float(nn1_hits(vectors, self.labels).mean())
            for vectors in layer_embeddings(encoder, self.sequences, dtype=dtype)
        ]
        best = int(np.argmax(by_layer))
        return {
            "nn1_last_layer": round(by_layer[-1], 4),
            "nn1_best_layer": round(by_layer[best], 4),
            "best_layer": best,
        }
