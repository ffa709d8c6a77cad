"""A run's state on disk: the checkpoint (weights, optimizer, progress, RNG, recipe), and where a run starts.

Checkpoints are written atomically and read without unpickling arbitrary objects; the recipe
they carry is all `--resume` needs besides the run folder.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from protssl.checkpoint import load_model, refused_global, torch_load_reason
from protssl.durable import writing_durably
from protssl.errors import CheckpointError, InvalidInputError
from protssl.model import ProteinEncoder, init_weights
from protssl.pretrain.config import INPUT_FIELDS, PretrainConfig
from protssl.pretrain.data import DataPosition

__all__ = [
    "CHECKPOINT_NAME",
    "RUN_LOCK_NAME",
    "RunProgress",
    "checkpoint_state",
    "config_from_checkpoint",
    "config_from_state",
    "initial_encoder",
    "load_checkpoint",
    "locate_inputs",
    "progress_from_state",
    "resume_from",
    "save_checkpoint",
]

CHECKPOINT_NAME = "checkpoint.pt"
RUN_LOCK_NAME = ".lock"
"""Held by the process training a run (its pid inside); removed when it ends."""


@dataclass
class RunProgress:
    """Where a run stands besides its weights and optimizer; the checkpoint records all of it."""

    step: int = 0
    """Optimizer steps done."""
    tokens_seen: int = 0
    """Non-padding tokens trained on, over all ranks."""
    elapsed_s: float = 0.0
    """Seconds spent in optimizer steps (validation and checkpoints left out)."""
    position: DataPosition = field(default_factory=DataPosition)
    """Where the data stream continues."""
    val_loss: float | None = None
    """The last validation loss, if any."""
    command: str | None = None
    """The command that started the run."""
    resume_commands: list[str | None] = field(default_factory=list)
    """The commands that resumed it, in order."""
    init_from: dict[str, Any] | None = None
    """The parent model's record when the run started from one (see `initial_encoder`)."""
    corpus_sha256: str | None = None
    """`TrainingCorpus.fingerprint()` of the records the run trains on (None in checkpoints
    written before it was recorded)."""


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """torch.save to a temp file in the same folder, fsync, rename over the old one, fsync the folder.

    A crash, kill (SIGKILL included) or error mid-write leaves the previous checkpoint as it was;
    the temp file a killed writer leaves is removed by the next save. A full disk is `OutputError`.
    """
    _remove_stale_temps(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with writing_durably(path, tmp=tmp), tmp.open("wb") as handle:
        torch.save(dict(state), handle)


def _remove_stale_temps(path: Path) -> None:
    """Remove the temp files of writers of `path` that are no longer running (killed mid-write)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 : -len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            tmp.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a training checkpoint without unpickling arbitrary objects (weights_only)."""
    if not path.is_file():
        raise InvalidInputError(
            f"{path.parent}: no {path.name} there, so no run to continue or export (a run folder "
            "holds one from its first checkpoint on; a new run takes the corpus, without --resume)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        refused = refused_global(exc)
        if refused is None:
            raise CheckpointError(
                f"{path}: cannot read the training checkpoint ({torch_load_reason(exc)})"
            ) from None
        raise CheckpointError(
            f"{path}: not a training checkpoint protssl wrote: it pickles {refused}, and protssl "
            "unpickles no code from one; to train on from a fair-esm .pt, import it with "
            "`protssl import-esm FILE DIR --trust-pickle` and start a new run with --init-from DIR"
        ) from None


def config_from_state(state: Mapping[str, Any]) -> PretrainConfig:
    """The recipe a loaded checkpoint carries."""
    recipe = dict(state["config"])
    recipe["betas"] = tuple(recipe["betas"])
    return PretrainConfig(**recipe)


def config_from_checkpoint(run_dir: str | Path) -> PretrainConfig:
    """The config stored in a run's checkpoint (so `--resume` needs only the run folder), as the
    run goes on in `run_dir`, from whatever working directory: see `locate_inputs`."""
    run_dir = Path(run_dir)
    return locate_inputs(config_from_state(load_checkpoint(run_dir / CHECKPOINT_NAME)), run_dir)


_NAMED = {
    "corpus": "corpus",
    "cluster_tsv": "--cluster-tsv",
    "init_from": "--init-from",
    "probe_fasta": "--probe-fasta",
}
"""How a refusal names each of `INPUT_FIELDS`: as the command line gives it."""


def locate_inputs(
    config: PretrainConfig,
    run_dir: Path,
    *,
    needed: Collection[str] = ("corpus", "cluster_tsv", "probe_fasta"),
) -> PretrainConfig:
    """A checkpoint's `config` with `run_dir` (the folder named, wherever the run was written
    from) as its run folder and the files it reads as absolute paths.

    A run records absolute paths; one recorded before they were has them as typed, relative to
    the folder it was launched from. That folder is `run_dir` less the run folder it recorded,
    when that was relative too (`runs/c`, named now as `/x/runs/c`: launched from `/x`); a relative
    path is looked for there, then in the working directory. One of the `needed` fields found in
    neither is refused in one line naming the path, where it was looked for and what to do: a
    resumed run read nothing but "no such file" for a corpus typed relative to another folder.
    """
    launched_from = _launch_folder(config.run_dir, run_dir)
    here = Path.cwd()
    found: dict[str, Any] = {}
    for key in INPUT_FIELDS:
        path = getattr(config, key)
        if path is None:
            continue
        if path.is_absolute():
            if key in needed and not path.exists():
                raise InvalidInputError(
                    f"run {str(run_dir)!r}: its {_NAMED[key]} {str(path)!r}, recorded when the "
                    "run was launched, is not there any more: put the file back there"
                )
            continue
        places = list(dict.fromkeys(p for p in (launched_from, here) if p is not None))
        hit = next((p / path for p in places if (p / path).exists()), None)
        if hit is None and key in needed:
            raise InvalidInputError(_not_found(run_dir, key, path, launched_from, here))
        found[key] = (hit or places[0] / path).resolve()
    return replace(config, run_dir=run_dir, **found)


def _not_found(run_dir: Path, key: str, path: Path, launched_from: Path | None, here: Path) -> str:
    """The refusal of a run's input file `path` (relative, as recorded) found in no folder tried."""
    launch = "where the run folder's path says the run was launched"
    if launched_from is None:
        where = f"not in {here} (the working directory)"
    elif launched_from == here:
        where = f"not in {here} (the working directory, {launch})"
    else:
        where = f"neither in {launched_from} ({launch}) nor in {here} (the working directory)"
    return (
        f"run {str(run_dir)!r}: its {_NAMED[key]} {str(path)!r} is relative to the folder the run "
        f"was launched from, and it is {where}: run this command from the folder the run was "
        "launched from, or put the file back there"
    )


def _launch_folder(recorded: Path, run_dir: Path) -> Path | None:
    """The folder a run was launched from, from its run folder as recorded (relative) and as
    named now; None where the recorded one was absolute or does not end the named one."""
    if recorded.is_absolute() or ".." in recorded.parts:
        return None
    named = Path(os.path.abspath(run_dir))
    depth = len(recorded.parts)
    if depth and named.parts[-depth:] != recorded.parts:
        return None
    return Path(*named.parts[: len(named.parts) - depth])


def progress_from_state(state: Mapping[str, Any]) -> RunProgress:
    """The progress a loaded checkpoint records."""
    return RunProgress(
        step=state["step"],
        tokens_seen=state["tokens_seen"],
        elapsed_s=state["elapsed_s"],
        position=DataPosition(*state["position"]),
        val_loss=state["val_loss"],
        command=state.get("command"),
        resume_commands=list(state.get("resume_commands", [])),
        init_from=state.get("init_from"),
        corpus_sha256=state.get("corpus_sha256"),
    )


def checkpoint_state(
    progress: RunProgress,
    *,
    encoder: ProteinEncoder,
    optimizer: torch.optim.Optimizer,
    config: PretrainConfig,
    hardware: str,
    dtype: str,
    head: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """What `save_checkpoint` writes: weights of the unwrapped encoder (and of a contrastive run's
    projection head), optimizer, progress, RNG."""
    extra = {} if head is None else {"projection_head": head.state_dict()}
    return extra | {
        "model": encoder.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": progress.step,
        "tokens_seen": progress.tokens_seen,
        "elapsed_s": progress.elapsed_s,
        "position": [progress.position.epoch, progress.position.pool, progress.position.batch],
        "val_loss": progress.val_loss,
        "torch_rng": torch.get_rng_state(),
        "config": config.to_dict(),
        "command": progress.command,
        "resume_commands": progress.resume_commands,
        "hardware": hardware,
        "dtype": dtype,
        "init_from": progress.init_from,
        "corpus_sha256": progress.corpus_sha256,
    }


def resume_from(
    path: Path,
    config: PretrainConfig,
    *,
    encoder: ProteinEncoder,
    optimizer: torch.optim.Optimizer,
    command: str | None,
    head: torch.nn.Module | None = None,
) -> RunProgress:
    """Load the checkpoint at `path` into `encoder` (and `head`), `optimizer` and torch's RNG; its
    progress.

    `command` (this call's) joins the resume commands; the run keeps the command that started it.
    """
    if not path.is_file():
        raise InvalidInputError(f"--resume: no checkpoint at {path}")
    state = load_checkpoint(path)
    if state["config"]["preset"] != config.preset:
        raise CheckpointError(
            f"{path}: preset {state['config']['preset']!r} differs from {config.preset!r}"
        )
    encoder.load_state_dict(state["model"])
    if head is not None:
        if "projection_head" not in state:
            raise CheckpointError(f"{path}: no projection head; not a contrastive run")
        head.load_state_dict(state["projection_head"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    progress = progress_from_state(state)
    progress.resume_commands.append(command)
    progress.command = progress.command or command
    return progress


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
