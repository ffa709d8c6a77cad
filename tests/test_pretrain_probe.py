"""Scoring an encoder while it trains: validation loss and the function probe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from protssl.alphabet import ALPHABET, tokenize
from protssl.errors import InvalidInputError
from protssl.model import PRESETS, ProteinEncoder, init_weights
from protssl.pretrain.data import load_corpus
from protssl.pretrain.probe import (
    FunctionProbe,
    layer_embeddings,
    masked_lm_loss,
    pooled_layer_embeddings,
)

LABELLED = Path(__file__).resolve().parents[1] / "examples" / "labelled.fasta"


def test_function_probe_needs_labels(tmp_path: Path) -> None:
    fasta = tmp_path / "probe.fasta"
    fasta.write_text(">a label=X\nMKVL\n>b label=X\nMKVI\n>c\nMKVA\n")
    with pytest.raises(InvalidInputError, match="record 'c' has no label="):
        FunctionProbe.from_fasta(fasta)
    fasta.write_text(">a label=X\nMKVL\n>b label=X\nMKVI\n>c label=Y\nMKVA\n")
    with pytest.raises(InvalidInputError, match="two labels with two or more records"):
        FunctionProbe.from_fasta(fasta)


def test_masked_lm_loss_is_repeatable_and_near_uniform_for_random_weights(
    sample_fasta: Path,
) -> None:
    encoder = ProteinEncoder(PRESETS["protssl-tiny"])
    init_weights(encoder, seed=0)
    held_out = list(load_corpus(sample_fasta, val_fraction=0.02).val)[:16]
    first = masked_lm_loss(encoder, held_out, window_residues=126)
    assert masked_lm_loss(encoder, held_out, window_residues=126) == first
    assert masked_lm_loss(encoder, held_out, window_residues=126, seed=1) != first
    # untrained: about the cross-entropy of a uniform guess over the 33 tokens (ln 33 = 3.50)
    assert 3.0 < first < 4.0


def test_layer_embeddings_pool_every_layer_alone_or_in_a_batch() -> None:
    encoder = ProteinEncoder(PRESETS["protssl-tiny"])
    init_weights(encoder, seed=0)
    probe = FunctionProbe.from_fasta(LABELLED)
    sequences = probe.sequences[:6]
    together = layer_embeddings(encoder, sequences)
    assert together.shape == (encoder.config.num_layers + 1, 6, encoder.config.embed_dim)
    alone = layer_embeddings(encoder, sequences[2:3])
    torch.testing.assert_close(
        torch.from_numpy(alone[:, 0]), torch.from_numpy(together[:, 2]), atol=1e-5, rtol=1e-4
    )
    scores = probe.score(encoder, torch.float32)
    assert 0 <= scores["best_layer"] <= encoder.config.num_layers
    assert scores["nn1_last_layer"] <= scores["nn1_best_layer"] <= 1


def test_pooled_layer_embeddings_give_mean_bos_and_max_from_one_forward() -> None:
    encoder = ProteinEncoder(PRESETS["protssl-tiny"])
    init_weights(encoder, seed=0)
    sequences = ["MKVLAAGIC", "MKW", "ACDEFGHIKLMNPQ"]
    pooled = pooled_layer_embeddings(encoder, sequences, poolings=("mean", "bos", "max"))
    np.testing.assert_array_equal(pooled["mean"], layer_embeddings(encoder, sequences))
    tokens = torch.tensor([[ALPHABET.cls_idx, *tokenize("MKW"), ALPHABET.eos_idx]])
    with torch.no_grad():
        hidden = encoder(tokens, repr_layers=[2], return_logits=False).representations[2][0]
    torch.testing.assert_close(torch.from_numpy(pooled["bos"][2, 1]), hidden[0])
    torch.testing.assert_close(torch.from_numpy(pooled["max"][2, 1]), hidden[1:4].amax(0))
