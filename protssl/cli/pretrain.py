"""CLI face of pretraining: `protssl pretrain`, `protssl pretrain-export`, `protssl plot-run`.

Also the entry point of `python -m protssl.pretrain` (what `torchrun` launches): it joins the
process group that torchrun describes in the environment, then runs the same handler.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protssl.cli.commands import Command, add_commands
from protssl.entrypoint import configure_logging, interruption, run_main
from protssl.errors import InvalidInputError

if TYPE_CHECKING:
    from protssl.pretrain import PretrainConfig

__all__ = ["COMMANDS", "main"]

log = logging.getLogger(__name__)

_OUTCOME_ENV = "PROTSSL_PRETRAIN_OUTCOME"
"""Where `--nproc`'s launcher has rank 0 write how the workers' run ended (`_report_outcome`)."""

# flag -> PretrainConfig field, for the recipe options ({presets}: the model shapes by name).
_RECIPE_FLAGS: dict[str, tuple[str, type, str]] = {
    "--preset": ("preset", str, "model shape: {presets}"),
    "--steps": ("steps", int, "optimizer steps of the whole run"),
    "--crop": ("crop_residues", int, "crop longer sequences to this many residues (random offset)"),
    "--max-tokens": ("max_tokens", int, "token budget of one micro-batch (rows x padded length)"),
    "--tokens-per-step": ("tokens_per_step", int, "target tokens per optimizer step (all ranks)"),
    "--lr": ("lr", float, "peak learning rate"),
    "--warmup": ("warmup_steps", int, "warmup steps"),
    "--schedule": ("schedule", str, "decay after warmup: cosine or linear"),
    "--min-lr-ratio": ("min_lr_ratio", float, "final lr as a fraction of the peak"),
    "--weight-decay": ("weight_decay", float, "AdamW weight decay"),
    "--grad-clip": ("grad_clip", float, "clip the gradient norm (0: off)"),
    "--mask-prob": ("mask_prob", float, "fraction of residues selected for the loss"),
    "--dtype": ("dtype", str, "autocast dtype: auto, float32, bfloat16"),
    "--device": ("device", str, "auto, cpu or cuda"),
    "--val-fraction": ("val_fraction", float, "held-out share of records (by id hash)"),
    "--val-max-records": ("val_max_records", int, "held-out records used per validation"),
    "--val-every": ("val_every", int, "validate every N steps"),
    "--log-every": ("log_every", int, "CSV row every N steps"),
    "--checkpoint-every": ("checkpoint_every", int, "checkpoint every N steps"),
    "--pool-sequences": ("pool_sequences", int, "sequences cropped and length-sorted together"),
    "--cluster-tsv": ("cluster_tsv", Path, "representative<TAB>member TSV: sample clusters"),
    "--objective": ("objective", str, "mlm, contrastive or mlm+contrastive"),
    "--mlm-weight": ("mlm_weight", float, "weight of the masked-LM term (mlm+contrastive)"),
    "--contrastive-weight": ("contrastive_weight", float, "weight of the InfoNCE term"),
    "--temperature": ("temperature", float, "InfoNCE temperature"),
    "--cluster-positive-rate": ("cluster_positive_rate", float, "P(positive = cluster mate)"),
    "--cluster-min-members": (
        "cluster_min_members",
        int,
        "contrastive anchors only from clusters of at least N members",
    ),
    "--seed": ("seed", int, "seed of weights, data order, crops and masks"),
    "--init-from": ("init_from", Path, "start from a protssl model folder's weights"),
    "--probe-fasta": (
        "probe_fasta",
        Path,
        "labelled FASTA scored at every validation: 1-NN accuracy in the log, composition floor",
    ),
    "--name": ("name", str, "model name written in the card"),
}


def _build_pretrain(p: argparse.ArgumentParser) -> None:
    from protssl.model import PRESETS
    from protssl.pretrain import PretrainConfig

    defaults = PretrainConfig(corpus=Path("-"), run_dir=Path("-"))
    p.add_argument("corpus", nargs="?", type=Path, help="training FASTA (not with --resume)")
    p.add_argument("--run-dir", type=Path, required=True, help="folder of the run")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir from its checkpoint (the recipe is read from it; "
        "--steps may change the schedule's length from here on)",
    )
    p.add_argument(
        "--nproc", type=int, default=1, help="launch this many processes with torchrun (DDP)"
    )
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="end this call after N more steps as if interrupted (checkpoint, no export)",
    )
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard events")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    recipe = p.add_argument_group("recipe")
    presets = ", ".join(sorted(PRESETS))
    for flag, (dest, kind, text) in _RECIPE_FLAGS.items():
        default = getattr(defaults, dest)
        recipe.add_argument(
            flag,
            dest=dest,
            type=kind,
            default=None,
            help=f"{text.format(presets=presets)} (default {default})",
        )
    p.set_defaults(func=_pretrain, command_line=None)


_PLANNED = frozenset({"steps", "warmup_steps", "val_every", "checkpoint_every"})
"""The recipe fields a lease plans from its budget (`run_lease`), so it takes none of them."""


def _build_lease(p: argparse.ArgumentParser) -> None:
    from protssl.pretrain.lease import LEASE_RECIPE

    p.add_argument("corpus", type=Path, help="training FASTA (plain or gzip)")
    p.add_argument(
        "--seconds", type=float, required=True, help="the whole budget: calibration, steps, export"
    )
    p.add_argument("--run-dir", type=Path, default=Path("runs/lease"), help="folder of the run")
    p.add_argument(
        "--calibration-steps", type=int, default=10, help="steps timed before planning (default 10)"
    )
    p.add_argument(
        "--evaluations", type=int, default=4, help="validations (and checkpoints) during the run"
    )
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    recipe = p.add_argument_group(
        "recipe (the lease recipe unless given; the plan sets the steps, a 4% warmup, and "
        "validations and checkpoints --evaluations times)"
    )
    for flag, (dest, kind, text) in _RECIPE_FLAGS.items():
        if dest in _PLANNED:  # offered, they were overwritten by the plan without a word
            continue
        shown = LEASE_RECIPE.get(dest, "as pretrain")
        recipe.add_argument(
            flag, dest=dest, type=kind, default=None, help=f"{text.format(presets='')} ({shown})"
        )
    p.set_defaults(func=_lease)


def _lease(args: argparse.Namespace) -> int:
    from protssl.analysis.config import EXAMPLES_DIR
    from protssl.checkpoint import DEFAULT_MODEL_DIR
    from protssl.hardware import fit_threads_to_cpu_budget
    from protssl.pretrain.lease import lease_config, run_lease

    fit_threads_to_cpu_budget()
    given = _recipe_given(args)
    for dest, default, without in (
        ("init_from", DEFAULT_MODEL_DIR, "this lease trains from random weights"),
        ("probe_fasta", EXAMPLES_DIR / "labelled.fasta", "the lease runs no quality probe"),
    ):  # beside the package, wherever the command runs (they were relative to the cwd)
        if dest in given or (dest == "init_from" and "preset" in given):  # a preset: from scratch
            continue
        if default.exists():
            given[dest] = default
        else:
            log.warning("no %s given and none at %s: %s", dest.replace("_", "-"), default, without)
    if not 0 < args.seconds < math.inf:  # NaN too: it calibrated, then failed to plan
        raise InvalidInputError(f"--seconds must be a number > 0, got {args.seconds}")
    with _recipe_checks_as_options():
        config = lease_config(args.corpus, args.run_dir, **given)
    done = run_lease(
        config,
        args.seconds,
        calibration_steps=args.calibration_steps,
        evaluations=max(1, args.evaluations),
        command=_command_line(),
        progress=not args.no_progress,
    )
    print(
        json.dumps(
            {
                "model_dir": str(done.model_dir),
                "steps": done.result.step,
                "tokens_seen": done.result.tokens_seen,
                "val_perplexity": done.val_perplexity,
                "deadline_reached": done.result.deadline_reached,
                "plan": done.plan.to_dict(),
            }
        )
    )
    if done.result.signal is not None:
        raise interruption(
            done.result.signal, f"model exported to {done.model_dir} from step {done.result.step}"
        )
    return 0


def _build_export(e: argparse.ArgumentParser) -> None:
    e.add_argument("run_dir", type=Path, help="folder of the run")
    e.add_argument("out_dir", type=Path, help="model folder to write")
    e.add_argument("--overwrite", action="store_true", help="replace a model already in out_dir")
    e.set_defaults(func=_export)


def _build_plot(plot: argparse.ArgumentParser) -> None:
    plot.add_argument("run_dir", type=Path, help="folder of the run")
    plot.set_defaults(func=_plot)


COMMANDS = (
    Command(
        "pretrain",
        _build_pretrain,
        help="self-supervised pretraining on a FASTA corpus: masked-LM and/or contrastive "
        "(resumable; torchrun for DDP)",
        description="Train an encoder with ESM-2's MLM recipe, InfoNCE between views and cluster "
        "members (--objective), or both. Files go to --run-dir: "
        "checkpoint.pt, log.csv, loss_curve.png, and model/ at the end.",
    ),
    Command(
        "pretrain-lease",
        _build_lease,
        help="the best recipe so far, sized to a time budget (a GPU lease): calibrate, train, export",
        description="Continue the shipped model (--init-from, default models/protssl-default) with "
        "the lease recipe: time a few steps on this machine, lay the schedule over as many steps "
        "as fit --seconds, train with a deadline, and export run-dir/model with the plan in its card.",
    ),
    Command(
        "pretrain-export",
        _build_export,
        help="export a run's last checkpoint (e.g. after SIGTERM) as a model folder",
    ),
    Command("plot-run", _build_plot, help="draw a run's loss curve into loss_curve.png"),
)


def _command_line() -> str:
    """The command as typed (`protssl pretrain ...`), for the model card."""
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])


def _recipe_given(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe options given on the command line (a command may offer only some of them)."""
    return {
        dest: getattr(args, dest)
        for dest, _, _ in _RECIPE_FLAGS.values()
        if getattr(args, dest, None) is not None
    }


