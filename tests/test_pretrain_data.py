"""The training data: random crops, the held-out split by record id, the resumable batch stream."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from pretrain_support import tiny_config

from protssl.errors import InvalidInputError
from protssl.fasta import FastaPolicy, read_fasta
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


def test_what_the_corpus_leaves_out_is_counted_and_said(
    sample_fasta: Path, edge_cases: Path, tmp_path: Path
) -> None:
    """Records with internal stops (real Prokka transposases), an empty one and a repeated id were
    dropped without a word: a corpus of six-frame translations would lose half and train on."""
    stops = edge_cases / "prokka_IS_internal_stops.fasta"
    dropped = [r.id for r in read_fasta(stops, policy=FastaPolicy(on_invalid="replace"))]
    corpus_file = tmp_path / "corpus.fasta"
    sample = sample_fasta.read_text()
    first_id = sample[1:].split(None, 1)[0]
    corpus_file.write_text(sample + stops.read_text() + f">empty\n>{first_id}\nMKV\n")
    corpus = load_corpus(corpus_file, val_fraction=0.02)
    clean = load_corpus(sample_fasta, val_fraction=0.02)
    assert (corpus.train_ids, corpus.val_ids) == (clean.train_ids, clean.val_ids)
    assert corpus.skipped == {
        "with invalid residues": len(dropped),
        "empty": 1,
        "with a repeated id": 1,
    }
    assert corpus.skipped_ids == tuple(dropped[:3])
    total = len(dropped) + 2
    note = corpus.skipped_note(corpus_file)
    assert note is not None and note.startswith(
        f"{corpus_file}: {total:,} of {total + len(clean.train) + len(clean.val):,} records left "
        f"out of training ({len(dropped):,} with invalid residues, 1 empty, 1 with a repeated id; "
        f"e.g. {dropped[0]!r}"
    )
    assert clean.skipped == {} and clean.skipped_note(sample_fasta) is None


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


def test_a_corpus_the_reader_empties_is_refused_saying_what_it_left_out(tmp_path: Path) -> None:
    """Every record left out by the reader's skip policy: the refusal said "0 training and 0
    validation records ... (a bigger corpus or another val_fraction)", before the warning on what
    was left out was ever printed, so its advice pointed the wrong way."""
    bad = tmp_path / "bad.fasta"
    bad.write_text(">a\nMKV*LL\n>b\nAC1D\n")
    with pytest.raises(InvalidInputError) as refused:
        load_corpus(bad, val_fraction=0.02)
    assert str(refused.value) == (
        f"{bad}: 0 training and 0 validation records; need both: 2 of 2 records left out of "
        "training (2 with invalid residues; e.g. 'a', 'b'): the reader's policy for a corpus is "
        "skip; fix those records or give another corpus"
    )


def test_a_corpus_too_small_to_split_names_the_flag_and_what_was_left_out(
    tmp_path: Path, sample_fasta: Path
) -> None:
    """Five real records hold no validation record at 2%: the line names `--val-fraction` (the
    command's flag, not the Python field) and still says what the reader left out."""
    records = [r for r in read_fasta(sample_fasta) if not is_validation_id(r.id, 0.02)][:5]
    small = tmp_path / "small.fasta"
    small.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in records) + ">z\nMK1\n")
    with pytest.raises(InvalidInputError) as refused:
        load_corpus(small, val_fraction=0.02)
    assert str(refused.value) == (
        f"{small}: 5 training and 0 validation records; need both: a bigger corpus, or another "
        "--val-fraction (now 0.02); 1 of 6 records left out of training (1 with invalid "
        "residues; e.g. 'z'): the reader's policy for a corpus is skip"
    )
    small.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in records))
    with pytest.raises(InvalidInputError) as refused:
        load_corpus(small, val_fraction=0.02)
    assert str(refused.value) == (
        f"{small}: 5 training and 0 validation records; need both: a bigger corpus, or another "
        "--val-fraction (now 0.02)"
    )
