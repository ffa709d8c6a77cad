"""Store fixtures: real protein sequences, and a store on a real SQLite file and the real PostgreSQL."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from protssl.fasta import read_fasta
from protssl.store import Store, StoreConfig


@pytest.fixture(scope="module")
def sequences(sample_fasta: Path) -> list[str]:
    """300 real, distinct protein sequences."""
    unique = dict.fromkeys(r.sequence for r in itertools.islice(read_fasta(sample_fasta), 310))
    return list(unique)[:300]


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with Store(StoreConfig(url=store_url)) as opened:
        yield opened
