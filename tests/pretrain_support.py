"""Helpers for the pretraining tests: a toy run's recipe, the rows of its log, a DDP rank."""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from protssl.pretrain import LOG_NAME, PretrainConfig, pretrain
from protssl.pretrain.loop import _Stop


def tiny_config(corpus: Path, run_dir: Path, **changes: object) -> PretrainConfig:
    """A toy run on real sequences: 2 layers x 64 wide, crops of 126, 2 micro-batches per step."""
    base = PretrainConfig(
        corpus=corpus,
        run_dir=run_dir,
        preset="protssl-tiny",
        steps=12,
        crop_residues=126,
        max_tokens=1024,
        tokens_per_step=2048,
        lr=3e-3,
        warmup_steps=3,
        val_every=6,
        val_max_records=32,
        log_every=2,
        checkpoint_every=4,
        pool_sequences=256,
    )
    return replace(base, **changes)


def log_rows(run_dir: Path) -> list[dict[str, str]]:
    """The rows of a run's log.csv."""
    with (run_dir / LOG_NAME).open() as handle:
        return list(csv.DictReader(handle))


def ddp_worker(
    rank: int,
    port: int,
    corpus: str,
    out: str,
    changes: dict[str, Any],
    sigterm_rank: int | None = None,
) -> None:
    """One of two gloo ranks training the toy run (with `changes`); saves its weights as rankN.pt
    and where it stopped as rankN.json. Rank `sigterm_rank` sends itself SIGTERM once it trains."""
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        timeout=timedelta(seconds=60),  # a rank left waiting fails the test instead of hanging it
    )
    try:
        torch.set_num_threads(1)
        config = tiny_config(Path(corpus), Path(out) / "run", **changes)
        if rank == sigterm_rank:
            sigterm_once_training()
        result = pretrain(config, progress=False)
        torch.save(result.encoder.state_dict(), Path(out) / f"rank{rank}.pt")
        stopped = {"step": result.step, "signal": result.signal}
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(stopped))
        dist.barrier()  # as protssl.cli.pretrain leaves a group: together, after rank 0's checkpoint
    finally:
        dist.destroy_process_group()


def sigterm_once_training(after_s: float = 0.5, *, call: int = 1) -> threading.Thread:
    """SIGTERM this process `after_s` after the `call`-th training run's handler is in place (a
    timer from the start raced the corpus load on a busy machine, and the signal killed the test)."""

    def send() -> None:
        seen: list[_Stop] = []
        while len(seen) < call:
            handler = signal.getsignal(signal.SIGTERM)
            if isinstance(handler, _Stop) and all(handler is not s for s in seen):
                seen.append(handler)
            time.sleep(0.005)
        time.sleep(after_s)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread
