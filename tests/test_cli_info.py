"""`protssl info`: the CPU, dtypes and fast paths, the default model (from its card) and store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protssl.cli import main


def test_info_names_the_cpu_dtypes_model_and_store(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from protssl.hardware import cpu_info
    from protssl.info import describe

    db = f"sqlite:///{tmp_path / 'x.sqlite3'}"
    assert main(["info", "--model", str(tiny_model_dir), "--db", db]) == 0
    text = capsys.readouterr().out
    cpu = cpu_info()
    assert f"cpu: {cpu.model} ({cpu.cores} cores" in text
    assert f"auto dtype: {describe()['auto_dtype']} on cpu" in text
    assert "fast paths (float32): " in text and "fast paths (bfloat16): " in text
    assert "default model: tiny-test (sha256 " in text and f"default store: {db}" in text
    assert "recommended pooling" not in text  # the tiny card recommends none
    assert main(["info", "--json", "--db", "postgresql+psycopg://me:secret@db/x"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["default_store"] == "postgresql+psycopg://me:***@db/x"
    shipped = info["default_model"]
    assert shipped["name"] == "protssl-default" and shipped["default_layer"] == 6
    assert shipped["recommended_pooling"] == "segments"  # `protssl analyze --update-card` chose it
    assert main(["info"]) == 0
    assert "layer 6 unless named, recommended pooling segments" in capsys.readouterr().out
    assert main(["info", "--model", "esm2-8m"]) == 0  # a preset, found as `embed` finds it
    assert "default model: preset esm2-8m, random weights, 6 layers" in capsys.readouterr().out
    for spec, said in [
        ("nosuch", "no model at 'nosuch': give a model folder, a fair-esm .pt, or one of ["),
        (str(tmp_path / "x.pt"), f"{tmp_path / 'x.pt'}: no such file"),
        (str(tmp_path), f"{tmp_path}: expected model.json there"),
    ]:
        assert main(["info", "--model", spec]) == 2  # as `embed --model` says it
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.startswith(f"protssl info: error: {said}")
        assert len(captured.err.splitlines()) == 1
