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
