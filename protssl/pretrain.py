"""Masked-residue pretraining (MLM) of the ESM-2 encoder on FASTA corpora, resumable and DDP-ready.

Recipe (ESM-2's): 15% of residues are selected; of those 80% become `<mask>`, 10% a random residue
and 10% stay; the loss is cross-entropy on the selected positions only. Sequences longer than the
crop are cut at a random offset each time they are drawn. Crops are packed into token-budget
batches (`protssl.batching`), gradients accumulate to a target number of tokens per optimizer step,
and AdamW (betas 0.9/0.98, weight decay 0.01) follows warmup then linear or cosine decay.

Everything random is derived from the seed and the position in the run (step, micro-batch,
data pool), so a run resumed from a checkpoint follows exactly the loss curve of an uninterrupted
one. Under `torchrun` the model is wrapped in DistributedDataParallel (gloo on CPU, NCCL on GPUs);
each rank takes a disjoint share of the micro-batches and only rank 0 writes files.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import hashlib
import logging
import math
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from protssl.alphabet import ALPHABET, tokenize
from protssl.batching import WindowPolicy, token_batches
from protssl.checkpoint import load_model, save_model
from protssl.embed import pool_rows
from protssl.errors import CheckpointError, InvalidInputError
from protssl.evaluation import composition_features, nn1_hits
from protssl.fasta import FastaPolicy, read_fasta
from protssl.model import PRESETS, ModelConfig, ProteinEncoder, init_weights, resolve_dtype

__all__ = [
    "CHECKPOINT_NAME",
    "LOG_NAME",
    "PLOT_NAME",
    "DataPosition",
    "FunctionProbe",
    "PretrainConfig",
    "PretrainResult",
    "TrainingCorpus",
    "config_from_checkpoint",
    "crop_sequence",
    "export_checkpoint",
    "initial_encoder",
    "is_validation_id",
    "layer_embeddings",
    "learning_rate",
    "load_checkpoint",
    "load_corpus",
    "mask_tokens",
    "masked_lm_loss",
    "mlm_loss_sum",
    "plot_run",
    "pretrain",
    "save_checkpoint",
    "unigram_perplexity",
]

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.csv"
PLOT_NAME = "loss_curve.png"
MODEL_SUBDIR = "model"
LOG_FIELDS = (
    "step",
    "tokens",
    "loss",
    "val_loss",
    "val_ppl",
    "probe_nn1",
    "probe_nn1_best",
    "lr",
    "tok_per_s",
)

# Token ids a random replacement may take: the 20 standard residues (as ESM-2 does).
_STANDARD = torch.tensor([ALPHABET.get_idx(a) for a in "ACDEFGHIKLMNPQRSTVWY"])


@dataclass(frozen=True)
class PretrainConfig:
    """One pretraining run: data, model shape, optimisation, evaluation and checkpoints."""

    corpus: Path
    """FASTA file of training proteins (plain or gzip)."""
    run_dir: Path
    """Folder for checkpoints, the CSV log, the loss curve and the exported model."""
    preset: str = "protssl-8m-h5"
    """Model shape from `protssl.model.PRESETS`."""
    steps: int = 1000
    """Optimizer steps in the whole run (the schedule is laid out over them)."""
    crop_residues: int = 1022
    """Longer sequences are cropped to this many residues at a random offset each draw."""
    max_tokens: int = 4096
    """Token budget of one micro-batch: rows x padded length (BOS/EOS included)."""
    tokens_per_step: int = 16384
    """Target tokens per optimizer step over all ranks; gradients accumulate to reach it."""
    lr: float = 1e-3
    """Peak learning rate."""
    warmup_steps: int = 100
    """Linear warmup from 0 to the peak learning rate."""
    schedule: Literal["cosine", "linear"] = "cosine"
    """Decay after warmup, down to `min_lr_ratio` x peak at the last step."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases, LayerNorms and embeddings)."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 turns clipping off)."""
    mask_prob: float = 0.15
    """Fraction of residues selected for the loss (80% <mask>, 10% random, 10% kept)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Autocast dtype: `auto` is bf16 on CUDA or CPUs with native bf16, else fp32."""
    device: str = "auto"
    """`auto` (CUDA when present, else CPU), `cpu`, or `cuda`."""
    val_fraction: float = 0.02
    """Share of records held out for validation, chosen by a hash of the record id."""
    val_max_records: int = 512
    """Validation uses at most this many held-out records (a fixed subset) each time."""
    val_every: int = 100
    """Validate every this many steps (and at the end)."""
    log_every: int = 10
    """Write a CSV row every this many steps."""
    checkpoint_every: int = 100
    """Write a checkpoint every this many steps (and on SIGINT/SIGTERM and at the end)."""
    pool_sequences: int = 2048
    """Sequences drawn, cropped and length-sorted together before being packed into batches."""
    cluster_tsv: Path | None = None
    """Optional two-column TSV (representative, member): draw a cluster uniformly, then a member."""
    seed: int = 0
    """Seed of weights, data order, crops and masks."""
    init_from: Path | None = None
    """Start from this protssl model folder's weights (same shape as `preset`) instead of random
    ones; the optimizer and schedule start afresh. Continues training on a machine that cannot
    carry the last run's checkpoint, only its exported model."""
    probe_fasta: Path | None = None
    """Optional labelled FASTA (`>ID label=A`) scored at every validation: leave-one-out 1-NN
    accuracy of mean-pooled vectors (`probe_nn1` for the last layer, `probe_nn1_best` for the best
    one in the CSV log), beside the same 1-NN over composition (the floor, in the card)."""
    tensorboard: bool = False
    """Also write TensorBoard event files under run_dir/tb (needs the tensorboard package)."""
    name: str = "protssl-pretrained"
    """Name written in the exported model's card."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "corpus", Path(self.corpus))
        object.__setattr__(self, "run_dir", Path(self.run_dir))
        if self.cluster_tsv is not None:
            object.__setattr__(self, "cluster_tsv", Path(self.cluster_tsv))
        if self.init_from is not None:
            object.__setattr__(self, "init_from", Path(self.init_from))
        if self.probe_fasta is not None:
            object.__setattr__(self, "probe_fasta", Path(self.probe_fasta))
        object.__setattr__(self, "betas", tuple(self.betas))
        if self.preset not in PRESETS:
            raise InvalidInputError(
                f"unknown preset {self.preset!r}; choose one of {', '.join(sorted(PRESETS))}"
            )
        positive = {
            "steps": self.steps,
            "crop_residues": self.crop_residues,
            "tokens_per_step": self.tokens_per_step,
            "val_every": self.val_every,
            "log_every": self.log_every,
            "checkpoint_every": self.checkpoint_every,
            "pool_sequences": self.pool_sequences,
            "val_max_records": self.val_max_records,
        }
        for key, value in positive.items():
            if value < 1:
                raise InvalidInputError(f"{key} must be >= 1, got {value}")
        if self.crop_residues > self.model_config.max_residues:
            raise InvalidInputError(
                f"crop_residues {self.crop_residues} exceeds the model window "
                f"({self.model_config.max_residues} residues)"
            )
        if self.max_tokens < self.crop_residues + 2:
            raise InvalidInputError(
                f"max_tokens {self.max_tokens} must hold one full crop ({self.crop_residues + 2})"
            )
        if not 0 < self.lr < 1:
            raise InvalidInputError(f"lr must be in (0, 1), got {self.lr}")
        if self.warmup_steps < 0 or self.grad_clip < 0 or self.weight_decay < 0:
            raise InvalidInputError("warmup_steps, grad_clip and weight_decay must be >= 0")
        if self.schedule not in ("cosine", "linear"):
            raise InvalidInputError(f"schedule must be cosine or linear, not {self.schedule!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise InvalidInputError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise InvalidInputError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 < self.mask_prob < 1:
            raise InvalidInputError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
        if not 0 < self.val_fraction < 1:
            raise InvalidInputError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise InvalidInputError(f"dtype must be auto, float32 or bfloat16, not {self.dtype!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise InvalidInputError(f"device must be auto, cpu or cuda, not {self.device!r}")

    @property
    def model_config(self) -> ModelConfig:
        return PRESETS[self.preset]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly recipe (paths as strings)."""
        out = asdict(self)
        for key in ("corpus", "run_dir", "cluster_tsv", "init_from", "probe_fasta"):
            out[key] = None if out[key] is None else str(out[key])
        out["betas"] = list(self.betas)
        return out


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


