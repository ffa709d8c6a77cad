"""`protssl embed`: FASTA to HDF5/.npz, resume, the FASTA policy, the store's cache, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from protssl.cli import main
from protssl.output import read_vectors


def _first_records(src: Path, n: int, dest: Path) -> Path:
    text = src.read_text()
    chunks = text.split(">")[1 : n + 1]
    dest.write_text("".join(">" + c for c in chunks))
    return dest


def _summary(capsys: pytest.CaptureFixture[str]) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_embed_h5_then_resume_skips_done_ids(
    tiny_model_dir: Path, sample_fasta: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.h5"
    part = _first_records(sample_fasta, 10, tmp_path / "part.fasta")
    full = _first_records(sample_fasta, 25, tmp_path / "full.fasta")
    base = [
        "--model",
        str(tiny_model_dir),
        "--no-progress",
        "--dtype",
        "float32",
        "--overlap",
        "16",
    ]
    assert main(["embed", str(part), "-o", str(out), *base]) == 0
    first = _summary(capsys)
    assert first["records"] == 10 and first["errors"] == 0
    assert main(["embed", str(full), "-o", str(out), *base]) == 2  # exists, no --resume
    assert "--resume" in capsys.readouterr().err
    assert main(["embed", str(full), "-o", str(out), "--resume", *base]) == 0
    second = _summary(capsys)
    assert second["resumed"] == 10 and second["records"] == 15
    rows = list(read_vectors(out))
    assert len({r[0] for r in rows}) == 25
    _, vector, attrs = rows[0]
    assert vector.shape == (64,) and vector.dtype == np.float32
    assert attrs["model_name"] == "tiny-test" and attrs["pooling"] == "mean"
    assert len(attrs["model_sha256"]) == 64 and attrs["windowed"] in (0, 1, False, True)


def test_resume_refuses_other_provenance(
    tiny_model_dir: Path, sample_fasta: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o.h5"
    part = _first_records(sample_fasta, 3, tmp_path / "p.fasta")
    base = ["--model", str(tiny_model_dir), "--no-progress", "--overlap", "16"]
    assert main(["embed", str(part), "-o", str(out), *base]) == 0
    code = main(["embed", str(part), "-o", str(out), "--resume", "--pooling", "bos", *base])
    assert code == 2
    assert "pooling" in capsys.readouterr().err


def test_fasta_error_keeps_records_before_it(
    tiny_model_dir: Path,
    sample_fasta: Path,
    edge_cases: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    mixed = tmp_path / "mixed.fasta"
    good = _first_records(sample_fasta, 5, tmp_path / "good.fasta").read_text()
    mixed.write_text(good + (edge_cases / "emboss_protgap.fasta").read_text())
    out = tmp_path / "mixed.npz"
    args = ["--model", str(tiny_model_dir), "--no-progress", "--overlap", "16"]
    code = main(["embed", str(mixed), "-o", str(out), *args])
    assert code == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "mixed.fasta" in err[0] and "position" in err[0]
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["errors"] == 1 and summary["records"] == 5
    assert len(list(read_vectors(out))) == 5


def test_skip_policy_counts_and_names(
    tiny_model_dir: Path, edge_cases: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "embed",
        str(edge_cases / "prokka_IS_internal_stops.fasta"),
        "-o",
        str(tmp_path / "s.h5"),
    ]
    args += ["--model", str(tiny_model_dir), "--no-progress", "--on-invalid", "skip"]
    args += ["--overlap", "16"]
    assert main(args) == 0
    summary = _summary(capsys)
    assert summary["skipped"] > 0 and summary["skipped_ids"]


def test_console_script_user_errors_are_one_line(tmp_path: Path, edge_cases: Path) -> None:
    env = {**os.environ, "PROTSSL_MODEL": str(tmp_path / "missing-model")}
    cases = [
        ["embed", str(tmp_path / "nope.fasta"), "-o", str(tmp_path / "x.h5")],
        ["embed", str(edge_cases / "emboss_protgap.fasta"), "-o", str(tmp_path / "y.h5")],
        ["embed", str(edge_cases / "emboss_protgap.fasta"), "-o", str(tmp_path / "y.csv")],
    ]
    for args in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "protssl", *args], capture_output=True, text=True, env=env
        )
        assert proc.returncode == 2, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("protssl embed: error:"), proc.stderr
        assert "Traceback" not in proc.stderr


def test_second_embed_reads_everything_from_the_store(
    tiny_model_dir: Path, sample_fasta: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fasta = _first_records(sample_fasta, 12, tmp_path / "twelve.fasta")
    base = ["--model", str(tiny_model_dir), "--no-progress", "--overlap", "16"]
    base += ["--db", f"sqlite:///{tmp_path / 'cache.sqlite3'}"]
    assert main(["embed", str(fasta), "-o", str(tmp_path / "a.h5"), *base]) == 0
    first = _summary(capsys)
    assert main(["embed", str(fasta), "-o", str(tmp_path / "b.h5"), *base]) == 0
    second = _summary(capsys)
    assert (first["computed"], first["cached"]) == (12, 0)
    assert (second["computed"], second["cached"]) == (0, 12)
    a = {i: v for i, v, _ in read_vectors(tmp_path / "a.h5")}
    b = {i: v for i, v, _ in read_vectors(tmp_path / "b.h5")}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
