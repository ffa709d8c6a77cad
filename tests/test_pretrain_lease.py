"""A run sized to a time budget: the plan's arithmetic, the deadline, and the exported card."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from pretrain_support import log_rows, sigterm_once_training, tiny_config

from protssl.checkpoint import load_model
from protssl.entrypoint import Terminated
from protssl.errors import InvalidInputError
from protssl.pretrain import pretrain
from protssl.pretrain.lease import LEASE_RECIPE, lease_config, plan_steps, run_lease

ROOT = Path(__file__).resolve().parents[1]


def test_plan_leaves_room_for_setup_validations_and_export() -> None:
    # 100 s: 10 s setup, 5 validations of 2 s (4 + the export's) -> 80 s for steps, 0.9 of it
    assert plan_steps(100, step_s=0.5, eval_s=2, setup_s=10, evaluations=4) == 144
    assert plan_steps(100, step_s=0.5, eval_s=2, setup_s=10, evaluations=4, safety=1.0) == 160
    assert plan_steps(5, step_s=0.5, eval_s=2, setup_s=10, evaluations=4) == 0
    with pytest.raises(ValueError):
        plan_steps(100, step_s=0, eval_s=2, setup_s=10, evaluations=4)


def test_lease_recipe_is_the_second_gpu_lease() -> None:
    card = json.loads((ROOT / "models" / "protssl-default" / "model.json").read_text())
    shipped = card["training"]["recipe"]
    for key, value in LEASE_RECIPE.items():
        assert shipped.get(key, "mlm") == value, (
            key
        )  # the card predates `objective` (then MLM only)
    config = lease_config(
        Path("corpus.fa"), Path("run"), init_from=ROOT / "models" / "protssl-default"
    )
    assert (config.objective, config.lr, config.crop_residues) == ("mlm", 1e-3, 1022)


def test_deadline_stops_a_run_with_a_checkpoint(tmp_path: Path, sample_fasta: Path) -> None:
    config = tiny_config(sample_fasta, tmp_path / "run", steps=10_000)
    result = pretrain(
        config, progress=False, deadline=0.0
    )  # long past: stops after the first check
    assert result.deadline_reached and result.interrupted
    assert result.step == 0 and result.model_dir is None
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


@pytest.mark.slow
def test_lease_calibrates_plans_trains_and_exports_with_the_plan_in_the_card(
    tmp_path: Path, sample_fasta: Path
) -> None:
    config = replace(tiny_config(sample_fasta, tmp_path / "run"), name="leased")
    done = run_lease(config, 25.0, calibration_steps=4, evaluations=2, progress=False)
    plan = done.plan
    assert plan.step_s > 0 and plan.eval_s > 0 and plan.setup_s >= 0
    assert plan.steps == plan_steps(
        25.0 - plan.calibration_s,
        step_s=plan.step_s,
        eval_s=plan.eval_s,
        setup_s=plan.setup_s,
        evaluations=2,
    )
    card = json.loads((done.model_dir / "model.json").read_text())
    lease = card["training"]["lease"]
    assert lease["steps"] == plan.steps and lease["steps_done"] == done.result.step
    assert card["training"]["scheduled_steps"] == plan.steps
    assert card["training"]["recipe"]["warmup_steps"] == max(1, round(0.04 * plan.steps))
    assert lease["deadline_reached"] == done.result.deadline_reached
    if done.result.deadline_reached:  # a loaded machine: stopped early, exported all the same
        assert done.result.step < plan.steps
    else:
        assert done.result.step == plan.steps
        validated = [row["step"] for row in log_rows(tmp_path / "run") if row["val_loss"]]
        assert validated[-1] == str(plan.steps)
    assert load_model(done.model_dir).card.name == "leased"
    assert done.val_perplexity == card["training"]["val_perplexity"] > 1
    with pytest.raises(InvalidInputError, match="already holds a finished run"):
        run_lease(config, 25.0, calibration_steps=4, progress=False)


def test_sigterm_while_calibrating_stops_the_lease_before_it_trains(
    tmp_path: Path, sample_fasta: Path
) -> None:
    """The calibration run took the signal and the lease went on to train as if none came."""
    sigterm_once_training(0.0)
    with pytest.raises(Terminated, match=r"^stopped while calibrating: nothing trained yet$"):
        run_lease(tiny_config(sample_fasta, tmp_path / "run"), 60.0, calibration_steps=4)
    assert not (tmp_path / "run").exists()


def test_sigterm_during_the_lease_exports_what_it_trained_and_says_so(
    tmp_path: Path, sample_fasta: Path
) -> None:
    sigterm_once_training(1.0, call=2)
    done = run_lease(
        tiny_config(sample_fasta, tmp_path / "run", steps=100_000),
        600.0,
        calibration_steps=4,
        progress=False,
    )
    assert done.result.signal == signal.SIGTERM and not done.result.deadline_reached
    card = json.loads((done.model_dir / "model.json").read_text())
    assert card["training"]["lease"]["steps_done"] == done.result.step > 0


def test_a_budget_too_small_for_one_step_is_one_line_and_exit_2(
    tmp_path: Path, sample_fasta: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "protssl", "pretrain-lease", str(sample_fasta), "--seconds", "0.5",
         "--run-dir", str(tmp_path / "run"), "--preset", "protssl-tiny", "--crop", "126",
         "--max-tokens", "1024", "--tokens-per-step", "1024", "--val-max-records", "8",
         "--calibration-steps", "3", "--no-progress"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "leaves no step" in done.stderr and "Traceback" not in done.stderr


def test_the_lease_takes_none_of_what_it_plans_and_refuses_an_occupied_folder_at_once(
    tmp_path: Path, sample_fasta: Path
) -> None:
    """--warmup, --val-every and --checkpoint-every were offered and overwritten by the plan; a run
    folder holding an unfinished run was found only after calibrating."""
    lease = [sys.executable, "-m", "protssl", "pretrain-lease", str(sample_fasta), "--seconds"]
    for flag in ("--warmup", "--val-every", "--checkpoint-every", "--steps"):
        done = subprocess.run([*lease, "60", flag, "5"], capture_output=True, text=True)
        assert done.returncode == 2 and f"unrecognized arguments: {flag} 5" in done.stderr
    run_dir = tmp_path / "run"
    pretrain(tiny_config(sample_fasta, run_dir), stop_after=1, progress=False)
    started = time.monotonic()
    with pytest.raises(InvalidInputError, match="holds a run already"):
        run_lease(tiny_config(sample_fasta, run_dir), 600.0, calibration_steps=50)
    assert time.monotonic() - started < 5  # no calibration ran


@pytest.mark.parametrize("seconds", ["nan", "inf", "0"])
def test_a_budget_that_is_not_a_positive_number_is_refused_before_calibrating(
    tmp_path: Path, sample_fasta: Path, seconds: str
) -> None:
    """--seconds nan passed the `<= 0` check, calibrated for a minute, then ended in a traceback."""
    lease = [sys.executable, "-m", "protssl", "pretrain-lease", str(sample_fasta), "--seconds"]
    done = subprocess.run(
        [*lease, seconds, "--run-dir", str(tmp_path / "run")], capture_output=True, text=True
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"protssl pretrain-lease: error: --seconds must be a number > 0, got {float(seconds)}"
    )
