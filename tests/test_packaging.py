"""An installed protssl (a wheel, not this checkout) has what it needs beside its code: the default
model and the store's migrations. Both live in top-level folders of the checkout, linked from the
package; a wheel built without them installed a protssl that could neither load a model nor
create a store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from protssl.checkpoint import DEFAULT_MODEL_DIR
from protssl.output import read_vectors

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "protssl", "service", "migrations", "models")


@pytest.mark.slow
def test_an_installed_wheel_embeds_with_its_default_model_and_store(
    tmp_path: Path, sample_fasta: Path
) -> None:
    # a copy of the sources: the build leaves build/ and *.egg-info beside them
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name,
                source / name,
                symlinks=True,
                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
            )
        else:
            shutil.copy2(ROOT / name, source / name)
    wheels, installed = tmp_path / "wheels", tmp_path / "installed"
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("protssl-*.whl")
    install = [*pip, "install", "--no-deps", "--target", str(installed), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    assert not (installed / "protssl" / "models").is_symlink()  # copies, not links to the checkout

    fasta = tmp_path / "ten.fasta"
    fasta.write_text("".join(">" + c for c in sample_fasta.read_text().split(">")[1:11]))
    out = tmp_path / "out.h5"
    env = {**os.environ, "PYTHONPATH": str(installed)}  # ahead of the checkout's editable install
    env["PROTSSL_DATABASE_URL"] = f"sqlite:///{tmp_path / 'store.sqlite3'}"  # a new store: migrated
    env.pop("PROTSSL_MODEL", None)
    run = subprocess.run(
        [sys.executable, "-m", "protssl", "embed", str(fasta), "-o", str(out), "--no-progress"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.splitlines()[-1])
    assert summary["records"] == 10 and summary["job"]  # the job row: the store was created
    card = json.loads((DEFAULT_MODEL_DIR / "model.json").read_text())
    rows = list(read_vectors(out))
    assert len(rows) == 10 and all(
        attrs["model_sha256"] == card["weights"]["sha256"] for _, _, attrs in rows
    )
    info = subprocess.run(
        [sys.executable, "-m", "protssl", "info"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert f"at {installed / 'protssl' / 'models' / 'protssl-default'};" in info.stdout