@dataclass(frozen=True)
class PretrainResult:
    """What a finished (or interrupted) run leaves behind."""

    encoder: ProteinEncoder
    step: int
    tokens_seen: int
    val_loss: float | None
    interrupted: bool
    model_dir: Path | None
    losses: tuple[float, ...] = field(default=())
    """Training loss of every step run in this call (rank-local mean over its micro-batches)."""


# --- data ----------------------------------------------------------------------------------------


def is_validation_id(record_id: str, fraction: float) -> bool:
    """Deterministic held-out membership: the first 8 bytes of blake2b(id) below fraction x 2^64."""
    digest = hashlib.blake2b(record_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def load_corpus(
    path: Path, *, val_fraction: float, cluster_tsv: Path | None = None
) -> TrainingCorpus:
    """Read the FASTA (records with invalid characters or duplicate ids skipped) and split it."""
    policy = FastaPolicy(on_invalid="skip", on_empty="skip", on_duplicate="skip")
    train_ids: list[str] = []
    train: list[str] = []
    val_ids: list[str] = []
    val: list[str] = []
    for record in read_fasta(path, policy=policy):
        if is_validation_id(record.id, val_fraction):
            val_ids.append(record.id)
            val.append(record.sequence)
        else:
            train_ids.append(record.id)
            train.append(record.sequence)
    if not train or not val:
        raise InvalidInputError(
            f"{path}: {len(train)} training and {len(val)} validation records; need both "
            "(a bigger corpus or another val_fraction)"
        )
    clusters = _read_clusters(cluster_tsv, train_ids) if cluster_tsv is not None else None
    return TrainingCorpus(tuple(train_ids), tuple(train), tuple(val_ids), tuple(val), clusters)


def _read_clusters(path: Path, train_ids: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    index = {record_id: i for i, record_id in enumerate(train_ids)}
    groups: dict[str, list[int]] = {}
    with path.open() as handle:
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
    return tuple(tuple(members) for members in groups.values())


def crop_sequence(sequence: str, length: int, rng: np.random.Generator) -> str:
    """`sequence` if it fits in `length`, else a window of `length` at a uniformly random offset."""
    if len(sequence) <= length:
        return sequence
    start = int(rng.integers(0, len(sequence) - length + 1))
    return sequence[start : start + length]


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
    batches = [
        b.tokens
        for b in token_batches(
            crops,
            max_tokens=config.max_tokens,
            window_residues=config.crop_residues,
            policy=WindowPolicy(),
        )
    ]
    return [batches[i] for i in rng.permutation(len(batches))]


def _micro_batches(
    corpus: TrainingCorpus, config: PretrainConfig, start: DataPosition
) -> Iterator[tuple[torch.Tensor, DataPosition]]:
    """Endless stream of micro-batches from `start`, each with the position after it."""
    epoch, pool, skip = start.epoch, start.pool, start.batch
    while True:
        batches = _pool_batches(corpus, config, epoch, pool)
        if batches is None:
            epoch, pool = epoch + 1, 0
            continue
        for index in range(skip, len(batches)):
            yield batches[index], DataPosition(epoch, pool, index + 1)
        pool, skip = pool + 1, 0


# --- masking, loss, schedule ---------------------------------------------------------------------


def mask_tokens(
    tokens: torch.Tensor, *, mask_prob: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """ESM-2 masking of (B, T) tokens; returns (inputs, targets) with targets -100 where not selected."""
    residue = (
        tokens.ne(ALPHABET.padding_idx) & tokens.ne(ALPHABET.cls_idx) & tokens.ne(ALPHABET.eos_idx)
    )
    draw = torch.rand(tokens.shape, generator=generator)
    selected = residue & (draw < mask_prob)
    action = torch.rand(tokens.shape, generator=generator)
    to_mask = selected & (action < 0.8)
    to_random = selected & (action >= 0.8) & (action < 0.9)
    random_ids = _STANDARD[torch.randint(len(_STANDARD), tokens.shape, generator=generator)]
    inputs = tokens.masked_fill(to_mask, ALPHABET.mask_idx)
    inputs = torch.where(to_random, random_ids, inputs)
    targets = tokens.masked_fill(~selected, -100)
    return inputs, targets


def mlm_loss_sum(
    encoder: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over selected positions; the LM head runs on those positions only.

    Pass `inputs` and `targets` on the CPU: the selected positions are found there and the tensors
    moved here, so a GPU's queue never waits for the host to learn how many there are.
    """
    module = (
        encoder.module
        if isinstance(encoder, torch.nn.parallel.DistributedDataParallel)
        else encoder
    )
    assert isinstance(module, ProteinEncoder)
    device = module.embed_tokens.weight.device
    flat_targets = targets.reshape(-1)
    positions = flat_targets.ne(-100).nonzero().squeeze(1)
    out = encoder(inputs.to(device, non_blocking=True), repr_layers=(-1,), return_logits=False)
    hidden = out.representations[module.config.num_layers].flatten(0, 1)  # (B*T, C)
    logits = module.lm_head(hidden.index_select(0, positions.to(device, non_blocking=True)))
    selected = flat_targets[positions].to(device, non_blocking=True)
    loss = F.cross_entropy(logits.float(), selected, reduction="sum")
    return loss, len(positions)


def learning_rate(config: PretrainConfig, step: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then cosine or linear decay."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    if config.schedule == "cosine":
        decay = 0.5 * (1 + math.cos(math.pi * progress))
    else:
        decay = 1 - progress
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * decay)


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


# --- the run -------------------------------------------------------------------------------------


class _Stop:
    """Set by SIGINT/SIGTERM; the loop checkpoints and returns at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: object) -> None:
        log.warning("signal %d: checkpointing and stopping after this step", signum)
        self.requested = True


def _autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager[Any]:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _param_groups(encoder: ProteinEncoder, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, param in encoder.named_parameters():
        if param.ndim >= 2 and "embed_tokens" not in name:
            decay.append(param)
        else:
            no_decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _validation_batches(corpus: TrainingCorpus, config: PretrainConfig) -> list[torch.Tensor]:
    """The fixed validation subset: head-cropped, packed, the same every time."""
    subset = [s[: config.crop_residues] for s in corpus.val[: config.val_max_records]]
    return [
        b.tokens
        for b in token_batches(
            subset,
            max_tokens=config.max_tokens,
            window_residues=config.crop_residues,
            policy=WindowPolicy(),
        )
    ]


@torch.no_grad()
def _validate(
    encoder: torch.nn.Module,
    batches: Sequence[torch.Tensor],
    config: PretrainConfig | _EvalSettings,
    device: torch.device,
    dtype: torch.dtype,
) -> float:
    """Mean masked cross-entropy on the validation subset, with a fixed masking seed."""
    was_training = encoder.training
    encoder.eval()
    generator = torch.Generator().manual_seed(config.seed + 1_000_003)
    total, count = 0.0, 0
    for tokens in batches:
        inputs, targets = mask_tokens(tokens, mask_prob=config.mask_prob, generator=generator)
        with _autocast(device, dtype):
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
    device = next(encoder.parameters()).device
    batches = [
        b.tokens
        for b in token_batches(
            sequences,
            max_tokens=max_tokens,
            window_residues=window_residues,
            policy=WindowPolicy(overlap=0),
        )
    ]
    config_like = _EvalSettings(mask_prob=mask_prob, seed=seed)
    return _validate(encoder, batches, config_like, device, dtype)


@torch.no_grad()
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
    device = next(encoder.parameters()).device
    n_layers = encoder.config.num_layers
    out = np.zeros((n_layers + 1, len(sequences), encoder.config.embed_dim), dtype=np.float32)
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
    for batch in tqdm(batches, desc=desc, leave=False, disable=desc is None):
        tokens = batch.tokens
        with _autocast(device, dtype):
            result = encoder(
                tokens.to(device), repr_layers=range(n_layers + 1), return_logits=False
            )
        for layer, hidden in result.representations.items():
            pooled = pool_rows(hidden.float().cpu(), tokens, "mean")
            for row, window in enumerate(batch.windows):
                out[layer, window.item] = pooled[row]
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


@dataclass(frozen=True)
class _EvalSettings:
    mask_prob: float
    seed: int


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename over the old one.

    A crash or error mid-write leaves the previous checkpoint as it was (and no temp file).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as handle:
            torch.save(dict(state), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a training checkpoint without unpickling arbitrary objects (weights_only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        raise CheckpointError(f"{path}: cannot read the training checkpoint ({exc})") from None


def _hardware(device: torch.device, world: int) -> str:
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = (
            f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
        )
    return f"{world} x {what}" if world > 1 else what


class _CsvLog:
    """Append-only CSV of LOG_FIELDS; on resume, rows after the checkpoint's step are dropped."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        rows: list[dict[str, str]] = []
        if resume_step is not None and path.exists():
            with path.open() as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= resume_step]
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: Mapping[str, object]) -> None:
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=LOG_FIELDS).writerow(
                {k: row.get(k, "") for k in LOG_FIELDS}
            )


def pretrain(
    config: PretrainConfig,
    *,
    resume: bool = False,
    command: str | None = None,
    stop_after: int | None = None,
    progress: bool = True,
) -> PretrainResult:
    """Train (or resume) a run; returns the encoder and where it ended.

    `stop_after` ends this call after that many optimizer steps as if interrupted (checkpoint
    written, no export): the schedule still spans `config.steps`. Under torch.distributed (already
    initialised by the caller, e.g. `torchrun`), gradients are averaged across ranks.

    Denormal floats are flushed to zero while it runs: a trained model's backward pass and
    optimizer produce some, and x86 CPUs compute them in slow microcode (continuing the shipped
    model ran at half the speed of a fresh one). Threads started earlier keep their own setting.
    """
    flushing = torch.set_flush_denormal(True)
    try:
        return _pretrain(
            config, resume=resume, command=command, stop_after=stop_after, progress=progress
        )
    finally:
        if flushing:
            torch.set_flush_denormal(False)


def _pretrain(
    config: PretrainConfig,
    *,
    resume: bool,
    command: str | None,
    stop_after: int | None,
    progress: bool,
) -> PretrainResult:
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    leader = rank == 0
    if config.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(config.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    dtype = resolve_dtype(config.dtype, device)
    run_dir = config.run_dir
    if leader:
        run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = run_dir / CHECKPOINT_NAME

    corpus = load_corpus(
        config.corpus, val_fraction=config.val_fraction, cluster_tsv=config.cluster_tsv
    )
    val_batches = _validation_batches(corpus, config)
    micro_tokens = config.max_tokens * world
    accum = max(1, round(config.tokens_per_step / micro_tokens))

    if resume:  # weights and the parent's record come from the checkpoint below
        encoder, parent = ProteinEncoder(config.model_config), None
    else:
        encoder, parent = initial_encoder(config)
    encoder.to(device)
    optimizer = torch.optim.AdamW(
        _param_groups(encoder, config.weight_decay),
        lr=config.lr,
        betas=config.betas,
        fused=device.type == "cuda",
    )
    step, tokens_seen, elapsed = 0, 0, 0.0
    position = DataPosition()
    val_loss: float | None = None
    resumes: list[str | None] = []
    if resume:
        if not checkpoint_path.is_file():
            raise InvalidInputError(f"--resume: no checkpoint at {checkpoint_path}")
        state = load_checkpoint(checkpoint_path)
        if state["config"]["preset"] != config.preset:
            raise CheckpointError(
                f"{checkpoint_path}: preset {state['config']['preset']!r} differs from {config.preset!r}"
            )
        encoder.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, tokens_seen, elapsed = state["step"], state["tokens_seen"], state["elapsed_s"]
        position = DataPosition(*state["position"])
        val_loss = state["val_loss"]
        parent = state.get("init_from")
        torch.set_rng_state(state["torch_rng"])
        resumes = [*state.get("resume_commands", []), command]
        command = state.get("command") or command
        log.info("resumed from %s at step %d (%d tokens)", checkpoint_path, step, tokens_seen)
    model: torch.nn.Module = encoder
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            encoder, device_ids=[device.index] if device.type == "cuda" else None
        )
    model.train()

    csv_log = _CsvLog(run_dir / LOG_NAME, step if resume else None) if leader else None
    writer = _tensorboard(run_dir) if (leader and config.tensorboard) else None
    unigram = unigram_perplexity(corpus.train, corpus.val) if leader else float("nan")
    probe = (
        FunctionProbe.from_fasta(config.probe_fasta)
        if leader and config.probe_fasta is not None
        else None
    )
    probe_scores: dict[str, Any] | None = None
    if leader:
        log.info(
            "%d train / %d val records; %s on %s (%s); %d micro-batch(es) of %d tokens per step "
            "x %d rank(s); unigram val perplexity %.2f",
            len(corpus.train),
            len(corpus.val),
            config.preset,
            device,
            dtype,
            accum,
            config.max_tokens,
            world,
            unigram,
        )

    stop = _Stop()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, stop)

    def checkpoint_state() -> dict[str, Any]:
        return {
            "model": encoder.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "tokens_seen": tokens_seen,
            "elapsed_s": elapsed,
            "position": [position.epoch, position.pool, position.batch],
            "val_loss": val_loss,
            "torch_rng": torch.get_rng_state(),
            "config": config.to_dict(),
            "command": command,
            "resume_commands": resumes,
            "hardware": _hardware(device, world),
            "dtype": _dtype_name(dtype),
            "init_from": parent,
        }

    stream = _micro_batches(corpus, config, position)
    end = config.steps if stop_after is None else min(config.steps, step + stop_after)
    bar = tqdm(
        total=config.steps,
        initial=step,
        disable=not (leader and progress),
        desc="pretrain",
        unit="step",
    )
    losses: list[float] = []
    window_tokens, window_start = 0, time.perf_counter()
    interrupted = False
    try:
        while step < end:
            if stop.requested:
                interrupted = True
                break
            started = time.perf_counter()
            lr = learning_rate(config, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss_sum, step_tokens = torch.zeros((), device=device), 0
            for micro in range(accum):
                # Each rank takes every world-th micro-batch of the shared stream.
                for shard in range(world):
                    tokens, position = next(stream)
                    if shard == rank:
                        mine = tokens
                generator = torch.Generator().manual_seed(
                    config.seed * 1_000_003 + (step * accum + micro) * world + rank
                )
                inputs, targets = mask_tokens(mine, mask_prob=config.mask_prob, generator=generator)
                sync = (
                    model.no_sync()
                    if isinstance(model, torch.nn.parallel.DistributedDataParallel)
                    and micro < accum - 1
                    else contextlib.nullcontext()
                )
                with sync:
                    with _autocast(device, dtype):
                        loss_sum, n = mlm_loss_sum(model, inputs, targets)
                    loss = loss_sum / max(n, 1) / accum
                    loss.backward()
                step_loss_sum += loss.detach()
                step_tokens += int(mine.ne(ALPHABET.padding_idx).sum())
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(encoder.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            step_loss = float(step_loss_sum)  # the step's only wait on the device
            if world > 1:
                counted = torch.tensor([step_tokens], dtype=torch.int64, device=device)
                dist.all_reduce(counted)
                step_tokens = int(counted)
            tokens_seen += step_tokens
            elapsed += time.perf_counter() - started
            window_tokens += step_tokens
            losses.append(step_loss)
            row: dict[str, object] = {}
            if leader and (step % config.val_every == 0 or step == config.steps):
                evaluating = time.perf_counter()
                val_loss = _validate(encoder, val_batches, config, device, dtype)
                row.update(val_loss=f"{val_loss:.4f}", val_ppl=f"{math.exp(val_loss):.3f}")
                if writer is not None:
                    writer.add_scalar("val/ppl", math.exp(val_loss), step)
                if probe is not None:
                    probe_scores = probe.score(encoder, dtype)
                    row.update(
                        probe_nn1=probe_scores["nn1_last_layer"],
                        probe_nn1_best=probe_scores["nn1_best_layer"],
                    )
                    if writer is not None:
                        writer.add_scalar("probe/nn1", probe_scores["nn1_last_layer"], step)
                window_start += time.perf_counter() - evaluating  # tok_per_s: training only
            if step % config.log_every == 0 or row:
                now = time.perf_counter()
                rate = window_tokens / max(now - window_start, 1e-9)
                window_tokens, window_start = 0, now
                row.update(
                    step=step,
                    tokens=tokens_seen,
                    loss=f"{step_loss:.4f}",
                    lr=f"{lr:.3e}",
                    tok_per_s=f"{rate:.0f}",
                )
                if csv_log is not None:
                    csv_log.write(row)
                if writer is not None:
                    writer.add_scalar("train/loss", step_loss, step)
                    writer.add_scalar("train/lr", lr, step)
                    writer.add_scalar("train/tok_per_s", rate, step)
                bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{rate:.0f}")
            bar.update(1)
            if leader and step % config.checkpoint_every == 0:
                save_checkpoint(checkpoint_path, checkpoint_state())
    finally:
        bar.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if writer is not None:
            writer.close()
    interrupted = interrupted or step < config.steps
    if leader:
        save_checkpoint(checkpoint_path, checkpoint_state())
        plot_run(run_dir)
    model_dir = None
    if leader and not interrupted:
        if val_loss is None:
            val_loss = _validate(encoder, val_batches, config, device, dtype)
        if probe is not None and probe_scores is None:
            probe_scores = probe.score(encoder, dtype)
        model_dir = run_dir / MODEL_SUBDIR
        _export(
            encoder,
            model_dir,
            config=config,
            summary=_summary(
                config, step, tokens_seen, val_loss, unigram, len(val_batches), elapsed, command
            )
            | {
                "hardware": _hardware(device, world),
                "dtype": _dtype_name(dtype),
                "resume_commands": resumes,
                "init_from": parent,
            }
            | _probe_summary(probe, probe_scores),
        )
    return PretrainResult(
        encoder=encoder,
        step=step,
        tokens_seen=tokens_seen,
        val_loss=val_loss,
        interrupted=interrupted,
        model_dir=model_dir,
        losses=tuple(losses),
    )


def initial_encoder(config: PretrainConfig) -> tuple[ProteinEncoder, dict[str, Any] | None]:
    """The encoder a run starts from: seeded random weights, or `config.init_from`'s.

    With `init_from`, also returns what the card records of that model (name, sha256, tokens).
    """
    encoder = ProteinEncoder(config.model_config)
    if config.init_from is None:
        init_weights(encoder, seed=config.seed)
        return encoder, None
    parent = load_model(config.init_from, dtype="float32")
    if parent.card.architecture != config.model_config:
        raise InvalidInputError(
            f"--init-from {config.init_from}: its shape {parent.card.architecture} differs from "
            f"preset {config.preset} {config.model_config}"
        )
    encoder.load_state_dict(parent.encoder.state_dict())
    training = parent.card.training or {}
    return encoder, {
        "path": str(config.init_from),
        "name": parent.name,
        "sha256": parent.sha256,
        "tokens_seen": training.get("tokens_seen"),
    }


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _summary(
    config: PretrainConfig,
    step: int,
    tokens_seen: int,
    val_loss: float,
    unigram: float,
    val_batches: int,
    elapsed: float,
    command: str | None,
) -> dict[str, Any]:
    """The `training` section of the model card."""
    return {
        "recipe": config.to_dict(),
        "command": command,
        "steps": step,
        "scheduled_steps": config.steps,
        "tokens_seen": tokens_seen,
        "val_loss": round(val_loss, 4),
        "val_perplexity": round(math.exp(val_loss), 3),
        "unigram_val_perplexity": round(unigram, 3),
        "val_split": f"{config.val_fraction:.0%} of records by blake2b(id); "
        f"first {config.val_max_records} held-out records in {val_batches} batches",
        "wall_time_s": round(elapsed, 1),
        "torch": torch.__version__,
    }


def _probe_summary(probe: FunctionProbe | None, scores: dict[str, Any] | None) -> dict[str, Any]:
    """The card's `function_probe` entry (nothing without a probe)."""
    if probe is None or scores is None:
        return {}
    return {
        "function_probe": {
            "records": len(probe.sequences),
            "labels": len(set().union(*probe.labels)),
            **scores,
            "nn1_composition": probe.composition_nn1,
        }
    }


def _export(
    encoder: ProteinEncoder, directory: Path, *, config: PretrainConfig, summary: dict[str, Any]
) -> None:
    save_model(
        encoder,
        directory,
        name=config.name,
        provenance={"source": f"protssl pretrain on {config.corpus.name}"},
        training=summary,
    )
    log.info("exported %s (val ppl %.2f)", directory, summary["val_perplexity"])


def export_checkpoint(
    run_dir: str | Path, directory: str | Path, *, extra: Mapping[str, Any] | None = None
) -> Path:
    """Export a run's last checkpoint (e.g. one stopped by SIGTERM) as a model folder with its card.

    Validation and the unigram baseline are recomputed on the checkpoint's held-out split; `extra`
    is merged into the card's `training` section.
    """
    run_dir, directory = Path(run_dir), Path(directory)
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    config = config_from_checkpoint(run_dir)
    encoder = ProteinEncoder(config.model_config)
    encoder.load_state_dict(state["model"])
    corpus = load_corpus(
        config.corpus, val_fraction=config.val_fraction, cluster_tsv=config.cluster_tsv
    )
    val_batches = _validation_batches(corpus, config)
    device = torch.device("cpu")
    dtype = resolve_dtype(config.dtype, device)
    val_loss = _validate(encoder, val_batches, config, device, dtype)
    summary = _summary(
        config,
        state["step"],
        state["tokens_seen"],
        val_loss,
        unigram_perplexity(corpus.train, corpus.val),
        len(val_batches),
        state["elapsed_s"],
        state.get("command"),
    )
    summary |= {
        "hardware": state.get("hardware"),
        "dtype": state.get("dtype"),
        "resume_commands": state.get("resume_commands", []),
        "init_from": state.get("init_from"),
    }
    summary |= dict(extra or {})
    _export(encoder, directory, config=config, summary=summary)
    return directory


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise InvalidInputError(
            "--tensorboard needs the tensorboard package (pip install tensorboard)"
        ) from None
    return SummaryWriter(str(run_dir / "tb"))


def plot_run(run_dir: str | Path) -> Path:
    """Draw training loss, validation perplexity and any probe 1-NN against tokens seen into
    run_dir/loss_curve.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    path = run_dir / LOG_NAME
    if not path.is_file():
        raise InvalidInputError(f"{run_dir}: no {LOG_NAME} there; is it a pretraining run folder?")
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    tokens = [int(r["tokens"]) / 1e6 for r in rows if r["loss"]]
    loss = [float(r["loss"]) for r in rows if r["loss"]]
    val = [(int(r["tokens"]) / 1e6, float(r["val_ppl"])) for r in rows if r["val_ppl"]]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    ax.plot(tokens, [math.exp(v) for v in loss], color="0.6", lw=0.8, label="train ppl (masked)")
    if val:
        ax.plot(*zip(*val, strict=True), "o-", color="C0", ms=3, label="val ppl (held-out 2%)")
    ax.set_xlabel("tokens seen (millions)")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    probe = [(int(r["tokens"]) / 1e6, float(r["probe_nn1"])) for r in rows if r.get("probe_nn1")]
    if probe:
        right = ax.twinx()
        right.plot(
            *zip(*probe, strict=True), "s-", color="C2", ms=3, label="probe 1-NN (last layer)"
        )
        right.set_ylabel("probe 1-NN accuracy")
        right.set_ylim(0, 1)
        extra_handles, extra_labels = right.get_legend_handles_labels()
        handles, labels = handles + extra_handles, labels + extra_labels
    ax.legend(handles, labels)
    ax.set_title(run_dir.name)
    fig.tight_layout()
    out = run_dir / PLOT_NAME
    fig.savefig(out)
    plt.close(fig)
    return out


def config_from_checkpoint(run_dir: str | Path) -> PretrainConfig:
    """The config stored in a run's checkpoint (so `--resume` needs only the run folder)."""
    state = load_checkpoint(Path(run_dir) / CHECKPOINT_NAME)
    recipe = dict(state["config"])
    recipe["betas"] = tuple(recipe["betas"])
    return PretrainConfig(**recipe)


if __name__ == "__main__":
    from protssl.cli.pretrain import main

    sys.exit(main())
