"""Helpers for the pretraining tests: a toy run's recipe and the rows of its log."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

from protssl.pretrain import LOG_NAME, PretrainConfig


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