def _config(args: argparse.Namespace) -> PretrainConfig:
    from protssl.pretrain import PretrainConfig, config_from_checkpoint

    given = _recipe_given(args)
    if args.resume:
        steps = given.pop("steps", None)
        if args.corpus is not None or given:
            raise InvalidInputError(
                "--resume reads the recipe from the checkpoint; give only --run-dir (and --steps)"
            )
        # the folder named is the run, wherever the checkpoint was written (or launched) from
        config = config_from_checkpoint(args.run_dir)
        if steps is not None and steps != config.steps:
            log.warning("schedule now spans %d steps instead of %d", steps, config.steps)
            config = replace(config, steps=steps)
        return config
    if args.corpus is None:
        raise InvalidInputError("pretrain needs a training FASTA (or --resume)")
    with _recipe_checks_as_options():
        return PretrainConfig(
            corpus=args.corpus, run_dir=args.run_dir, tensorboard=args.tensorboard, **given
        )


@contextmanager
def _recipe_checks_as_options() -> Iterator[None]:
    """A recipe check in the options' spelling: `warmup_steps, grad_clip and weight_decay must be
    >= 0` (the config's fields, as the Python API reads it) says `--warmup, --grad-clip and
    --weight-decay must be >= 0`, what the command line takes."""
    try:
        yield
    except InvalidInputError as exc:
        subject, must, rest = str(exc).partition(" must ")
        if not must:
            raise
        flags = {dest: flag for flag, (dest, _, _) in _RECIPE_FLAGS.items()}
        subject = re.sub(r"\b[a-z_]+\b", lambda m: flags.get(m[0], m[0]), subject)
        raise InvalidInputError(subject + must + rest) from None


