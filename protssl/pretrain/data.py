"""The training data: a held-out split by record id, optional clusters, random crops, the batch stream.

Everything random is derived from the seed and the position in the run (epoch, pool, micro-batch),
so the stream restarted from a checkpoint's `DataPosition` yields what an unbroken run would.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from protssl.batching import WindowPolicy, token_batches
from protssl.errors import InvalidInputError
from protssl.fasta import FastaPolicy, ReadStats, read_fasta
from protssl.pretrain.config import PretrainConfig

__all__ = [
    "DataPosition",
    "PoolBatches",
    "TrainingCorpus",
    "crop_sequence",
    "is_validation_id",
    "load_corpus",
    "micro_batches",
    "packed_tokens",
    "validation_batches",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataPosition:
    """Where the data stream stands: pass over the data, pool within it, micro-batch within it."""

    epoch: int = 0
    pool: int = 0
    batch: int = 0


@dataclass(frozen=True)
class TrainingCorpus:
    """Training and validation sequences, split by a hash of the record id."""

    train_ids: tuple[str, ...]
    train: tuple[str, ...]
    val_ids: tuple[str, ...]
    val: tuple[str, ...]
    clusters: tuple[tuple[int, ...], ...] | None = None
    """Indices into `train` grouped by cluster, when a cluster TSV was given."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Records of the FASTA left out, by reason (invalid residues, empty, duplicate id)."""
    skipped_ids: tuple[str, ...] = ()
    """The first few of them, for the log."""

    def fingerprint(self) -> str:
        """sha256 of what training reads: ids and sequences of both splits, in order, and the
        clusters; the same for the same records however the FASTA is wrapped or annotated."""
        digest = hashlib.sha256()
        for part in (self.train_ids, self.train, self.val_ids, self.val):
            digest.update("\n".join(part).encode())
            digest.update(b"\0")
        for cluster in self.clusters or ():
            digest.update(b",".join(str(i).encode() for i in cluster) + b";")
        return digest.hexdigest()

    def skipped_note(self, source: Path) -> str | None:
        """One line on what was left out of training, or None when nothing was."""
        left_out = self._left_out()
        return None if left_out is None else f"{source}: {left_out}"

    def _left_out(self) -> str | None:
        """How many records the reader's policy left out and why, or None when it left none."""
        total = sum(self.skipped.values())
        if total == 0:
            return None
        kept = len(self.train) + len(self.val)
        reasons = ", ".join(f"{n:,} {why}" for why, n in self.skipped.items() if n)
        examples = ", ".join(repr(i) for i in self.skipped_ids)
        return (
            f"{total:,} of {total + kept:,} records left out of training ({reasons}; "
            f"e.g. {examples}): the reader's policy for a corpus is skip"
        )

    def refuse_an_empty_split(self, source: Path, val_fraction: float) -> None:
        """Refuse a corpus that leaves a split empty, in one line saying why: every record left
        out by the reader's policy (the line says how many and why, where a bigger corpus would
        not help), or too few records for `val_fraction` (the line names `--val-fraction`)."""
        if self.train and self.val:
            return
        counts = f"{source}: {len(self.train)} training and {len(self.val)} validation records"
        left_out = self._left_out()
        if left_out is not None and not self.train and not self.val:
            raise InvalidInputError(
                f"{counts}; need both: {left_out}; fix those records or give another corpus"
            )
        besides = "" if left_out is None else f"; {left_out}"
        raise InvalidInputError(
            f"{counts}; need both: a bigger corpus, or another --val-fraction "
            f"(now {val_fraction:g}){besides}"
        )


