"""`make demo`: embed the example FASTA with the shipped default model and print a short summary."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from protssl.checkpoint import load_model
from protssl.job import embed_fasta_file
from protssl.output import read_vectors

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def main() -> int:
    """Embed examples/proteins.fasta into a temporary HDF5 file and describe the result."""
    model = load_model()
    print(
        f"model: {model.name} ({model.card.architecture.num_layers} layers, sha256 {model.sha256[:12]}…)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "proteins.h5"
        summary = embed_fasta_file(EXAMPLES / "proteins.fasta", out, model, progress=True)
        ids, vectors = zip(*((i, v) for i, v, _ in read_vectors(out)), strict=True)
    matrix = np.stack(vectors)
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -1.0)
    best = int(similarity.max(axis=1).argmax())
    print(
        f"embedded {summary.records} proteins ({summary.residues:,} residues) in "
        f"{summary.seconds:.1f} s = {summary.residues_per_second:,.0f} residues/s; "
        f"vectors {matrix.shape[1]}-d"
    )
    print(f"most similar pair: {ids[best]} ~ {ids[int(similarity[best].argmax())]}")
    print(json.dumps(summary.as_dict()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
