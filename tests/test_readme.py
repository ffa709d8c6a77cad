"""The README's Python examples run as written, in a scratch folder that sees examples/."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from service_support import load_tiny, running_server, save_tiny_model

from protssl.cli import main
from protssl.fasta import read_fasta
from protssl.output import read_vectors

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
README_ADDRESS = "127.0.0.1:50051"


def readme_example(needle: str) -> str:
    """The one ```python block of README.md that contains `needle`."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    (block,) = [b for b in blocks if needle in b]
    return block


def run_example(code: str) -> tuple[dict[str, Any], list[str]]:
    """Executes a README example; its variables and the lines it printed."""
    namespace: dict[str, Any] = {"__name__": "readme"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), namespace)
    return namespace, out.getvalue().splitlines()


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder where `examples/...` resolves as in a clone and outputs stay in tmp."""
    (tmp_path / "examples").symlink_to(EXAMPLES)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_hdf5_example_reads_what_protssl_embed_wrote(scratch: Path, tiny_model_dir: Path) -> None:
    args = ["embed", "examples/proteins.fasta", "-o", "proteins.h5", "--no-cache"]
    assert main([*args, "--model", str(tiny_model_dir), "--overlap", "16", "--no-progress"]) == 0
    namespace, printed = run_example(readme_example('h5py.File("proteins.h5")'))
    written = {i: (v, attrs) for i, v, attrs in read_vectors(scratch / "proteins.h5")}
    vector, attrs = written["tr|A0A0E3MF11|A0A0E3MF11_SULSF"]
    assert printed == [f"{attrs['model_sha256']} 300"]
    np.testing.assert_array_equal(namespace["vector"], vector)
    np.testing.assert_array_equal(namespace["same"], vector)


def test_table_example_reads_what_protssl_embed_wrote(scratch: Path, tiny_model_dir: Path) -> None:
    args = ["embed", "examples/proteins.fasta", "-o", "proteins.tsv", "--no-cache"]
    assert main([*args, "--model", str(tiny_model_dir), "--overlap", "16", "--no-progress"]) == 0
    namespace, _ = run_example(readme_example('pd.read_csv("proteins.tsv"'))
    written = {i: v for i, v, _ in read_vectors(scratch / "proteins.tsv")}
    table = namespace["table"]
    assert list(table.index) == list(written) and len(written) == 300
    np.testing.assert_array_equal(namespace["vectors"], np.stack(list(written.values())))
    assert namespace["vectors"].dtype == np.float32


def fasta_head(source: Path, count: int, target: Path) -> Path:
    """The first `count` records of `source`, their lines as written, in `target`."""
    text = source.read_text()
    starts = [m.start() for m in re.finditer("^>", text, flags=re.M)]
    target.write_text(text[: starts[count]] if count < len(starts) else text)
    return target


@pytest.mark.slow
def test_python_api_and_store_examples_with_the_shipped_model(scratch: Path) -> None:
    """The examples as written, on the first 12 records of examples/proteins.fasta: embedding all
    300 twice took 3 minutes on an AVX2-only CPU (float32), for no more coverage."""
    assert len(list(read_fasta(EXAMPLES / "proteins.fasta"))) == 300  # what the comments say
    subset = fasta_head(EXAMPLES / "proteins.fasta", 12, scratch / "subset.fasta")
    records = list(read_fasta(subset))
    n = len(records)

    def on_subset(code: str) -> str:
        assert code.count('"examples/proteins.fasta"') == 1
        return code.replace('"examples/proteins.fasta"', f'"{subset.name}"')

    namespace, _ = run_example(on_subset(readme_example("protssl.embed(records, model=model)")))
    result = namespace["result"]
    assert result.ids == [r.id for r in records]
    assert result.vectors.shape == (n, 320) and result.vectors.dtype == np.float32
    per_res = namespace["per_res"]
    assert [v.shape for v in per_res.vectors] == [(10, 320), (4, 320)]
    saved = list(read_vectors(scratch / "proteins.tsv"))
    assert [k for k, _, _ in saved] == result.ids
    assert np.stack([v for _, v, _ in saved]).tobytes() == result.vectors.tobytes()
    store_example = on_subset(readme_example("CacheStats()"))
    assert "# 300 0; run it again: 0 300" in store_example
    assert run_example(store_example)[1] == [f"{n} 0"]
    again, printed = run_example(store_example)
    assert printed == [f"0 {n}"]
    vectors = {e.id: e.vector for e in again["vectors"]}
    np.testing.assert_allclose(
        np.stack([vectors[i] for i in result.ids]),
        result.vectors,
        atol=1e-6,
    )


@pytest.mark.service
def test_sdk_example_against_a_real_server(scratch: Path) -> None:
    code = readme_example("protssl.Client(")
    assert README_ADDRESS in code
    model = load_tiny(save_tiny_model(scratch / "model"))
    url = f"sqlite:///{scratch / 'store.sqlite3'}"
    with running_server(model, store=True, database_url=url) as (_, address, _registry):
        namespace, printed = run_example(code.replace(README_ADDRESS, address))
    result = namespace["result"]
    assert result.ids == ["seq0", "seq1"] and result.cached == (False, False)
    assert result.vectors.shape == (2, 64) and result.vectors.dtype == np.float32
    assert namespace["big"].ids == [r.id for r in read_fasta(EXAMPLES / "proteins.fasta")]
    saved = {k: v.tobytes() for k, v, _ in read_vectors(scratch / "proteins.h5")}
    assert saved == {e.id: e.vector.tobytes() for e in namespace["big"]}
    assert namespace["info"].examples == 72
    queries = [r.id for r in read_fasta(EXAMPLES / "labelled_query.fasta")]
    assert [line.split()[0] for line in printed] == queries
