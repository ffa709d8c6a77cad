"""`python -m protssl.pretrain` (what torchrun launches): the `pretrain` command in this process."""

from __future__ import annotations

import json
import math
import shlex
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from pretrain_support import log_rows

import protssl.pretrain
from protssl.checkpoint import load_model
from protssl.cli.pretrain import _OUTCOME_ENV, _read_outcome
from protssl.model import PRESETS, ProteinEncoder, init_weights
from protssl.pretrain import CHECKPOINT_NAME, PLOT_NAME, PretrainConfig, PretrainResult
from protssl.pretrain.__main__ import main
from protssl.pretrain.data import load_corpus
from protssl.pretrain.probe import masked_lm_loss

ROOT = Path(__file__).resolve().parents[1]


def test_fifty_steps_lower_validation_loss(tmp_path: Path, sample_fasta: Path) -> None:
    run = tmp_path / "run"
    argv = [
        str(sample_fasta),
        "--run-dir",
        str(run),
        "--preset",
        "protssl-tiny",
        "--steps",
        "50",
        "--crop",
        "126",
        "--max-tokens",
        "1024",
        "--tokens-per-step",
        "2048",
        "--lr",
        "3e-3",
        "--warmup",
        "5",
        "--val-every",
        "5",
        "--val-max-records",
        "32",
        "--no-progress",
    ]
    assert main(argv) == 0
    val = [float(r["val_loss"]) for r in log_rows(run) if r["val_loss"]]
    assert len(val) == 10
    assert val[-1] < val[0] - 0.1
    assert (run / PLOT_NAME).stat().st_size > 1000
    loaded = load_model(run / "model")
    card = json.loads((run / "model" / "model.json").read_text())["training"]
    assert loaded.card.architecture.num_layers == 2
    assert card["steps"] == 50 and card["tokens_seen"] > 50 * 1500
    assert card["val_perplexity"] == pytest.approx(math.exp(val[-1]), rel=1e-3)
    assert card["unigram_val_perplexity"] > 10
    assert card["command"] == shlex.join(["python", "-m", "protssl.pretrain", *argv])
    assert card["recipe"]["preset"] == "protssl-tiny"
    held_out = list(load_corpus(sample_fasta, val_fraction=0.02).val)
    untrained = ProteinEncoder(PRESETS["protssl-tiny"])
    init_weights(untrained)
    trained_loss = masked_lm_loss(loaded.encoder, held_out, window_residues=126)
    assert trained_loss < masked_lm_loss(untrained, held_out, window_residues=126) - 0.1


def test_user_errors_exit_2_with_one_line(
    tmp_path: Path, sample_fasta: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing"
    assert main(["--resume", "--run-dir", str(missing)]) == 2
    assert capsys.readouterr().err.startswith(
        f"python -m protssl.pretrain: error: {missing}: no {CHECKPOINT_NAME} there, so no run to "
        "continue or export"
    )
    assert main(["--resume", "--run-dir", str(tmp_path), "--lr", "0.1"]) == 2
    assert capsys.readouterr().err == (
        "python -m protssl.pretrain: error: --resume reads the recipe from the checkpoint; give only --run-dir (and --steps)\n"
    )
    assert main([str(sample_fasta), "--run-dir", str(tmp_path), "--stop-after", "0"]) == 2
    assert (
        capsys.readouterr().err
        == "python -m protssl.pretrain: error: --stop-after must be >= 1, got 0\n"
    )
    for given, said in (  # the recipe's checks name the options, not PretrainConfig's fields
        (["--warmup", "-3"], "--warmup, --grad-clip and --weight-decay must be >= 0"),
        (
            ["--max-tokens", "123", "--crop", "200"],
            "--max-tokens 123 must hold one full crop (202)",
        ),
        (["--mask-prob", "1.5"], "--mask-prob must be in (0, 1), got 1.5"),
    ):
        assert main([str(sample_fasta), "--run-dir", str(tmp_path), *given]) == 2
        assert capsys.readouterr().err == f"python -m protssl.pretrain: error: {said}\n"


def test_the_rank_gpu_comes_from_torchruns_environment(
    tmp_path: Path, sample_fasta: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, object]] = []

    def record(config: PretrainConfig, **options: object) -> PretrainResult:
        calls.append(options)
        return PretrainResult(None, 0, 0, None, True, None)  # type: ignore[arg-type]

    monkeypatch.setattr(protssl.pretrain, "pretrain", record)  # the command imports it when run
    argv = [str(sample_fasta), "--run-dir", str(tmp_path), "--preset", "protssl-tiny"]
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert main(argv) == 0
    monkeypatch.delenv("LOCAL_RANK")
    assert main(argv) == 0
    assert [call["local_rank"] for call in calls] == [3, None]


@pytest.mark.parametrize(
    ("rank", "ended", "told"),
    [
        ("0", {"signal": signal.SIGTERM}, (7, signal.SIGTERM)),
        ("0", {"signal": signal.SIGINT}, (7, signal.SIGINT)),
        ("0", {}, None),  # --stop-after: stopped by design
        ("0", {"signal": signal.SIGTERM, "model_dir": Path("m")}, None),  # after the last step
        ("1", {"signal": signal.SIGTERM}, None),  # rank 0 says how the run ended
    ],
)
def test_under_the_launcher_rank_0_tells_it_the_signal_that_stopped_the_workers(
    rank: str,
    ended: dict[str, object],
    told: tuple[int, int] | None,
    tmp_path: Path,
    sample_fasta: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every worker exits 0 however it stopped; `--nproc`'s launcher learns of a signal (and
    exits 130) from the file it named, which a finished run or --stop-after leaves without one."""

    def stopped(config: PretrainConfig, **options: object) -> PretrainResult:
        return replace(PretrainResult(None, 7, 0, None, True, None), **ended)  # type: ignore[arg-type]

    monkeypatch.setattr(protssl.pretrain, "pretrain", stopped)
    outcome = tmp_path / "outcome.json"
    monkeypatch.setenv(_OUTCOME_ENV, str(outcome))
    monkeypatch.setenv("LOCAL_RANK", rank)
    monkeypatch.setenv("RANK", rank)
    assert main([str(sample_fasta), "--run-dir", str(tmp_path / "run")]) == 0
    assert outcome.exists() is (rank == "0")
    assert _read_outcome(outcome) == told


def test_python_dash_m_protssl_pretrain_shows_the_pretrain_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "protssl.pretrain", "--help"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m protssl.pretrain [-h]")  # as it is typed
    assert "--resume" in done.stdout and "--nproc" in done.stdout