def _pretrain(args: argparse.Namespace) -> int:
    from protssl.hardware import fit_threads_to_cpu_budget
    from protssl.pretrain import pretrain
    from protssl.pretrain.loop import resume_command

    if args.nproc > 1:
        return _launch_torchrun(args.nproc, args.run_dir)
    fit_threads_to_cpu_budget()  # torchrun's processes: it sets OMP_NUM_THREADS, which is kept
    if args.nproc < 1:
        raise InvalidInputError(f"--nproc must be >= 1, got {args.nproc}")
    config = _config(args)
    if args.stop_after is not None and args.stop_after < 1:
        raise InvalidInputError(f"--stop-after must be >= 1, got {args.stop_after}")
    under_torchrun = "LOCAL_RANK" in os.environ
    result = pretrain(
        config,
        resume=args.resume,
        command=args.command_line or _command_line(),
        stop_after=args.stop_after,
        progress=not args.no_progress,
        local_rank=int(os.environ["LOCAL_RANK"]) if under_torchrun else None,
    )
    if under_torchrun and int(os.environ.get("RANK", "0")) != 0:
        return 0  # rank 0 says how the run ended
    go_on = resume_command(config.run_dir)
    if result.model_dir is not None:
        log.info("model written to %s", result.model_dir)
    elif result.signal is not None and not under_torchrun:
        raise interruption(result.signal, _kept(result.step, config.run_dir))
    elif result.interrupted:  # under torchrun a signal stop exits 0: the launcher says 130
        log.info("stopped at step %d; continue with %s", result.step, go_on)
    if under_torchrun:
        _report_outcome(result.step, None if result.model_dir is not None else result.signal)
    return 0


