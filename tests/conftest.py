"""Shared fixtures: paths to the real data in ../shared/data, small real FASTA files."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PROTSSL_SHARED_DATA", ROOT.parent / "shared" / "data"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `bf16_cpu` ask the CPU probe; the fallback tests run everywhere."""
    from protssl.hardware import cpu_has_bf16

    if cpu_has_bf16():
        return
    skip = pytest.mark.skip(reason="this CPU has no native bf16 (protssl info: native bf16 no)")
    for item in items:
        if "bf16_cpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _private_default_store(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commands that open the default store use a throwaway SQLite file, never the user's."""
    url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'default.sqlite3'}"
    monkeypatch.setenv("PROTSSL_DATABASE_URL", url)


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


# --- store: a real SQLite file, and a throwaway schema in the real PostgreSQL ---


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.sqlite3'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL whose search_path is a fresh schema, dropped afterwards; skipped without PostgreSQL."""
    base = os.environ.get("PROTSSL_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("PROTSSL_TEST_POSTGRES_URL is not set")
    schema = f"protssl_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str:
    """Each store test runs on a real SQLite file and on the real PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(name))
