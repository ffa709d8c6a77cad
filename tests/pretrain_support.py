"""Helpers for the pretraining tests: a toy run's recipe, the rows of its log, a DDP rank."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from protssl.pretrain import LOG_NAME, PretrainConfig, pretrain


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


def ddp_worker(rank: int, port: int, corpus: str, out: str, changes: dict[str, Any]) -> None:
    """One of two gloo ranks training the toy run (with `changes`); saves its weights as rankN.pt."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        config = tiny_config(Path(corpus), Path(out) / "run", **changes)
        result = pretrain(config, progress=False)
        torch.save(result.encoder.state_dict(), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
