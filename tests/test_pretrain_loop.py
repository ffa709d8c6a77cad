"""Whole training runs: the probe at each validation, exact resume, signals, settings put back, DDP,
a full disk at a checkpoint, one process per run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from file_limits import file_size_limit
from other_process import another_process_holding
from ports import free_port
from pretrain_support import ddp_worker, log_rows, sigterm_once_training, tiny_config

from protssl.checkpoint import load_model
from protssl.errors import InvalidInputError
from protssl.pretrain import (
    CHECKPOINT_NAME,
    LOG_NAME,
    PLOT_NAME,
    FunctionProbe,
    PretrainConfig,
    pretrain,
)
from protssl.pretrain import loop as loop_module
from protssl.pretrain.state import (
    RUN_LOCK_NAME,
    config_from_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

LABELLED = Path(__file__).resolve().parents[1] / "examples" / "labelled.fasta"


def test_function_probe_is_scored_at_each_validation_and_recorded_in_the_card(
    tmp_path: Path, sample_fasta: Path
) -> None:
    run = tmp_path / "run"
    result = pretrain(tiny_config(sample_fasta, run, probe_fasta=LABELLED), progress=False)
    rows = log_rows(run)
    scored = [r for r in rows if r["probe_nn1"]]
    assert [r["step"] for r in scored] == [r["step"] for r in rows if r["val_loss"]] == ["6", "12"]
    for row in scored:
        assert 0 <= float(row["probe_nn1"]) <= float(row["probe_nn1_best"]) <= 1
    assert (run / PLOT_NAME).stat().st_size > 1000  # the probe on a second axis
    probe = json.loads((run / "model" / "model.json").read_text())["training"]["function_probe"]
    assert (probe["records"], probe["labels"]) == (72, 6)
    assert probe["nn1_last_layer"] == float(scored[-1]["probe_nn1"])
    assert probe["nn1_composition"] > 1 / 6  # composition carries family signal: well above chance
    exported = load_model(result.model_dir)
    again = FunctionProbe.from_fasta(LABELLED).score(exported.encoder, torch.float32)
    assert again["nn1_last_layer"] == pytest.approx(probe["nn1_last_layer"], abs=0.03)


def _flushing_denormals() -> bool:
    return float(torch.tensor([1e-39]) * 1.0) == 0.0


@pytest.mark.parametrize("before", [False, True])
def test_denormals_are_flushed_while_training_and_the_setting_found_is_put_back(
    before: bool, tmp_path: Path, sample_fasta: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []

    def run(config: PretrainConfig, *_: object, **__: object) -> None:
        seen.append(_flushing_denormals())
        raise KeyboardInterrupt  # the setting must be put back on any way out

    monkeypatch.setattr(loop_module, "_pretrain", run)
    torch.set_flush_denormal(before)
    try:
        with pytest.raises(KeyboardInterrupt):
            pretrain(tiny_config(sample_fasta, tmp_path / "run"))
        assert seen == [True]
        assert _flushing_denormals() is before
    finally:
        torch.set_flush_denormal(False)


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(
    tmp_path: Path, sample_fasta: Path
) -> None:
    whole = pretrain(tiny_config(sample_fasta, tmp_path / "whole"), progress=False)
    first = pretrain(tiny_config(sample_fasta, tmp_path / "split"), stop_after=5, progress=False)
    assert first.interrupted and first.step == 5 and first.model_dir is None
    second = pretrain(tiny_config(sample_fasta, tmp_path / "split"), resume=True, progress=False)
    assert not second.interrupted and second.step == 12
    assert first.losses + second.losses == whole.losses
    assert second.tokens_seen == whole.tokens_seen
    assert second.val_loss == whole.val_loss
    for key, value in whole.encoder.state_dict().items():
        assert torch.equal(value, second.encoder.state_dict()[key]), key
    assert [r["loss"] for r in log_rows(tmp_path / "whole")] == [
        r["loss"] for r in log_rows(tmp_path / "split")
    ]


def test_sigterm_checkpoints_and_stops_and_the_handlers_found_come_back(
    tmp_path: Path, sample_fasta: Path
) -> None:
    def mine(signum: int, frame: object) -> None:
        raise AssertionError("the run's handler should have caught the signal")

    previous = signal.signal(signal.SIGINT, mine)
    config = tiny_config(sample_fasta, tmp_path, steps=100_000, checkpoint_every=100_000)
    sigterm_once_training()
    try:
        result = pretrain(config, progress=False)
        assert signal.getsignal(signal.SIGINT) is mine
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, previous)
    assert result.interrupted and result.signal == signal.SIGTERM and 0 < result.step < config.steps
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == result.step


@pytest.mark.slow
def test_two_process_ddp_ends_with_identical_weights(tmp_path: Path, sample_fasta: Path) -> None:
    changes = {"steps": 4, "val_every": 4}
    mp.spawn(ddp_worker, args=(free_port(), str(sample_fasta), str(tmp_path), changes), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    initial = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    assert initial["step"] == 4
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key
    moved = [k for k, v in ranks[0].items() if not torch.equal(v, torch.zeros_like(v))]
    assert moved
    assert (tmp_path / "run" / "model" / "model.json").is_file()
    # both ranks contributed: twice the tokens of one rank's micro-batches per step
    card = json.loads((tmp_path / "run" / "model" / "model.json").read_text())["training"]
    assert card["tokens_seen"] > 4 * 2048 * 0.7


@pytest.mark.slow
def test_a_signal_to_one_ddp_rank_stops_every_rank_at_the_same_step(
    tmp_path: Path, sample_fasta: Path
) -> None:
    """SIGTERM that reaches rank 1 only (or the ranks between different steps): both stop at one
    step and the checkpoint is of that step; one rank leaving alone left the other waiting."""
    changes = {"steps": 100_000, "checkpoint_every": 100_000}
    mp.spawn(ddp_worker, args=(free_port(), str(sample_fasta), str(tmp_path), changes, 1), nprocs=2)
    stopped = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert stopped[0] == stopped[1] == {"step": stopped[0]["step"], "signal": signal.SIGTERM}
    assert 0 < stopped[0]["step"] < changes["steps"]
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["step"] == stopped[0]["step"]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key


def test_a_full_disk_at_a_checkpoint_stops_the_run_and_keeps_the_last_one(
    tmp_path: Path, sample_fasta: Path
) -> None:
    """The next checkpoint cannot be written (files stop at half its size, as on a full disk):
    the run ends with one line saying what is kept, the old checkpoint intact; --resume finishes."""
    run_dir = tmp_path / "run"
    pretrain(tiny_config(sample_fasta, run_dir), stop_after=4, progress=False)
    checkpoint = run_dir / CHECKPOINT_NAME
    kept = checkpoint.read_bytes()
    command = [sys.executable, "-m", "protssl", "pretrain", "--run-dir", str(run_dir), "--resume"]
    failed = subprocess.run(
        [*command, "--no-progress"],
        capture_output=True,
        text=True,
        preexec_fn=file_size_limit(len(kept) // 2),
    )
    assert failed.returncode == 2, failed.stderr
    assert "Traceback" not in failed.stderr
    assert failed.stderr.splitlines()[-1] == (
        f"protssl pretrain: error: pretraining stopped at step 8: writing {str(checkpoint)!r} "
        "failed: File too large; the checkpoint of step 4 is kept: free space, then go on with "
        f"`protssl pretrain --run-dir {run_dir} --resume`"
    )
    assert checkpoint.read_bytes() == kept
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]

    done = subprocess.run([*command, "--no-progress"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(checkpoint)["step"] == 12
    assert [row["step"] for row in log_rows(run_dir)][-1] == "12"
    assert (load_model(run_dir / "model").card.training or {})["steps"] == 12


def _sigterm_once_logged(command: list[str], run_dir: Path, step: int) -> tuple[int, str]:
    """Run a pretrain command, SIGTERM it once its log has a row past `step`; exit code, stderr."""
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as proc:
        deadline = time.monotonic() + 180
        try:
            while not _logged_past(run_dir, step):
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        finally:  # also when it failed: a run left training would keep the test waiting
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=180)
    return proc.returncode, stderr


def _logged_past(run_dir: Path, step: int) -> bool:
    rows = log_rows(run_dir) if (run_dir / LOG_NAME).is_file() else []
    return bool(rows) and int(rows[-1]["step"]) > step


def test_sigterm_to_the_pretrain_command_exits_130_naming_the_checkpoint(
    tmp_path: Path, sample_fasta: Path
) -> None:
    """What SLURM and Kubernetes send: exit 130 as every command (it was 0, as if done), one line
    with the step kept and how to go on."""
    run_dir = tmp_path / "run"
    pretrain(tiny_config(sample_fasta, run_dir), stop_after=2, progress=False)
    command = [sys.executable, "-m", "protssl", "pretrain", "--run-dir", str(run_dir), "--resume"]
    code, stderr = _sigterm_once_logged(
        [*command, "--steps", "100000", "--no-progress"], run_dir, 2
    )
    assert code == 130, stderr
    step = load_checkpoint(run_dir / CHECKPOINT_NAME)["step"]
    assert step > 2 and "Traceback" not in stderr
    assert stderr.splitlines()[-1] == (
        f"protssl pretrain: terminated (SIGTERM); the checkpoint of step {step} is kept: continue "
        f"with protssl pretrain --resume --run-dir {run_dir}"
    )


@pytest.mark.slow
def test_sigterm_to_a_two_process_run_checkpoints_and_stops_its_workers(
    tmp_path: Path, sample_fasta: Path
) -> None:
    """`--nproc 2` under a scheduler: the launcher passes SIGTERM to the torchrun workers, which
    checkpoint and stop, and exits 130 after them (it exited at once, the workers training on
    without it and nothing checkpointed)."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "protssl", "pretrain", str(sample_fasta), "--run-dir"]
    command += [str(run_dir), "--preset", "protssl-tiny", "--steps", "100000", "--crop", "126"]
    command += ["--max-tokens", "1024", "--tokens-per-step", "2048", "--log-every", "2"]
    command += ["--checkpoint-every", "100000", "--no-progress", "--nproc", "2"]
    code, stderr = _sigterm_once_logged(command, run_dir, 0)
    assert code == 130, stderr
    step = load_checkpoint(run_dir / CHECKPOINT_NAME)["step"]
    assert f"stopped at step {step}; continue with" in stderr and "Traceback" not in stderr
    assert stderr.splitlines()[-1] == (
        f"protssl pretrain: terminated (SIGTERM); the checkpoint of step {step} is kept: continue "
        f"with protssl pretrain --resume --run-dir {run_dir}"
    )
    assert not _training(run_dir)  # no worker trains on


def _training(run_dir: Path) -> list[Path]:
    """The /proc cmdline files of processes whose command line names `run_dir`."""
    return [c for c in Path("/proc").glob("[0-9]*/cmdline") if str(run_dir).encode() in _read(c)]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # a process that ended meanwhile
        return b""


@pytest.mark.slow
def test_a_signal_to_one_worker_of_a_two_process_run_makes_the_launcher_exit_130(
    tmp_path: Path, sample_fasta: Path
) -> None:
    """A scheduler (or `kill PID`) that SIGTERMs one torchrun worker, not the launcher: the ranks
    stop at one step and every worker exits 0, so the launcher exited 0 as if the run were done.
    It exits 130 with the step kept and how to go on; --stop-after and a finished run exit 0."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "protssl", "pretrain", "--run-dir", str(run_dir)]
    command += ["--nproc", "2", "--no-progress"]
    recipe = [str(sample_fasta), "--preset", "protssl-tiny", "--steps", "100000", "--crop", "126"]
    recipe += ["--max-tokens", "1024", "--tokens-per-step", "2048", "--log-every", "2"]
    recipe += ["--checkpoint-every", "100000", "--val-max-records", "32"]
    by_design = subprocess.run(
        [*command, *recipe, "--stop-after", "2"], capture_output=True, text=True
    )
    assert by_design.returncode == 0, by_design.stderr
    assert load_checkpoint(run_dir / CHECKPOINT_NAME)["step"] == 2

    with subprocess.Popen([*command, "--resume"], stderr=subprocess.PIPE, text=True) as launcher:
        deadline = time.monotonic() + 180
        try:
            while not _logged_past(run_dir, 2):
                assert launcher.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
            (worker,) = _workers(run_dir, rank=1)  # not rank 0, which says how the run ended
            os.kill(worker, signal.SIGTERM)
            _, stderr = launcher.communicate(timeout=180)
        finally:  # also when it failed: the launcher stops the workers it started
            if launcher.poll() is None:
                launcher.send_signal(signal.SIGTERM)
                launcher.communicate(timeout=180)
    assert launcher.returncode == 130, stderr
    step = load_checkpoint(run_dir / CHECKPOINT_NAME)["step"]
    assert step > 2 and "Traceback" not in stderr
    assert stderr.splitlines()[-1] == (
        f"protssl pretrain: terminated (SIGTERM); the checkpoint of step {step} is kept: continue "
        f"with protssl pretrain --resume --run-dir {run_dir}"
    )
    assert not _training(run_dir)  # no worker trains on

    resumed = [*command, "--resume", "--steps", str(step + 2)]
    done = subprocess.run(resumed, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr  # the signal of the call before is not this one's
    assert load_checkpoint(run_dir / CHECKPOINT_NAME)["step"] == step + 2
    assert (run_dir / "model" / "model.json").is_file()


def _workers(run_dir: Path, *, rank: int) -> list[int]:
    """The pids of the torchrun workers of rank `rank` training `run_dir` (not the launcher, not
    torchrun: `python -u -m protssl.pretrain ...` with RANK in its environment)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        argv = _read(cmdline).split(b"\0")
        worker = str(run_dir).encode() in argv and b"protssl.pretrain" in argv[:4]
        if worker and f"RANK={rank}".encode() in _read(cmdline.with_name("environ")).split(b"\0"):
            found.append(int(cmdline.parent.name))
    return found