def _report_outcome(step: int, signum: int | None) -> None:
    """Rank 0 under `--nproc`'s launcher: write where the run ended and the signal that stopped
    it (None: finished, or stopped by design) to the file the launcher named, which exits 130 for
    a signal. Each worker exits 0 however it stopped: a nonzero exit makes torchrun report a
    failure, traceback-like, for what is a clean stop."""
    path = os.environ.get(_OUTCOME_ENV)
    if not path:  # torchrun launched by hand: its exit code is the workers'
        return
    try:
        Path(path).write_text(json.dumps({"step": step, "signal": signum}))
    except OSError as exc:
        log.warning("cannot tell the launcher how the run ended (%s)", exc)


def _read_outcome(path: Path) -> tuple[int, int] | None:
    """The step and signal `_report_outcome` wrote to `path`, if the workers were stopped by one."""
    try:
        outcome = json.loads(path.read_text())
        step, signum = int(outcome["step"]), outcome["signal"]
    except (OSError, ValueError, KeyError, TypeError):  # not written: rank 0 did not get there
        return None
    return None if signum is None else (step, int(signum))


def _launch_torchrun(nproc: int, run_dir: Path) -> int:
    """Re-run this command under torchrun with --nproc removed; Ctrl-C or SIGTERM here makes the
    workers checkpoint and stop (exit 130), a second one kills them. A signal that reached the
    workers from elsewhere (a scheduler's, `kill PID`) stops them too, and exits 130 as well."""
    argv = sys.argv[1:]
    if argv and argv[0] == "pretrain":
        argv = argv[1:]
    cleaned: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        cleaned.append(arg)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "protssl.pretrain",
        *cleaned,
    ]
    log.info("launching %s", shlex.join(command))
    with tempfile.TemporaryDirectory(prefix="protssl-pretrain-") as scratch:
        outcome = Path(scratch) / "outcome.json"  # this launch's, so never an earlier call's
        # Its own session: a terminal's Ctrl-C reaches this process only, which stops the workers
        # as below (torchrun, signalled itself, stops them too but ends in a traceback of its own).
        torchrun = subprocess.Popen(
            command, start_new_session=True, env={**os.environ, _OUTCOME_ENV: str(outcome)}
        )
        hangup = signal.getsignal(signal.SIGHUP)
        if hangup is not signal.SIG_IGN:  # under nohup the run outlives the terminal, as asked
            signal.signal(signal.SIGHUP, _hung_up)  # else a closed terminal stops it as Ctrl-C
        try:
            code = torchrun.wait()
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM as Terminated
            kept = _stop_workers(torchrun, run_dir, outcome)
            raise type(exc)(kept) from None
        finally:
            signal.signal(signal.SIGHUP, signal.SIG_DFL if hangup is None else hangup)
        stopped = _read_outcome(outcome) if code == 0 else None
    if stopped is None:  # finished, stopped by design (--stop-after), or failed: as torchrun ended
        return code
    step, signum = stopped  # every worker exits 0 after a signal stop: this is the one to say it
    raise interruption(signum, _kept(step, run_dir))


