"""A run sized to a time budget: what to do with a lent GPU, without planning.

The recipe is the best one measured so far (masked-LM continuation of the shipped model with a
warm restart; contrastive runs lowered every quality figure on CPU). A short calibration times
this recipe's optimizer steps and one validation on the machine at hand, on a throwaway copy;
the schedule is then laid out over as many steps as fit what is left of the budget, with a
deadline as a safety net: a run that reaches it stops with a checkpoint and is exported anyway.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from protssl.checkpoint import read_card, update_card_training
from protssl.entrypoint import interruption
from protssl.errors import InvalidInputError
from protssl.pretrain.config import PretrainConfig
from protssl.pretrain.export import MODEL_SUBDIR, export_checkpoint
from protssl.pretrain.loop import PretrainResult, pretrain, refuse_occupied

__all__ = [
    "LEASE_RECIPE",
    "LeasePlan",
    "LeaseResult",
    "calibrate",
    "lease_config",
    "plan_steps",
    "run_lease",
]

log = logging.getLogger(__name__)

LEASE_RECIPE: Mapping[str, Any] = MappingProxyType(
    {
        "preset": "protssl-8m-h5",
        "objective": "mlm",
        "crop_residues": 1022,
        "max_tokens": 65536,
        "tokens_per_step": 131072,
        "lr": 1e-3,
        "schedule": "cosine",
        "min_lr_ratio": 0.1,
        "val_max_records": 512,
        "log_every": 10,
        "name": "protssl-default",
    }
)
"""The recipe of the second GPU lease (2026-12-04), the one that bought the most function per
token; `warmup_steps`, `val_every` and `checkpoint_every` follow the planned length."""

WARMUP_FRACTION = 0.04
"""Warmup as a share of the planned steps (100 of 2,500 in the recipe above)."""


@dataclass(frozen=True)
class LeasePlan:
    """How a budget was spent: what calibration measured and how many steps that allowed."""

    budget_s: float
    calibration_steps: int
    step_s: float
    """Mean wall time of one optimizer step after the first two (warm-up) calibration steps."""
    eval_s: float
    """Wall time of one validation (and probe)."""
    setup_s: float
    """Corpus loading, model start, checkpoint and plot: what a run costs besides steps."""
    calibration_s: float
    evaluations: int
    steps: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly, rounded."""
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class LeaseResult:
    """The run, its plan, and the exported model folder."""

    result: PretrainResult
    plan: LeasePlan
    model_dir: Path
    val_perplexity: float
    """The exported model's held-out perplexity (from its card)."""


def lease_config(corpus: Path, run_dir: Path, **overrides: Any) -> PretrainConfig:
    """The lease recipe for `corpus`, with any field overridden (e.g. `init_from`, `probe_fasta`)."""
    return PretrainConfig(corpus=corpus, run_dir=run_dir, **{**LEASE_RECIPE, **overrides})


def plan_steps(
    seconds_left: float,
    *,
    step_s: float,
    eval_s: float,
    setup_s: float,
    evaluations: int,
    safety: float = 0.9,
) -> int:
    """Optimizer steps that fit `seconds_left` after setup and `evaluations` validations (plus the
    final export's), kept within `safety` of the time left for steps."""
    if step_s <= 0:
        raise ValueError(f"step_s must be > 0, got {step_s}")
    for_steps = seconds_left - setup_s - (evaluations + 1) * eval_s
    return max(0, int(safety * for_steps / step_s))


def calibrate(config: PretrainConfig, steps: int = 10) -> tuple[float, float, float]:
    """(seconds per step, seconds per validation, setup seconds) of `config` on this machine,
    measured on a throwaway run of `steps` steps with one validation at its end."""
    if steps < 3:
        raise InvalidInputError(f"calibration needs at least 3 steps, got {steps}")
    with tempfile.TemporaryDirectory(prefix="protssl-calibrate-") as tmp:
        trial = replace(
            config,
            run_dir=Path(tmp),
            steps=10 * steps,
            warmup_steps=steps,
            val_every=steps,
            checkpoint_every=10 * steps,
            log_every=steps,
            tensorboard=False,
        )
        started = time.monotonic()
        result = pretrain(trial, stop_after=steps, progress=False)
        total = time.monotonic() - started
    if result.signal is not None:  # the lease's run would start as if none came
        raise interruption(result.signal, "stopped while calibrating: nothing trained yet")
    step_s = statistics.fmean(result.step_seconds[2:])
    setup_s = max(0.0, total - sum(result.step_seconds) - result.eval_seconds)
    return step_s, result.eval_seconds, setup_s


def run_lease(
    config: PretrainConfig,
    budget_s: float,
    *,
    calibration_steps: int = 10,
    evaluations: int = 4,
    command: str | None = None,
    progress: bool = True,
) -> LeaseResult:
    """Calibrate, size `config`'s schedule to what is left of `budget_s`, train, and export.

    The run stops at the deadline if the plan was too hopeful, keeping a margin for the export;
    the model is exported either way (also after SIGTERM or SIGINT, `signal` in the result) and
    its card's `training.lease` records the plan; a signal while calibrating raises.
    """
    started = time.monotonic()
    if (config.run_dir / MODEL_SUBDIR).exists():
        raise InvalidInputError(
            f"{config.run_dir}: already holds a finished run; choose a new --run-dir"
        )
    refuse_occupied(config.run_dir)  # before calibrating, not minutes of the lease later
    step_s, eval_s, setup_s = calibrate(config, calibration_steps)
    calibration_s = time.monotonic() - started
    steps = plan_steps(
        budget_s - calibration_s,
        step_s=step_s,
        eval_s=eval_s,
        setup_s=setup_s,
        evaluations=evaluations,
    )
    plan = LeasePlan(
        budget_s=budget_s,
        calibration_steps=calibration_steps,
        step_s=step_s,
        eval_s=eval_s,
        setup_s=setup_s,
        calibration_s=calibration_s,
        evaluations=evaluations,
        steps=steps,
    )
    log.info("lease plan: %s", plan.to_dict())
    if steps < 1:
        raise InvalidInputError(
            f"a budget of {budget_s:g} s leaves no step: calibration took {calibration_s:.0f} s, "
            f"a step {step_s:.2f} s, a validation {eval_s:.1f} s, setup {setup_s:.1f} s"
        )
    every = max(1, steps // evaluations)
    sized = replace(
        config,
        steps=steps,
        warmup_steps=max(1, round(WARMUP_FRACTION * steps)),
        val_every=every,
        checkpoint_every=every,
    )
    result = pretrain(
        sized,
        command=command,
        progress=progress,
        deadline=started + budget_s - eval_s - setup_s,
    )
    model_dir = result.model_dir
    if model_dir is None:
        model_dir = export_checkpoint(sized.run_dir, sized.run_dir / MODEL_SUBDIR, overwrite=True)
    update_card_training(
        model_dir,
        {
            "lease": plan.to_dict()
            | {
                "steps_done": result.step,
                "deadline_reached": result.deadline_reached,
                "wall_s": round(time.monotonic() - started, 1),
            }
        },
    )
    training = read_card(model_dir).training or {}
    return LeaseResult(
        result=result,
        plan=plan,
        model_dir=model_dir,
        val_perplexity=float(training["val_perplexity"]),
    )
