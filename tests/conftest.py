"""Shared fixtures: paths to the real data in ../shared/data, small real FASTA files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PROTSSL_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The staged real protein data; CI always has it beside the clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def edge_cases(shared_data: Path) -> Path:
    return shared_data / "edge_cases"


@pytest.fixture(scope="session")
def sample_fasta(shared_data: Path) -> Path:
    return shared_data / "pretrain" / "pretrain_corpus_sample2k.fasta"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random-weight protssl model folder (safetensors + card), windows of 62 residues."""
    from protssl.checkpoint import save_model
    from protssl.model import ModelConfig, ProteinEncoder, init_weights

    encoder = ProteinEncoder(
        ModelConfig(num_layers=2, embed_dim=64, attention_heads=4, ffn_dim=256, max_positions=64)
    )
    init_weights(encoder, seed=1)
    directory = tmp_path_factory.mktemp("models") / "tiny"
    save_model(encoder, directory, name="tiny-test")
    return directory
