"""The training data: random crops, the held-out split by record id, the resumable batch stream."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch
from pretrain_support import tiny_config

from protssl.fasta import read_fasta
from protssl.pretrain.data import (
    DataPosition,
    crop_sequence,
    is_validation_id,
    load_corpus,
    micro_batches,
)
from protssl.pretrain.probe import unigram_perplexity


def test_crops_start_at_varying_offsets(sample_fasta: Path) -> None:
    sequence = max((r.sequence for r in read_fasta(sample_fasta)), key=len)
    assert len(sequence) > 1000
    rng = np.random.default_rng(0)
    crops = [crop_sequence(sequence, 300, rng) for _ in range(200)]
    offsets = {sequence.find(c) for c in crops}
    assert all(len(c) == 300 for c in crops)
    assert -1 not in offsets
    assert len(offsets) > 100
    assert min(offsets) < 100 and max(offsets) > len(sequence) - 400
    short = sequence[:50]
    assert crop_sequence(short, 300, rng) == short


def test_validation_split_is_deterministic_by_id(sample_fasta: Path) -> None:
    first = load_corpus(sample_fasta, val_fraction=0.02)
    second = load_corpus(sample_fasta, val_fraction=0.02)
    assert first.val_ids == second.val_ids and first.train_ids == second.train_ids
    assert not set(first.val_ids) & set(first.train_ids)
    total = len(first.val_ids) + len(first.train_ids)
    assert 0.01 < len(first.val_ids) / total < 0.035
    assert all(is_validation_id(i, 0.02) for i in first.val_ids)
    # a larger fraction keeps every record of the smaller one (a threshold on the same hash)
    wider = load_corpus(sample_fasta, val_fraction=0.1)
    assert set(first.val_ids) < set(wider.val_ids)
    assert unigram_perplexity(first.train, first.val) < 25.0


def test_the_stream_restarted_at_a_position_continues_it(
    tmp_path: Path, sample_fasta: Path
) -> None:
    config = tiny_config(sample_fasta, tmp_path, pool_sequences=32)  # a few batches per pool
    corpus = load_corpus(sample_fasta, val_fraction=config.val_fraction)
    whole = list(itertools.islice(micro_batches(corpus, config, DataPosition()), 12))
    _, position = whole[4]
    again = list(itertools.islice(micro_batches(corpus, config, position), 7))
    assert [p for _, p in again] == [p for _, p in whole[5:]]
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(again, whole[5:], strict=True))
