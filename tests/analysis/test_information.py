"""Bits per residue: the arithmetic from perplexity to bits, and a real model beating frequencies."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from protssl.analysis.information import Information, measure_information
from protssl.checkpoint import load_model
from protssl.pretrain.data import load_corpus


def test_bits_follow_from_the_losses() -> None:
    info = Information(records=2, residues=10, loss=math.log(8.0), unigram_perplexity=16.0)
    assert info.perplexity == pytest.approx(8.0)
    assert info.model_bits == pytest.approx(3.0) and info.unigram_bits == pytest.approx(4.0)
    assert info.bits_saved == pytest.approx(1.0)
    assert info.to_json()["bits_saved_per_residue"] == 1.0


def test_random_weights_save_nothing(tiny_model_dir: Path, sample_fasta: Path) -> None:
    corpus = load_corpus(sample_fasta, val_fraction=0.02)
    model = load_model(tiny_model_dir)
    held_out = corpus.val[:8]  # 8 of the shared sample's split; examples/ holds 7
    assert len(held_out) >= 5
    info = measure_information(model.encoder, corpus.train, held_out, window_residues=62)
    assert info.records == len(held_out) and info.residues == sum(map(len, held_out))
    # an untrained model guesses about uniformly over 33 tokens: worse than residue frequencies
    assert info.bits_saved < 0 < info.unigram_bits < math.log2(20) + 0.1
