from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

import protssl


def test_all_is_sorted_and_complete() -> None:
    assert list(protssl.__all__) == sorted(protssl.__all__)
    assert all(hasattr(protssl, name) for name in protssl.__all__)


def test_importing_protssl_pulls_in_no_rpc_stack() -> None:
    code = "import sys, protssl; print(any(m.startswith(('grpc', 'service')) for m in sys.modules))"
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "False"


def test_embed_keeps_input_order_and_matches_records(
    tiny_model_dir: Path, sample_fasta: Path
) -> None:
    model = protssl.load_model(tiny_model_dir, dtype="float32")
    records = [r for r in protssl.read_fasta(sample_fasta) if len(r) < 60][:7]
    result = protssl.embed(records, model=model)
    assert result.ids == [r.id for r in records]
    assert isinstance(result.vectors, np.ndarray) and result.vectors.shape == (7, 64)
    plain = protssl.embed([r.sequence.lower() for r in records], model=model)
    assert plain.ids[0] == "seq0"
    np.testing.assert_allclose(plain.vectors, result.vectors, atol=1e-6)
    per_residue = protssl.embed(records[:2], model=model, pooling="per-residue")
    assert [v.shape[0] for v in per_residue.vectors] == [len(r) for r in records[:2]]
    assert result.provenance[0].model_sha256 == model.sha256
