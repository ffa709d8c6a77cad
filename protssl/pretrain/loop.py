"""The training loop: where this process trains, how the run starts or resumes, the steps, the end.

Crops are packed into token-budget micro-batches, gradients accumulate to a target number of
tokens per optimizer step, and AdamW (betas 0.9/0.98, weight decay 0.01) follows the schedule.
A contrastive objective streams pair batches instead and trains the encoder with its projection
head (`contrastive`); the head and AdamW's state of it are in the checkpoint, not the export.
Under torch.distributed (initialised by the caller, e.g. `python -m protssl.pretrain` under
`torchrun`) the model is wrapped in DistributedDataParallel: each rank takes a disjoint share of
the micro-batches and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import logging
import math
import platform
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from protssl.alphabet import ALPHABET
from protssl.durable import ExclusiveLock, make_folder, missing_folders, remove_empty
from protssl.errors import InvalidInputError, OutputError
from protssl.hardware import usable_device
from protssl.model import ProteinEncoder, resolve_dtype
from protssl.pretrain.config import PretrainConfig
from protssl.pretrain.contrastive import (
    ContrastiveModel,
    ProjectionHead,
    contrastive_batches,
    contrastive_losses,
    seeded_head,
)
from protssl.pretrain.data import DataPosition, load_corpus, micro_batches, validation_batches
from protssl.pretrain.export import MODEL_SUBDIR, export_model, probe_summary, training_summary
from protssl.pretrain.logs import RunLog, plot_run
from protssl.pretrain.objective import autocast, learning_rate, mask_tokens, mlm_loss_sum
from protssl.pretrain.probe import FunctionProbe, unigram_perplexity, validation_loss
from protssl.pretrain.state import (
    CHECKPOINT_NAME,
    RUN_LOCK_NAME,
    RunProgress,
    checkpoint_state,
    initial_encoder,
    resume_from,
    save_checkpoint,
)
from protssl.progress import progress_bar

__all__ = ["PretrainResult", "pretrain"]

log = logging.getLogger(__name__)


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
    step_seconds: tuple[float, ...] = field(default=())
    """Wall time of every optimizer step run in this call (validation excluded)."""
    eval_seconds: float = 0.0
    """Wall time this call spent in validation and the probe."""
    deadline_reached: bool = False
    """Whether this call stopped because its `deadline` came."""
    signal: int | None = None
    """The signal (SIGINT, SIGTERM) that stopped this call, on this or, over DDP, another rank."""


def pretrain(
    config: PretrainConfig,
    *,
    resume: bool = False,
    command: str | None = None,
    stop_after: int | None = None,
    progress: bool = True,
    local_rank: int | None = None,
    deadline: float | None = None,
) -> PretrainResult:
    """Train (or resume) a run; returns the encoder and where it ended.

    `stop_after` ends this call after that many optimizer steps as if interrupted (checkpoint
    written, no export): the schedule still spans `config.steps`. Under torch.distributed (already
    initialised by the caller, e.g. `torchrun`), gradients are averaged across ranks; on CUDA each
    rank trains on GPU `local_rank` (torchrun's LOCAL_RANK, which the caller reads; default the
    global rank). SIGINT and SIGTERM checkpoint and stop the run at the next step boundary (the
    same step on every rank, `signal` in the result), and so does `deadline` (a
    `time.monotonic()` value) once it has passed.

    Denormal floats are flushed to zero while it runs: a trained model's backward pass and
    optimizer produce some, and x86 CPUs compute them in slow microcode (continuing the shipped
    model ran at half the speed of a fresh one). Threads started earlier keep their own setting.
    The signal handlers, the denormal flush and the current CUDA device it sets are put back as
    found on return; a resumed run takes torch's RNG state from its checkpoint. The files the run
    reads are recorded as absolute paths (`PretrainConfig.with_absolute_inputs`), so it resumes
    from any working directory.
    """
    config = config.with_absolute_inputs()
    place = _placement(config, local_rank)
    with _denormals_flushed(), _current_cuda_device(place.device):
        return _pretrain(
            config,
            place,
            resume=resume,
            command=command,
            stop_after=stop_after,
            progress=progress,
            deadline=deadline,
        )


@dataclass(frozen=True)
class _Placement:
    """Where this process trains: its rank among `world` ranks, its device and autocast dtype."""

    rank: int
    world: int
    device: torch.device
    dtype: torch.dtype

    @property
    def leader(self) -> bool:
        """Rank 0, the one that writes files."""
        return self.rank == 0


def _placement(config: PretrainConfig, local_rank: int | None) -> _Placement:
    """This process's rank and device from torch.distributed (when initialised) and the config."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    if config.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = usable_device(config.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", rank if local_rank is None else local_rank)
    return _Placement(rank, world, device, resolve_dtype(config.dtype, device))