def is_validation_id(record_id: str, fraction: float) -> bool:
    """Deterministic held-out membership: the first 8 bytes of blake2b(id) below fraction x 2^64."""
    digest = hashlib.blake2b(record_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def load_corpus(
    path: Path, *, val_fraction: float, cluster_tsv: Path | None = None
) -> TrainingCorpus:
    """Read the FASTA (records with invalid characters or duplicate ids skipped) and split it;
    a split left empty is refused in one line that says what the reader left out (see
    `TrainingCorpus.refuse_an_empty_split`)."""
    policy = FastaPolicy(on_invalid="skip", on_empty="skip", on_duplicate="skip")
    train_ids: list[str] = []
    train: list[str] = []
    val_ids: list[str] = []
    val: list[str] = []
    stats = ReadStats()
    for record in read_fasta(path, policy=policy, stats=stats):
        if is_validation_id(record.id, val_fraction):
            val_ids.append(record.id)
            val.append(record.sequence)
        else:
            train_ids.append(record.id)
            train.append(record.sequence)
    skipped = {
        "with invalid residues": stats.skipped_invalid,
        "empty": stats.skipped_empty,
        "with a repeated id": stats.skipped_duplicate,
    }
    corpus = TrainingCorpus(
        tuple(train_ids),
        tuple(train),
        tuple(val_ids),
        tuple(val),
        skipped={why: n for why, n in skipped.items() if n},
        skipped_ids=tuple(stats.skipped_ids[:3]),
    )
    corpus.refuse_an_empty_split(path, val_fraction)
    if cluster_tsv is None:
        return corpus
    return replace(corpus, clusters=_read_clusters(cluster_tsv, train_ids))


def _read_clusters(path: Path, train_ids: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """Training-record indices grouped by the representative column of a two-column TSV; a
    training record the TSV does not list is a cluster of its own (with a warning), not dropped."""
    index = {record_id: i for i, record_id in enumerate(train_ids)}
    groups: dict[str, list[int]] = {}
    try:
        handle = path.open()
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read the cluster TSV ({exc.strerror})") from None
    with handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2:
                raise InvalidInputError(
                    f"{path}: line {line_no} has {len(parts)} columns; expected representative<TAB>member"
                )
            member = index.get(parts[1])
            if member is not None:
                groups.setdefault(parts[0], []).append(member)
    if not groups:
        raise InvalidInputError(f"{path}: no cluster member is a training record of the corpus")
    listed = {member for members in groups.values() for member in members}
    alone = [i for i in range(len(train_ids)) if i not in listed]
    if alone:
        log.warning(
            "%s: %d of %d training records are in no cluster (first: %r): each is a cluster of "
            "its own",
            path,
            len(alone),
            len(train_ids),
            train_ids[alone[0]],
        )
    return tuple(tuple(members) for members in groups.values()) + tuple((i,) for i in alone)


def crop_sequence(sequence: str, length: int, rng: np.random.Generator) -> str:
    """`sequence` if it fits in `length`, else a window of `length` at a uniformly random offset."""
    if len(sequence) <= length:
        return sequence
    start = int(rng.integers(0, len(sequence) - length + 1))
    return sequence[start : start + length]


def packed_tokens(
    sequences: Sequence[str],
    *,
    max_tokens: int,
    window_residues: int,
    policy: WindowPolicy | None = None,
) -> list[torch.Tensor]:
    """The (B, T) token tensors of `sequences` packed into token-budget batches, sorted by length."""
    batches = token_batches(
        sequences,
        max_tokens=max_tokens,
        window_residues=window_residues,
        policy=policy or WindowPolicy(),
    )
    return [batch.tokens for batch in batches]


def _pool_batches(
    corpus: TrainingCorpus, config: PretrainConfig, epoch: int, pool: int
) -> list[torch.Tensor] | None:
    """Micro-batches of one pool (None past the end of the epoch), shuffled; deterministic."""
    n = len(corpus.train)
    pools_per_epoch = math.ceil(n / config.pool_sequences)
    if pool >= pools_per_epoch:
        return None
    rng = np.random.default_rng([config.seed, epoch, pool])
    if corpus.clusters is None:
        order = np.random.default_rng([config.seed, epoch]).permutation(n)
        chosen = order[pool * config.pool_sequences : (pool + 1) * config.pool_sequences]
    else:
        picks = rng.integers(0, len(corpus.clusters), size=config.pool_sequences)
        chosen = np.array(
            [corpus.clusters[c][int(rng.integers(0, len(corpus.clusters[c])))] for c in picks]
        )
    crops = [crop_sequence(corpus.train[i], config.crop_residues, rng) for i in chosen]
    batches = packed_tokens(
        crops, max_tokens=config.max_tokens, window_residues=config.crop_residues
    )
    return [batches[i] for i in rng.permutation(len(batches))]


PoolBatches = Callable[[TrainingCorpus, PretrainConfig, int, int], list[torch.Tensor] | None]
"""(corpus, config, epoch, pool) -> that pool's micro-batches, None past the epoch's end."""


def micro_batches(
    corpus: TrainingCorpus,
    config: PretrainConfig,
    start: DataPosition,
    pools: PoolBatches | None = None,
) -> Iterator[tuple[torch.Tensor, DataPosition]]:
    """Endless stream of micro-batches from `start`, each with the position after it.

    `pools` makes each pool's batches (default: the masked-LM crops).
    """
    make = pools or _pool_batches
    epoch, pool, skip = start.epoch, start.pool, start.batch
    while True:
        batches = make(corpus, config, epoch, pool)
        if batches is None:
            epoch, pool = epoch + 1, 0
            continue
        for index in range(skip, len(batches)):
            yield batches[index], DataPosition(epoch, pool, index + 1)
        pool, skip = pool + 1, 0


def validation_batches(corpus: TrainingCorpus, config: PretrainConfig) -> list[torch.Tensor]:
    """The fixed validation subset: head-cropped, packed, the same every time."""
    subset = [s[: config.crop_residues] for s in corpus.val[: config.val_max_records]]
    return packed_tokens(subset, max_tokens=config.max_tokens, window_residues=config.crop_residues)
