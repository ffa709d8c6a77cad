"""Shared fixtures: paths to real protein data, a tiny model, SQLite and PostgreSQL stores.

Real data comes from ../shared/data (or `PROTSSL_SHARED_DATA`), which CI always has beside the
clone. A clone without it tests on the real records shipped in examples/ (examples/README.md says
where they come from); only the tests that need files examples/ does not ship skip, naming them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import create_engine, make_url, text

# grpcio's fork handlers (on by default) restart its threads in every fork()ed child. A child that
# then closes its descriptors and execs, as Ray starts its processes (Popen with a preexec_fn),
# died of SIGABRT or SIGSEGV in 1-2% of forks once a test had used gRPC in the same process, and
# a Ray process that dies so leaves `ray.init` waiting for it. No test forks a child that uses gRPC.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

if TYPE_CHECKING:
    from protssl.checkpoint import LoadedModel
    from protssl.fasta import ProteinRecord

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PROTSSL_SHARED_DATA", ROOT.parent / "shared" / "data"))
EXAMPLES = ROOT / "examples"
CORPUS_SAMPLE = SHARED_DATA / "pretrain" / "pretrain_corpus_sample2k.fasta"


def pytest_report_header() -> str:
    """Says which real data this run tests on."""
    if SHARED_DATA.is_dir():
        return f"real data: {SHARED_DATA}"
    return f"real data: {EXAMPLES} (no shared data at {SHARED_DATA}: tests needing it skip)"


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
    """Commands that open the default store use a throwaway SQLite file, never the user's.

    Servers these tests start (`protssl serve`, `python -m service`, on loopback) run without API
    tokens, as `--insecure-no-auth`; tests/test_auth.py unsets this to test authentication, and
    `service_support.running_server` does the same for in-process servers. Clients get no token.
    """
    url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'default.sqlite3'}"
    monkeypatch.setenv("PROTSSL_DATABASE_URL", url)
    monkeypatch.setenv("PROTSSL_INSECURE_NO_AUTH", "true")
    monkeypatch.delenv("PROTSSL_TOKEN", raising=False)


@pytest.fixture(scope="session")
def shared_file() -> Callable[..., Path]:
    """Finds a path under the shared data; the test skips, naming it and why, when it is absent."""

    def find(relative: str, why: str = "examples/ has no copy") -> Path:
        path = SHARED_DATA / relative
        if not path.exists():
            pytest.skip(f"needs {relative} of the shared data, not at {SHARED_DATA} ({why})")
        return path

    return find


@pytest.fixture(scope="session")
def edge_cases() -> Path:
    """The shared edge_cases/ folder, else examples/edge_cases/: copies or prefixes of three files."""
    shared = SHARED_DATA / "edge_cases"
    return shared if shared.is_dir() else EXAMPLES / "edge_cases"


@pytest.fixture(scope="session")
def sample_fasta() -> Path:
    """The 2,000-record corpus sample, else examples/proteins.fasta: its first 300 records."""
    return CORPUS_SAMPLE if CORPUS_SAMPLE.is_file() else EXAMPLES / "proteins.fasta"


@pytest.fixture(scope="session")
def sample_size(sample_fasta: Path) -> int:
    """How many records `sample_fasta` holds (tests that count them must know which file it is)."""
    return 2000 if sample_fasta == CORPUS_SAMPLE else 300


@pytest.fixture(scope="session")
def transposase_fastas() -> list[Path]:
    """IS transposases labelled by family: the shared set (30 families, 11-652 records each),
    else examples/labelled*.fasta (6 families, 20 records each, from the same source)."""
    shared = SHARED_DATA / "families" / "prokka_IS_transposase_families.fasta"
    if shared.is_file():
        return [shared]
    return [EXAMPLES / "labelled.fasta", EXAMPLES / "labelled_query.fasta"]


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


# --- the service: a small model with the default 1,022-residue window, and real records ---


@pytest.fixture(scope="session")
def service_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random-weight model folder for the service tests (`service_support.TINY`)."""
    from service_support import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("service-model"))


@pytest.fixture(scope="session")
def service_model(service_model_dir: Path) -> LoadedModel:
    from service_support import load_tiny

    return load_tiny(service_model_dir)


@pytest.fixture(scope="session")
def service_records(sample_fasta: Path) -> list[ProteinRecord]:
    """Real proteins, one past the service model's 1,022-residue window (so it is windowed)."""
    from service_support import real_records

    short = real_records(sample_fasta, 7, max_length=600)
    long = next(r for r in real_records(sample_fasta, 200) if 1100 < len(r) < 2500)
    return [*short, long]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB filesystem (tmpfs) to fill: mounted where the machine lets this process mount
    one (root, as this project's machines run), else the test is skipped."""
    import shutil
    import subprocess

    folder = tmp_path / "small-disk"
    folder.mkdir()
    mount = shutil.which("mount")
    if mount is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