def _pretrain(
    config: PretrainConfig,
    place: _Placement,
    *,
    resume: bool,
    command: str | None,
    stop_after: int | None,
    progress: bool,
    deadline: float | None,
) -> PretrainResult:
    """Set the run up, train until the schedule's end, `stop_after`, a signal or the deadline,
    then wrap up."""
    if deadline is not None and place.world > 1:
        raise InvalidInputError(
            "a deadline is for one process (ranks could stop at different steps)"
        )
    if not resume:
        refuse_occupied(config.run_dir)
    made = missing_folders(config.run_dir) if place.leader else []
    lock = _run_lock(config.run_dir) if place.leader else None
    try:
        run = _Run(config, place, resume=resume, command=command)
        start = run.progress.step
        end = config.steps if stop_after is None else min(config.steps, start + stop_after)
        try:
            with _stop_on_signals() as stop:
                stop.deadline = deadline
                losses = run.train(end, stop, show_progress=progress)
        finally:
            if run.log is not None:
                run.log.close()
        return replace(
            run.finish(losses), deadline_reached=stop.deadline_reached, signal=stop.signum
        )
    finally:
        if lock is not None:
            lock.release()
        remove_empty(made)  # a refused call (a corpus it cannot train on) leaves no run folder


def resume_command(run_dir: Path) -> str:
    """The command that continues the run in `run_dir`, as messages give it."""
    return f"protssl pretrain --resume --run-dir {run_dir}"


def export_command(run_dir: Path, out: str | Path = "OUT") -> str:
    """The command that exports the run in `run_dir` as it is into `out`, as messages give it."""
    return f"protssl pretrain-export {run_dir} {out}"


def refuse_occupied(run_dir: Path) -> None:
    """Refuse to start a new run in a folder that holds one: starting over there would overwrite
    its checkpoint and log."""
    if (run_dir / CHECKPOINT_NAME).exists():
        raise InvalidInputError(
            f"run folder {str(run_dir)!r} holds a run already ({CHECKPOINT_NAME}): continue "
            f"it with {resume_command(run_dir)}, or give another "
            "--run-dir (or remove that folder) to start a new one"
        )


def _run_lock(run_dir: Path) -> ExclusiveLock | None:
    """One training process per run folder: the same run resumed twice (a job resubmitted while
    the first still runs) would write one checkpoint over the other's and interleave the log."""
    make_folder(run_dir, what="run folder")
    return ExclusiveLock.acquire(
        run_dir / RUN_LOCK_NAME,
        busy=f"run {str(run_dir)!r} is being trained",
        advice="wait for it to end (or stop it), or give another --run-dir",
    )