def _kept(step: int, run_dir: Path) -> str:
    """What a signal-stopped run keeps, and the command that continues it."""
    from protssl.pretrain.loop import resume_command

    return f"the checkpoint of step {step} is kept: continue with {resume_command(run_dir)}"


def _hung_up(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_workers(torchrun: subprocess.Popen[bytes], run_dir: Path, outcome: Path) -> str:
    """SIGTERM torchrun's workers, which checkpoint at their next step and exit (torchrun then
    ends as they did), and wait for them; what is kept (the step from rank 0's `outcome`). Where
    the workers cannot be found (no /proc), torchrun is signalled and passes it on. A second
    Ctrl-C or SIGTERM kills them all."""
    from protssl.pretrain.loop import resume_command

    workers = _children(torchrun.pid)
    for pid in workers or [torchrun.pid]:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    log.warning("stopping %d training process(es) after their current step", len(workers) or 1)
    try:
        code = torchrun.wait()
    except KeyboardInterrupt:
        for pid in [*_children(torchrun.pid), torchrun.pid]:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        torchrun.wait()
        return f"training killed; its last checkpoint in {run_dir} is kept"
    if code != 0:
        return f"training ended with exit code {code}; its last checkpoint in {run_dir} is kept"
    stopped = _read_outcome(outcome)
    if stopped is not None:
        return _kept(stopped[0], run_dir)
    return f"the workers checkpointed and stopped: continue with {resume_command(run_dir)}"


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid`, from Linux's /proc (none where there is no /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, ValueError, IndexError):
            # pid (comm) state ppid ...: comm may hold spaces and parentheses
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _export(args: argparse.Namespace) -> int:
    from protssl.pretrain import export_checkpoint

    out = export_checkpoint(args.run_dir, args.out_dir, overwrite=args.overwrite)
    log.info("model written to %s", out)
    return 0


def _plot(args: argparse.Namespace) -> int:
    from protssl.pretrain import plot_run

    log.info("wrote %s", plot_run(args.run_dir))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m protssl.pretrain ...`: the `pretrain` command, joining torchrun's process group."""
    configure_logging("INFO", timestamps=True)
    parser = argparse.ArgumentParser(prog="python -m protssl.pretrain")
    commands = parser.add_subparsers(dest="command")
    add_commands(commands, COMMANDS)
    commands.choices["pretrain"].prog = parser.prog  # the `pretrain` this adds is not typed
    given = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(["pretrain", *given])
    args.command_line = shlex.join(["python", "-m", "protssl.pretrain", *given])
    return run_main(lambda: _in_process_group(args), prog=parser.prog)


def _in_process_group(args: argparse.Namespace) -> int:
    """Run the command inside the process group torchrun describes in the environment (if any)."""
    import torch
    import torch.distributed as dist

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        backend = "nccl" if torch.cuda.is_available() and args.device != "cpu" else "gloo"
        dist.init_process_group(backend=backend)
    try:
        code = int(args.func(args))
        if distributed:  # a rank that tore its group down while rank 0 still wrote the last
            dist.barrier()  # checkpoint aborted in gloo now and then (SIGABRT, torchrun failed)
        return code
    finally:
        if distributed:
            dist.destroy_process_group()