def test_resume_refuses_a_corpus_whose_records_changed_and_takes_one_rewrapped(
    tmp_path: Path, sample_fasta: Path
) -> None:
    """A corpus edited between the stop and --resume: the data position went on through other
    records without a word. The same records wrapped at another width resume as before."""
    corpus = tmp_path / "corpus.fasta"
    shutil.copyfile(sample_fasta, corpus)
    run_dir = tmp_path / "run"
    pretrain(tiny_config(corpus, run_dir), stop_after=2, progress=False)
    assert load_checkpoint(run_dir / CHECKPOINT_NAME)["corpus_sha256"]
    records = corpus.read_text().split(">")[1:]
    corpus.write_text("".join(">" + r for r in records[:-1]))  # the last record removed
    command = [sys.executable, "-m", "protssl", "pretrain", "--run-dir", str(run_dir), "--resume"]
    refused = subprocess.run([*command, "--no-progress"], capture_output=True, text=True)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.splitlines()[-1].startswith(
        f"protssl pretrain: error: --resume: {corpus} no longer holds the records this run trains "
        "on ("
    )
    assert load_checkpoint(run_dir / CHECKPOINT_NAME)["step"] == 2
    unwrapped = [r.split("\n", 1) for r in records]  # header, then the wrapped sequence
    corpus.write_text(
        "".join(f">{head}\n{body.replace(chr(10), '')}\n" for head, body in unwrapped)
    )
    assert pretrain(tiny_config(corpus, run_dir), resume=True, progress=False).step == 12


