"""The pretraining recipe: checked when built, and carried whole through a checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
from pretrain_support import tiny_config

from protssl.errors import InvalidInputError
from protssl.pretrain.state import config_from_state


def test_config_rejects_bad_values(tmp_path: Path, sample_fasta: Path) -> None:
    with pytest.raises(InvalidInputError, match="unknown preset 'nope'; choose one of"):
        tiny_config(sample_fasta, tmp_path, preset="nope")
    with pytest.raises(InvalidInputError, match=r"max_tokens 100 must hold one full crop \(128\)"):
        tiny_config(sample_fasta, tmp_path, max_tokens=100)
    with pytest.raises(InvalidInputError, match=r"mask_prob must be in \(0, 1\), got 1.5"):
        tiny_config(sample_fasta, tmp_path, mask_prob=1.5)
    with pytest.raises(InvalidInputError, match="steps must be >= 1, got 0"):
        tiny_config(sample_fasta, tmp_path, steps=0)
    with pytest.raises(InvalidInputError, match="dtype int8 is for inference"):
        tiny_config(sample_fasta, tmp_path, dtype="int8")
    for field, value in (("weight_decay", "nan"), ("grad_clip", "inf"), ("mlm_weight", "nan")):
        # NaN passed every `< 0` check, and the run trained NaN weights to the end
        with pytest.raises(
            InvalidInputError, match=f"^{field} must be a finite number, got {value}$"
        ):
            tiny_config(sample_fasta, tmp_path, **{field: float(value)})


def test_config_checks_the_objective(tmp_path: Path, sample_fasta: Path) -> None:
    with pytest.raises(InvalidInputError, match="objective must be mlm, contrastive or"):
        tiny_config(sample_fasta, tmp_path, objective="simclr")
    with pytest.raises(InvalidInputError, match="mlm_weight and contrastive_weight must be >= 0"):
        tiny_config(sample_fasta, tmp_path, contrastive_weight=-1.0)
    with pytest.raises(InvalidInputError, match=r"temperature must be in \(0, 10\], got 0"):
        tiny_config(sample_fasta, tmp_path, temperature=0)
    with pytest.raises(InvalidInputError, match=r"cluster_positive_rate must be in \[0, 1\]"):
        tiny_config(sample_fasta, tmp_path, cluster_positive_rate=1.5)
    with pytest.raises(InvalidInputError, match=r"must hold two pairs of full crops \(512\)"):
        tiny_config(sample_fasta, tmp_path, objective="contrastive", max_tokens=500)
    assert tiny_config(sample_fasta, tmp_path, max_tokens=500).objective == "mlm"
    assert not tiny_config(sample_fasta, tmp_path).contrastive
    assert tiny_config(sample_fasta, tmp_path, objective="mlm+contrastive").contrastive


def test_recipe_round_trips_through_a_checkpoints_dict(tmp_path: Path, sample_fasta: Path) -> None:
    config = tiny_config(sample_fasta, tmp_path, cluster_tsv=tmp_path / "c.tsv", betas=(0.8, 0.9))
    recipe = config.to_dict()
    assert recipe["corpus"] == str(sample_fasta) and recipe["betas"] == [0.8, 0.9]
    assert config_from_state({"config": recipe}) == config
