"""A stopped run's last checkpoint exported as a model folder whose card tells the run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pretrain_support import tiny_config

from protssl.checkpoint import load_model
from protssl.errors import InvalidInputError
from protssl.pretrain import pretrain
from protssl.pretrain.data import load_corpus
from protssl.pretrain.export import export_checkpoint


def test_a_stopped_run_exports_its_checkpoint(tmp_path: Path, sample_fasta: Path) -> None:
    config = tiny_config(sample_fasta, tmp_path / "run")
    stopped = pretrain(config, stop_after=5, command="protssl pretrain x", progress=False)
    exported = export_checkpoint(tmp_path / "run", tmp_path / "at5", extra={"note": "x"})
    model = load_model(exported, dtype="float32")
    card = model.card.training or {}
    assert card["steps"] == 5 and card["scheduled_steps"] == 12 and card["note"] == "x"
    assert card["tokens_seen"] == stopped.tokens_seen and card["val_perplexity"] > 1
    assert card["command"] == "protssl pretrain x" and card["resume_commands"] == []
    assert card["recipe"] == config.with_absolute_inputs().to_dict()  # the corpus resolved
    corpus = load_corpus(sample_fasta, val_fraction=config.val_fraction)
    assert card["corpus_records"] == {"train": len(corpus.train), "val": len(corpus.val)}
    for key, value in stopped.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value), key
    with pytest.raises(InvalidInputError, match=r"'.*at5' holds a model already"):
        export_checkpoint(tmp_path / "run", tmp_path / "at5")
    assert export_checkpoint(tmp_path / "run", tmp_path / "at5", overwrite=True) == exported
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    with pytest.raises(InvalidInputError, match=r"model folder '.*a-file/m': cannot create it"):
        export_checkpoint(tmp_path / "run", blocker / "m")