class _Run:
    """One call's training: encoder (DDP-wrapped as `model` over several ranks), optimizer, progress."""

    def __init__(
        self, config: PretrainConfig, place: _Placement, *, resume: bool, command: str | None
    ) -> None:
        self.config, self.place = config, place
        self.checkpoint_path = config.run_dir / CHECKPOINT_NAME
        self.corpus = load_corpus(
            config.corpus, val_fraction=config.val_fraction, cluster_tsv=config.cluster_tsv
        )
        self.val_batches = validation_batches(self.corpus, config)
        micro_tokens = config.max_tokens * place.world
        self.accum = max(1, round(config.tokens_per_step / micro_tokens))
        """Micro-batches each rank accumulates per optimizer step."""

        self.encoder, self.head, self.optimizer, self.progress = _start(
            config, place, self.checkpoint_path, resume=resume, command=command
        )
        self._check_corpus(resume)
        if resume and self.progress.step > config.steps:  # the schedule would end behind it
            raise InvalidInputError(
                f"--steps {config.steps}: the run is at step {self.progress.step} already; give "
                f"more to go on, or export it as it is ({export_command(config.run_dir)})"
            )
        self.saved_step: int | None = self.progress.step if resume else None
        """The step of the last checkpoint on disk (what a failed write leaves)."""
        self.model = _distributed(
            self.encoder if self.head is None else ContrastiveModel(self.encoder, self.head),
            place,
            unused_parameters=config.objective == "contrastive",  # the LM head sits idle
        )
        self.step_seconds: list[float] = []
        self.eval_seconds = 0.0
        """This call's step times and validation time (what sizing a run to a deadline needs)."""
        self.terms: dict[str, float] = {}
        """The last step's loss terms of a contrastive run (rank-local means), for the log."""
        self.model.train()

        self.unigram = float("nan")
        self.probe: FunctionProbe | None = None
        self.probe_scores: dict[str, Any] | None = None
        self.log: RunLog | None = None
        if place.leader:
            self.unigram = unigram_perplexity(self.corpus.train, self.corpus.val)
            if config.probe_fasta is not None:
                self.probe = FunctionProbe.from_fasta(config.probe_fasta)
            self.log = RunLog(  # last: nothing after it can fail and leave its events open
                config.run_dir,
                resume_step=self.progress.step if resume else None,
                tensorboard=config.tensorboard,
            )
            if (note := self.corpus.skipped_note(config.corpus)) is not None:
                log.warning("%s", note)
            log.info(
                "%d train / %d val records; %s on %s (%s); %d micro-batch(es) of %d tokens per "
                "step x %d rank(s); unigram val perplexity %.2f",
                len(self.corpus.train),
                len(self.corpus.val),
                config.preset,
                place.device,
                place.dtype,
                self.accum,
                config.max_tokens,
                place.world,
                self.unigram,
            )

    def _check_corpus(self, resume: bool) -> None:
        """Record what the run trains on; a resumed run refuses records that changed since it
        began, where the checkpoint's data position would go on through other data (and another
        validation split) without a word."""
        fingerprint = self.corpus.fingerprint()
        recorded = self.progress.corpus_sha256
        if resume and recorded is not None and recorded != fingerprint:
            config, corpus = self.config, self.corpus
            raise InvalidInputError(
                f"--resume: {config.corpus} no longer holds the records this run trains on "
                f"({len(corpus.train):,} training and {len(corpus.val):,} validation records "
                "now; the checkpoint's data position and validation split are of the file as the "
                "run began): put that file back, or train on from this run's weights in a new "
                f"run: {export_command(config.run_dir)}, then protssl pretrain "
                f"{config.corpus} --init-from OUT --run-dir NEW"
            )
        self.progress.corpus_sha256 = fingerprint

    def train(self, end: int, stop: _Stop, *, show_progress: bool) -> list[float]:
        """Optimizer steps until step `end` or a stop request; the loss of each."""
        config, progress, leader = self.config, self.progress, self.place.leader
        batches = contrastive_batches if config.contrastive else micro_batches
        stream = batches(self.corpus, config, progress.position)
        bar = progress_bar(
            total=config.steps,
            initial=progress.step,
            disable=not (leader and show_progress),
            desc="pretrain",
            unit="step",
        )
        losses: list[float] = []
        window_tokens, window_start = 0, time.perf_counter()  # tok_per_s: training time only
        try:
            while progress.step < end and not stop.agreed(self.place):
                started = time.perf_counter()
                lr = learning_rate(config, progress.step)
                loss, tokens = self._optimizer_step(stream, lr)
                progress.step += 1
                progress.tokens_seen += tokens
                self.step_seconds.append(time.perf_counter() - started)
                progress.elapsed_s += self.step_seconds[-1]
                window_tokens += tokens
                losses.append(loss)
                row: dict[str, object] = {}
                if leader and (
                    progress.step % config.val_every == 0 or progress.step == config.steps
                ):
                    evaluating = time.perf_counter()
                    row = self._evaluate()
                    self.eval_seconds += time.perf_counter() - evaluating
                    window_start += time.perf_counter() - evaluating
                if progress.step % config.log_every == 0 or row:
                    now = time.perf_counter()
                    rate = window_tokens / max(now - window_start, 1e-9)
                    window_tokens, window_start = 0, now
                    self._write_row(row, loss=loss, lr=lr, rate=rate)
                    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:.0f}")
                bar.update(1)
                if leader and progress.step % config.checkpoint_every == 0:
                    self._checkpoint()
        finally:
            bar.close()
        return losses

    def _optimizer_step(
        self, stream: Iterator[tuple[torch.Tensor, DataPosition]], lr: float
    ) -> tuple[float, int]:
        """One optimizer step at `lr` over `accum` micro-batches per rank, advancing the data
        position; the rank's mean loss and the tokens of all ranks."""
        config, place, accum = self.config, self.place, self.accum
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum, tokens = torch.zeros((), device=place.device), 0
        term_sums: dict[str, torch.Tensor] = {}
        for micro in range(accum):
            # Each rank takes every world-th micro-batch of the shared stream.
            for shard in range(place.world):
                batch, self.progress.position = next(stream)
                if shard == place.rank:
                    mine = batch
            generator = torch.Generator().manual_seed(
                config.seed * 1_000_003
                + (self.progress.step * accum + micro) * place.world
                + place.rank
            )
            inputs, targets = mask_tokens(mine, mask_prob=config.mask_prob, generator=generator)
            with self._gradient_sync(last=micro == accum - 1):
                with autocast(place.device, place.dtype):
                    if config.contrastive:
                        loss = self._contrastive_loss(inputs, targets, term_sums) / accum
                    else:
                        micro_loss, n = mlm_loss_sum(self.model, inputs, targets)
                        loss = micro_loss / max(n, 1) / accum
                loss.backward()
            loss_sum += loss.detach()
            tokens += int(mine.ne(ALPHABET.padding_idx).sum())
        self.terms = {name: float(value) / accum for name, value in term_sums.items()}
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.encoder.parameters(), config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        step_loss = float(loss_sum)  # the step's only wait on the device
        if place.world > 1:
            counted = torch.tensor([tokens], dtype=torch.int64, device=place.device)
            dist.all_reduce(counted)
            tokens = int(counted)
        return step_loss, tokens

    def _contrastive_loss(
        self, inputs: torch.Tensor, targets: torch.Tensor, term_sums: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """The weighted loss of one pair micro-batch; its terms are added to `term_sums`."""
        config = self.config
        with_mlm = config.objective == "mlm+contrastive"
        contrast, mlm_sum, n = contrastive_losses(
            self.model, inputs, targets if with_mlm else None, temperature=config.temperature
        )
        terms = {"contrastive_loss": contrast}
        loss = config.contrastive_weight * contrast
        if mlm_sum is not None:
            terms["mlm_loss"] = mlm_sum / max(n, 1)
            loss = loss + config.mlm_weight * terms["mlm_loss"]
        for name, value in terms.items():
            term_sums[name] = term_sums.get(name, torch.zeros_like(value)) + value.detach()
        return loss

    def _gradient_sync(self, *, last: bool) -> contextlib.AbstractContextManager[Any]:
        """DDP averages gradients across ranks on the last micro-batch of a step only."""
        if isinstance(self.model, torch.nn.parallel.DistributedDataParallel) and not last:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def _evaluate(self) -> dict[str, object]:
        """Validation loss (and the probe's scores) now: log.csv fields; TensorBoard scalars."""
        step = self.progress.step
        val_loss = self._validation_loss()
        row: dict[str, object] = {
            "val_loss": f"{val_loss:.4f}",
            "val_ppl": f"{math.exp(val_loss):.3f}",
        }
        scalars = {"val/ppl": math.exp(val_loss)}
        if self.probe is not None:
            self.probe_scores = self.probe.score(self.encoder, self.place.dtype)
            row.update(
                probe_nn1=self.probe_scores["nn1_last_layer"],
                probe_nn1_best=self.probe_scores["nn1_best_layer"],
            )
            scalars["probe/nn1"] = self.probe_scores["nn1_last_layer"]
        if self.log is not None:
            self.log.scalars(step, scalars)
        return row

    def _validation_loss(self) -> float:
        """Validation loss on the fixed held-out subset; kept as the run's latest."""
        self.progress.val_loss = validation_loss(
            self.encoder,
            self.val_batches,
            mask_prob=self.config.mask_prob,
            seed=self.config.seed,
            dtype=self.place.dtype,
        )
        return self.progress.val_loss

    def _write_row(self, row: dict[str, object], *, loss: float, lr: float, rate: float) -> None:
        """A log.csv row for the step just done (with any validation fields) and its scalars."""
        if self.log is None:
            return
        step = self.progress.step
        row.update(
            step=step,
            tokens=self.progress.tokens_seen,
            loss=f"{loss:.4f}",
            lr=f"{lr:.3e}",
            tok_per_s=f"{rate:.0f}",
        )
        row.update({name: f"{value:.4f}" for name, value in self.terms.items()})
        self.log.write(row)
        scalars = {"train/loss": loss, "train/lr": lr, "train/tok_per_s": rate}
        self.log.scalars(step, scalars | {f"train/{k}": v for k, v in self.terms.items()})

    def _checkpoint(self) -> None:
        """Write the checkpoint (atomically) as the run stands now; when that fails (a full disk),
        stop the run with what is kept and how to go on."""
        try:
            save_checkpoint(
                self.checkpoint_path,
                checkpoint_state(
                    self.progress,
                    encoder=self.encoder,
                    optimizer=self.optimizer,
                    config=self.config,
                    hardware=_hardware(self.place),
                    dtype=_dtype_name(self.place.dtype),
                    head=self.head,
                ),
            )
        except OutputError as exc:
            kept = (
                f"the checkpoint of step {self.saved_step} is kept: free space, then go on with "
                f"`protssl pretrain --run-dir {self.config.run_dir} --resume`"
                if self.saved_step is not None
                else "no checkpoint was written before it"
            )
            raise OutputError(
                f"pretraining stopped at step {self.progress.step}: {exc}; {kept}"
            ) from exc
        self.saved_step = self.progress.step

    def finish(self, losses: list[float]) -> PretrainResult:
        """Checkpoint and plot (leader); export the model when the schedule is complete."""
        config, progress = self.config, self.progress
        interrupted = progress.step < config.steps
        model_dir = None
        if self.place.leader:
            self._checkpoint()
            plot_run(config.run_dir)
        if self.place.leader and not interrupted:
            val_loss = progress.val_loss
            if val_loss is None:
                val_loss = self._validation_loss()
            if self.probe is not None and self.probe_scores is None:
                self.probe_scores = self.probe.score(self.encoder, self.place.dtype)
            model_dir = config.run_dir / MODEL_SUBDIR
            summary = training_summary(
                config,
                progress,
                corpus=self.corpus,
                val_loss=val_loss,
                unigram=self.unigram,
                val_batches=len(self.val_batches),
                hardware=_hardware(self.place),
                dtype=_dtype_name(self.place.dtype),
            )
            try:
                export_model(
                    self.encoder,
                    model_dir,
                    config=config,
                    summary=summary | probe_summary(self.probe, self.probe_scores),
                )
            except OutputError as exc:
                raise OutputError(
                    f"exporting the model failed: {exc}; the run's checkpoint (step "
                    f"{progress.step}) is complete: free space, then "
                    f"`{export_command(config.run_dir, model_dir)}`"
                ) from exc
        return PretrainResult(
            encoder=self.encoder,
            step=progress.step,
            tokens_seen=progress.tokens_seen,
            val_loss=progress.val_loss,
            interrupted=interrupted,
            model_dir=model_dir,
            losses=tuple(losses),
            step_seconds=tuple(self.step_seconds),
            eval_seconds=self.eval_seconds,
        )


def _start(
    config: PretrainConfig,
    place: _Placement,
    checkpoint_path: Path,
    *,
    resume: bool,
    command: str | None,
) -> tuple[ProteinEncoder, ProjectionHead | None, torch.optim.Optimizer, RunProgress]:
    """The encoder on its device, a contrastive run's projection head, their AdamW and the run's
    progress: a new run (random or `init_from` weights) or the one in the checkpoint."""
    if resume:  # weights and the parent's record come from the checkpoint
        encoder, parent = ProteinEncoder(config.model_config), None
    else:
        encoder, parent = initial_encoder(config)
    encoder.to(place.device)
    head = None
    trained: torch.nn.Module = encoder
    if config.contrastive:
        head = seeded_head(config.model_config.embed_dim, config.seed).to(place.device)
        trained = ContrastiveModel(encoder, head)
    optimizer = torch.optim.AdamW(
        _param_groups(trained, config.weight_decay),
        lr=config.lr,
        betas=config.betas,
        fused=place.device.type == "cuda",
    )
    if not resume:
        return encoder, head, optimizer, RunProgress(command=command, init_from=parent)
    progress = resume_from(
        checkpoint_path, config, encoder=encoder, optimizer=optimizer, command=command, head=head
    )
    log.info(
        "resumed from %s at step %d (%d tokens)",
        checkpoint_path,
        progress.step,
        progress.tokens_seen,
    )
    return encoder, head, optimizer, progress


def _distributed(
    module: torch.nn.Module, place: _Placement, *, unused_parameters: bool = False
) -> torch.nn.Module:
    """`module` in DistributedDataParallel over several ranks; itself on one."""
    if place.world == 1:
        return module
    return torch.nn.parallel.DistributedDataParallel(
        module,
        device_ids=[place.device.index] if place.device.type == "cuda" else None,
        find_unused_parameters=unused_parameters,
    )


def _param_groups(encoder: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices only (not biases, LayerNorms or embeddings)."""
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


def _hardware(place: _Placement) -> str:
    """What the run trains on, for the checkpoint and the card: GPU name, or CPU and threads."""
    if place.device.type == "cuda":
        what = torch.cuda.get_device_name(place.device)
    else:
        what = (
            f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
        )
    return f"{place.world} x {what}" if place.world > 1 else what


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class _Stop:
    """Set by SIGINT/SIGTERM, or due once `deadline` (monotonic) passes; the loop checkpoints and
    returns at the next step boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None
        """The signal that asked this process to stop (on several ranks: any rank's, once agreed)."""
        self.deadline: float | None = None
        self.deadline_reached = False

    def __call__(self, signum: int, frame: object) -> None:
        log.warning("signal %d: checkpointing and stopping after this step", signum)
        self.signum = signum

    @property
    def requested(self) -> bool:
        """Whether the loop should stop now."""
        due = self.deadline is not None and time.monotonic() >= self.deadline
        if due and not self.deadline_reached:
            log.warning("deadline reached: checkpointing and stopping")
            self.deadline_reached = True
        return self.signum is not None or self.deadline_reached

    def agreed(self, place: _Placement) -> bool:
        """Whether every rank stops now: a signal that reached one rank (or reached them between
        different steps) stops all of them at the same step, where one rank leaving the loop alone
        would leave the others waiting in their next gradient all-reduce."""
        if place.world == 1:
            return self.requested
        signum = torch.tensor([self.signum or 0], dtype=torch.int64, device=place.device)
        dist.all_reduce(signum, op=dist.ReduceOp.MAX)
        # The reduced value decides: a signal handled during the all-reduce stops the next step.
        agreed = int(signum)
        if agreed and self.signum is None:
            self.signum = agreed
        return agreed != 0


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[_Stop]:
    """SIGINT and SIGTERM request a stop inside; the handlers found are put back after.

    Only the main thread can install handlers: elsewhere the stop is never requested.
    """
    stop = _Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in signals}
    try:
        for sig in signals:
            signal.signal(sig, stop)
        yield stop
    finally:
        for sig, handler in previous.items():
            # None: a handler not installed from Python, which Python cannot reinstall.
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def _flushing_denormals() -> bool:
    """Whether this thread flushes denormal floats to zero (torch can set it but not report it)."""
    return float(torch.tensor([1e-39]) * 1.0) == 0.0


@contextlib.contextmanager
def _denormals_flushed() -> Iterator[None]:
    """Flush denormal floats to zero in this thread inside, then put back the setting found."""
    before = _flushing_denormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


def _current_cuda_device(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """`device` is the current CUDA device inside (as NCCL expects), the previous one after."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.device(device)
