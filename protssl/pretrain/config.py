"""What one pretraining run is: the frozen recipe a run is started, checkpointed and resumed with."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from protssl.dtypes import DTypeName, check_dtype_name
from protssl.errors import InvalidInputError, refuse_non_finite
from protssl.model import PRESETS, ModelConfig

__all__ = ["INPUT_FIELDS", "PretrainConfig"]

INPUT_FIELDS = ("corpus", "cluster_tsv", "init_from", "probe_fasta")
"""The recipe's fields that name files a run reads (the run folder aside)."""


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
    dtype: DTypeName = "auto"
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
    """Optional two-column TSV (representative, member): MLM draws a cluster uniformly, then a
    member; contrastive objectives take each cluster once per pass, with cluster positives."""
    objective: Literal["mlm", "contrastive", "mlm+contrastive"] = "mlm"
    """Masked-LM, InfoNCE between two views of a protein (or two cluster members), or both."""
    mlm_weight: float = 1.0
    """Weight of the masked-LM term in `mlm+contrastive`."""
    contrastive_weight: float = 1.0
    """Weight of the InfoNCE term in `contrastive` and `mlm+contrastive`."""
    temperature: float = 0.1
    """InfoNCE temperature on cosine similarities of the projected pooled vectors."""
    cluster_positive_rate: float = 0.5
    """Chance a positive is another member of the anchor's cluster (needs `cluster_tsv`) rather
    than a second view of the same protein."""
    cluster_min_members: int = 1
    """Contrastive anchors come only from clusters of at least this many members (2 with a
    positive rate of 1: every positive is a homologue, never the same protein)."""
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
        refuse_non_finite(self)  # --weight-decay nan passed the checks below, training NaNs
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
        self._check_objective()
        if check_dtype_name(self.dtype) == "int8":
            raise InvalidInputError(
                "dtype int8 is for inference (embed, serve); train in auto, float32 or bfloat16"
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise InvalidInputError(f"device must be auto, cpu or cuda, not {self.device!r}")

    def _check_objective(self) -> None:
        """The objective's name, weights and the contrastive batch shape make sense."""
        if self.objective not in ("mlm", "contrastive", "mlm+contrastive"):
            raise InvalidInputError(
                f"objective must be mlm, contrastive or mlm+contrastive, not {self.objective!r}"
            )
        if self.mlm_weight < 0 or self.contrastive_weight < 0:
            raise InvalidInputError("mlm_weight and contrastive_weight must be >= 0")
        if not 0 < self.temperature <= 10:
            raise InvalidInputError(f"temperature must be in (0, 10], got {self.temperature}")
        if not 0 <= self.cluster_positive_rate <= 1:
            raise InvalidInputError(
                f"cluster_positive_rate must be in [0, 1], got {self.cluster_positive_rate}"
            )
        if self.cluster_min_members < 1:
            raise InvalidInputError(
                f"cluster_min_members must be >= 1, got {self.cluster_min_members}"
            )
        if self.cluster_min_members > 1 and (self.cluster_tsv is None or not self.contrastive):
            raise InvalidInputError(
                "cluster_min_members applies to the contrastive objectives with cluster_tsv"
            )
        if self.contrastive and self.max_tokens < 4 * (self.crop_residues + 2):
            raise InvalidInputError(
                f"max_tokens {self.max_tokens} must hold two pairs of full crops "
                f"({4 * (self.crop_residues + 2)}) for in-batch negatives"
            )

    @property
    def contrastive(self) -> bool:
        """Whether the run trains the InfoNCE term (and so a projection head)."""
        return self.objective != "mlm"

    @property
    def model_config(self) -> ModelConfig:
        """The model shape `preset` names."""
        return PRESETS[self.preset]

    def with_absolute_inputs(self) -> PretrainConfig:
        """This recipe with the files it reads as absolute paths (resolved from the working
        directory): what a run records, so that `--resume` and `pretrain-export` find them from
        any folder (paths as typed were relative to the folder the run was launched from)."""
        inputs = {key: getattr(self, key) for key in INPUT_FIELDS}
        return replace(self, **{k: v.resolve() for k, v in inputs.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly recipe (paths as strings)."""
        out = asdict(self)
        for key in ("run_dir", *INPUT_FIELDS):
            out[key] = None if out[key] is None else str(out[key])
        out["betas"] = list(self.betas)
        return out
