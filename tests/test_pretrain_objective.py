"""ESM-2's masking and the learning-rate schedule."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from pretrain_support import tiny_config

from protssl.alphabet import ALPHABET, tokenize
from protssl.fasta import read_fasta
from protssl.pretrain.objective import learning_rate, mask_tokens


def test_masking_follows_the_80_10_10_recipe(sample_fasta: Path) -> None:
    sequences = [r.sequence[:510] for r in read_fasta(sample_fasta)][:200]
    width = max(len(s) for s in sequences) + 2
    tokens = torch.full((len(sequences), width), ALPHABET.padding_idx)
    tokens[:, 0] = ALPHABET.cls_idx
    for row, sequence in enumerate(sequences):
        tokens[row, 1 : len(sequence) + 1] = torch.from_numpy(tokenize(sequence))
        tokens[row, len(sequence) + 1] = ALPHABET.eos_idx
    inputs, targets = mask_tokens(
        tokens, mask_prob=0.15, generator=torch.Generator().manual_seed(1)
    )
    special = (
        tokens.eq(ALPHABET.padding_idx) | tokens.eq(ALPHABET.cls_idx) | tokens.eq(ALPHABET.eos_idx)
    )
    selected = targets.ne(-100)
    assert not (selected & special).any()
    assert torch.equal(inputs[special], tokens[special])
    assert torch.equal(inputs[~selected], tokens[~selected])
    assert torch.equal(targets[selected], tokens[selected])
    n = int(selected.sum())
    assert abs(n / int((~special).sum()) - 0.15) < 0.01
    masked = inputs[selected].eq(ALPHABET.mask_idx).float().mean().item()
    kept = inputs[selected].eq(tokens[selected]).float().mean().item()
    replaced = 1 - masked - kept
    assert abs(masked - 0.8) < 0.02
    # a random residue equals the original about 1 time in 20, so "kept" is 10% + 0.5%
    assert abs(kept - 0.105) < 0.015
    assert abs(replaced - 0.095) < 0.015
    standard = {ALPHABET.get_idx(a) for a in "ACDEFGHIKLMNPQRSTVWY"}
    changed = selected & inputs.ne(tokens) & inputs.ne(ALPHABET.mask_idx)
    assert set(inputs[changed].tolist()) <= standard


def test_learning_rate_warms_up_then_decays(tmp_path: Path, sample_fasta: Path) -> None:
    config = tiny_config(sample_fasta, tmp_path, steps=100, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [learning_rate(config, s) for s in range(100)]
    assert lrs[9] == pytest.approx(config.lr)
    assert all(a < b for a, b in itertools.pairwise(lrs[:10]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[-1] == pytest.approx(0.1 * config.lr, rel=0.01)
    linear = replace(config, schedule="linear")
    assert learning_rate(linear, 55) == pytest.approx(config.lr * (0.1 + 0.9 * 0.5))