def test_resume_trains_the_folder_it_names_wherever_the_run_began(
    tmp_path: Path, sample_fasta: Path
) -> None:
    """A run folder copied (or named by another path, from another working directory) resumes
    there: the checkpoint's own run folder is where it was written, not where to go on."""
    first = tmp_path / "first"
    pretrain(tiny_config(sample_fasta, first, steps=4), stop_after=2, progress=False)
    moved = tmp_path / "moved"
    shutil.copytree(first, moved)
    command = [sys.executable, "-m", "protssl", "pretrain", "--run-dir", str(moved), "--resume"]
    done = subprocess.run([*command, "--no-progress"], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(moved / CHECKPOINT_NAME)["step"] == 4 and (moved / "model").is_dir()
    assert load_checkpoint(first / CHECKPOINT_NAME)["step"] == 2 and not (first / "model").exists()


def test_a_run_being_trained_is_refused_to_a_second_process(
    tmp_path: Path, sample_fasta: Path
) -> None:
    """A job resubmitted while the first still trains: one line naming the first's pid."""
    run_dir = tmp_path / "run"
    pretrain(tiny_config(sample_fasta, run_dir), stop_after=2, progress=False)
    assert not (run_dir / RUN_LOCK_NAME).exists()  # released at the end
    setup = (
        "from pathlib import Path\nfrom protssl.pretrain.loop import _run_lock\n"
        f"lock = _run_lock(Path({str(run_dir)!r}))"
    )
    with another_process_holding(setup) as pid:
        refused = subprocess.run(
            [sys.executable, "-m", "protssl", "pretrain", "--run-dir", str(run_dir), "--resume"],
            capture_output=True,
            text=True,
        )
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.splitlines()[-1] == (
        f"protssl pretrain: error: run {str(run_dir)!r} is being trained by another process "
        f"(pid {pid}): wait for it to end (or stop it), or give another --run-dir"
    )
    assert load_checkpoint(run_dir / CHECKPOINT_NAME)["step"] == 2  # untouched
    assert pretrain(tiny_config(sample_fasta, run_dir), resume=True, progress=False).step == 12


def test_records_the_corpus_leaves_out_are_said_in_the_log(
    tmp_path: Path, sample_fasta: Path, edge_cases: Path, caplog: pytest.LogCaptureFixture
) -> None:
    corpus = tmp_path / "corpus.fasta"
    corpus.write_text(
        sample_fasta.read_text() + (edge_cases / "prokka_IS_internal_stops.fasta").read_text()
    )
    with caplog.at_level("WARNING", logger="protssl.pretrain.loop"):
        pretrain(tiny_config(corpus, tmp_path / "run"), stop_after=1, progress=False)
    notes = [r.getMessage() for r in caplog.records if "left out of training" in r.getMessage()]
    assert len(notes) == 1 and "with invalid residues" in notes[0], caplog.text


def test_a_new_run_into_a_folder_that_holds_one_is_refused_and_it_is_kept(
    tmp_path: Path, sample_fasta: Path
) -> None:
    """Running the first command again after a crash, without --resume, started over: the
    checkpoint of days of training and its log were overwritten without a word."""
    config = tiny_config(sample_fasta, tmp_path / "run")
    pretrain(config, stop_after=2, progress=False)
    checkpoint = (tmp_path / "run" / CHECKPOINT_NAME).read_bytes()
    log = (tmp_path / "run" / "log.csv").read_text()
    with pytest.raises(InvalidInputError, match=r"holds a run already .* --resume --run-dir "):
        pretrain(replace(config, steps=20), progress=False)
    assert (tmp_path / "run" / CHECKPOINT_NAME).read_bytes() == checkpoint
    assert (tmp_path / "run" / "log.csv").read_text() == log
    resumed = pretrain(config, resume=True, stop_after=1, progress=False)
    assert resumed.step == 3


_TINY_FLAGS = [  # tiny_config's recipe, as the command takes it
    *("--preset", "protssl-tiny", "--steps", "12", "--crop", "126", "--max-tokens", "1024"),
    *("--tokens-per-step", "2048", "--lr", "3e-3", "--warmup", "3", "--val-every", "6"),
    *("--val-max-records", "32", "--log-every", "2", "--checkpoint-every", "4"),
    *("--pool-sequences", "256", "--no-progress"),
]


def test_a_run_resumes_from_another_working_directory(tmp_path: Path, sample_fasta: Path) -> None:
    """Launched as `pretrain corpus.fasta --run-dir runs/c` in one folder, resumed from another
    (a scheduler's resubmission, a reboot): the checkpoint kept the files as typed, and `--resume`
    (which takes no corpus) stopped at `corpus.fasta: no such file`. They are recorded absolute."""
    launch, elsewhere = tmp_path / "launch", tmp_path / "elsewhere"
    launch.mkdir()
    elsewhere.mkdir()
    shutil.copy(sample_fasta, launch / "corpus.fasta")
    shutil.copy(LABELLED, launch / "probe.fasta")
    pretrain_command = [sys.executable, "-m", "protssl", "pretrain"]
    inputs = ["corpus.fasta", "--probe-fasta", "probe.fasta", *_TINY_FLAGS]
    started = subprocess.run(
        [*pretrain_command, *inputs, "--run-dir", "runs/c", "--stop-after", "2"],
        capture_output=True,
        text=True,
        cwd=launch,
    )
    assert started.returncode == 0, started.stderr
    run_dir = launch / "runs" / "c"
    recipe = load_checkpoint(run_dir / CHECKPOINT_NAME)["config"]
    assert recipe["corpus"] == str((launch / "corpus.fasta").resolve())
    assert recipe["probe_fasta"] == str((launch / "probe.fasta").resolve())
    resume = [*pretrain_command, "--resume", "--run-dir", str(run_dir), "--no-progress"]
    resumed = subprocess.run(
        [*resume, "--stop-after", "1"], capture_output=True, text=True, cwd=elsewhere
    )
    assert resumed.returncode == 0, resumed.stderr
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    assert state["step"] == 3 and len(state["resume_commands"]) == 1
    # a schedule that would end behind the run (it exported a card saying steps 3, scheduled 2)
    behind = subprocess.run([*resume, "--steps", "2"], capture_output=True, text=True)
    assert behind.returncode == 2, behind.stderr
    assert behind.stderr.strip().splitlines()[-1] == (
        f"protssl pretrain: error: --steps 2: the run is at step 3 already; give more to go on, "
        f"or export it as it is (protssl pretrain-export {run_dir} OUT)"
    )
    assert load_checkpoint(run_dir / CHECKPOINT_NAME)["step"] == 3
    assert not (run_dir / "model").exists()


def test_a_run_recorded_with_relative_paths_resumes_from_the_folder_it_was_launched_from(
    tmp_path: Path, sample_fasta: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint written before paths were recorded absolute holds them as typed: they are found
    from the launch folder, which the run folder's path gives (`runs/c` named as
    `/x/launch/runs/c`); where they are not found, one line says which and where it looked."""
    launch = tmp_path / "launch"
    launch.mkdir()
    shutil.copy(sample_fasta, launch / "corpus.fasta")
    shutil.copy(LABELLED, launch / "probe.fasta")
    monkeypatch.chdir(launch)
    config = tiny_config(Path("corpus.fasta"), Path("runs/c"), probe_fasta=Path("probe.fasta"))
    pretrain(config, stop_after=2, progress=False)
    checkpoint = launch / "runs" / "c" / CHECKPOINT_NAME
    state = load_checkpoint(checkpoint)  # as one written before this fix
    state["config"] |= {"corpus": "corpus.fasta", "probe_fasta": "probe.fasta", "run_dir": "runs/c"}
    save_checkpoint(checkpoint, state)
    moved = tmp_path / "moved" / "runs" / "c"
    shutil.copytree(launch / "runs" / "c", moved)
    monkeypatch.chdir(tmp_path)

    resumed = pretrain(config_from_checkpoint(launch / "runs" / "c"), resume=True, stop_after=1)
    assert resumed.step == 3
    recipe = load_checkpoint(checkpoint)["config"]
    assert recipe["corpus"] == str((launch / "corpus.fasta").resolve())  # from now on

    command = [sys.executable, "-m", "protssl", "pretrain", "--resume", "--run-dir", str(moved)]
    refused = subprocess.run([*command, "--no-progress"], capture_output=True, text=True)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.splitlines() == [
        f"protssl pretrain: error: run {str(moved)!r}: its corpus 'corpus.fasta' is relative to "
        f"the folder the run was launched from, and it is neither in {tmp_path / 'moved'} (where "
        f"the run folder's path says the run was launched) nor in {tmp_path} (the working "
        "directory): run this command from the folder the run was launched from, or put the file "
        "back there"
    ]
    assert load_checkpoint(moved / CHECKPOINT_NAME)["step"] == 2


def test_a_refused_corpus_leaves_no_run_folder_and_keeps_those_that_were_there(
    tmp_path: Path,
) -> None:
    """A corpus refused before training left an empty run folder behind (and its parents)."""
    bad = tmp_path / "bad.fasta"
    bad.write_text(">a\nMKV*LL\n>b\nAC1D\n")
    command = [sys.executable, "-m", "protssl", "pretrain", "bad.fasta", "--run-dir", "runs/bad"]
    refused = subprocess.run([*command, *_TINY_FLAGS], capture_output=True, text=True, cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.splitlines() == [
        f"protssl pretrain: error: {bad}: 0 training and 0 validation records; need both: 2 of 2 "
        "records left out of training (2 with invalid residues; e.g. 'a', 'b'): the reader's "
        "policy for a corpus is skip; fix those records or give another corpus"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.fasta"]
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "notes.txt").write_text("kept")
    (tmp_path / "empty").mkdir()
    for run_dir in (runs / "bad" / "deeper", tmp_path / "empty"):
        with pytest.raises(InvalidInputError, match="need both"):
            pretrain(tiny_config(bad, run_dir), progress=False)
    assert [p.name for p in runs.iterdir()] == ["notes.txt"]
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())
