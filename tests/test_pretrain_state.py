"""A run's checkpoint: atomic writes, safe reads, and where a run starts from."""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

import pytest
import torch
from pretrain_support import tiny_config

from protssl.checkpoint import load_model
from protssl.errors import CheckpointError, InvalidInputError, OutputError
from protssl.pretrain import PretrainConfig, pretrain
from protssl.pretrain.state import (
    CHECKPOINT_NAME,
    initial_encoder,
    load_checkpoint,
    locate_inputs,
    save_checkpoint,
)


class _FailsMidWrite:
    """Pickling it fails as a full disk would, after part of the checkpoint is written."""

    def __reduce__(self) -> NoReturn:
        raise OSError(28, "No space left on device")


def test_checkpoint_writes_are_atomic(tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, {"step": 1, "weights": torch.arange(4)})
    with pytest.raises(OutputError, match=r"checkpoint.pt' failed: No space left on device$"):
        save_checkpoint(path, {"step": 2, "weights": torch.arange(4), "bad": _FailsMidWrite()})
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["weights"], torch.arange(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]


def test_a_checkpoint_that_is_not_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINT_NAME
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read the training checkpoint"):
        load_checkpoint(path)


def test_a_pickle_checkpoint_is_refused_in_one_line_of_protssl_advice(tmp_path: Path) -> None:
    """A .pt that pickles more than tensors (a fair-esm file, say) was refused with torch's page of
    advice on allow-listing globals (`torch.serialization.add_safe_globals`)."""
    path = tmp_path / CHECKPOINT_NAME
    torch.save({"cfg": argparse.Namespace(encoder_layers=2), "step": 1}, path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert message == (
        f"{path}: not a training checkpoint protssl wrote: it pickles argparse.Namespace, and "
        "protssl unpickles no code from one; to train on from a fair-esm .pt, import it with "
        "`protssl import-esm FILE DIR --trust-pickle` and start a new run with --init-from DIR"
    )


def test_init_from_continues_from_an_exported_model(tmp_path: Path, sample_fasta: Path) -> None:
    first = pretrain(tiny_config(sample_fasta, tmp_path / "first", steps=4), progress=False)
    assert first.model_dir is not None
    parent = load_model(first.model_dir, dtype="float32")
    config = tiny_config(sample_fasta, tmp_path / "second", steps=3, init_from=first.model_dir)
    encoder, recorded = initial_encoder(config)
    for key, value in parent.encoder.state_dict().items():
        assert torch.equal(encoder.state_dict()[key], value), key
    assert recorded is not None
    assert recorded["sha256"] == parent.sha256 and recorded["tokens_seen"] == first.tokens_seen
    second = pretrain(config, stop_after=2, progress=False)
    resumed = pretrain(config, resume=True, progress=False)
    assert second.losses[0] < first.losses[0]  # it starts trained, not from random weights
    assert resumed.model_dir is not None and resumed.step == 3
    card = load_model(resumed.model_dir).card.training or {}
    assert card["init_from"]["sha256"] == parent.sha256
    assert card["recipe"]["init_from"] == str(first.model_dir)
    with pytest.raises(InvalidInputError, match="differs from preset"):
        initial_encoder(replace(config, preset="protssl-8m-h5"))


def test_resume_needs_a_checkpoint_of_the_same_shape(tmp_path: Path, sample_fasta: Path) -> None:
    config = tiny_config(sample_fasta, tmp_path / "run", steps=2)
    checkpoint = tmp_path / "run" / CHECKPOINT_NAME
    with pytest.raises(
        InvalidInputError, match=re.escape(f"--resume: no checkpoint at {checkpoint}")
    ):
        pretrain(config, resume=True, progress=False)
    pretrain(config, stop_after=1, progress=False)
    wider = replace(config, preset="protssl-8m-h5")
    with pytest.raises(CheckpointError, match="preset 'protssl-tiny' differs from 'protssl-8m-h5'"):
        pretrain(wider, resume=True, progress=False)


_WRITER = """
import sys, torch
from pathlib import Path
from protssl.pretrain.state import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
path = Path(sys.argv[1]) / CHECKPOINT_NAME
step = load_checkpoint(path)["step"] + 1 if path.exists() else 0
while True:  # a large checkpoint, again and again, until killed
    save_checkpoint(path, {"step": step, "weights": torch.full((3_000_000,), float(step))})
    step += 1
"""


@pytest.mark.slow
def test_a_checkpoint_write_killed_midway_leaves_the_previous_one_loadable(tmp_path: Path) -> None:
    """Real SIGKILLs at random moments of a process that writes a 12 MB checkpoint in a loop."""
    rng = random.Random()
    path = tmp_path / CHECKPOINT_NAME
    env = dict(os.environ, OMP_NUM_THREADS="1")
    last, mid_write = -1, 0
    for _ in range(6):
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], env=env)
        deadline = time.monotonic() + 120
        before = path.stat().st_ino if path.exists() else None
        while not path.exists() or path.stat().st_ino == before:  # this writer's first save
            assert writer.poll() is None and time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.5))
        writer.send_signal(signal.SIGKILL)
        assert writer.wait(timeout=60) == -signal.SIGKILL
        mid_write += any(tmp_path.glob(f".{CHECKPOINT_NAME}.*.tmp"))  # killed inside a write
        state = load_checkpoint(path)  # the previous checkpoint, whole
        assert state["step"] > last
        assert torch.equal(state["weights"], torch.full((3_000_000,), float(state["step"])))
        last = state["step"]
    assert mid_write >= 1, "no kill fell inside a write"
    save_checkpoint(path, {"step": last + 1})  # the next save removes what killed writers left
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]


def test_relative_inputs_of_an_older_run_are_found_from_the_launch_folder_then_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run recorded before its paths were absolute: a relative path is looked for in the folder
    the run folder's path says it was launched from, then in the working directory; a file the
    run needs found in neither is refused naming it, one it does not need (`init_from`, whose
    weights the checkpoint holds) is not; absolute paths are kept."""
    launch, here = tmp_path / "launch", tmp_path / "here"
    for folder in (launch, here):
        folder.mkdir()
    (launch / "corpus.fasta").write_text(">a\nMKV\n")
    (here / "probe.fasta").write_text(">p label=A\nMKV\n")
    clusters = tmp_path / "clusters.tsv"
    clusters.write_text("a\ta\n")
    recorded = PretrainConfig(
        corpus=Path("corpus.fasta"),
        run_dir=Path("runs/c"),
        preset="protssl-tiny",
        crop_residues=126,
        probe_fasta=Path("probe.fasta"),
        init_from=Path("models/parent"),
        cluster_tsv=clusters,
    )
    monkeypatch.chdir(here)
    located = locate_inputs(recorded, launch / "runs" / "c")
    assert located.run_dir == launch / "runs" / "c"
    assert located.corpus == (launch / "corpus.fasta").resolve()
    assert located.probe_fasta == (here / "probe.fasta").resolve()
    assert located.init_from == (launch / "models" / "parent").resolve()
    assert located.cluster_tsv == clusters
    elsewhere = tmp_path / "elsewhere" / "c"  # named by another path: no launch folder to infer
    with pytest.raises(InvalidInputError) as refused:
        locate_inputs(recorded, elsewhere)
    assert str(refused.value) == (
        f"run {str(elsewhere)!r}: its corpus 'corpus.fasta' is relative to the folder the run was "
        f"launched from, and it is not in {here} (the working directory): run this command from "
        "the folder the run was launched from, or put the file back there"
    )
    monkeypatch.chdir(launch)
    without_probe = replace(recorded, probe_fasta=None)
    assert locate_inputs(without_probe, elsewhere).corpus == (launch / "corpus.fasta").resolve()
    clusters.unlink()  # an absolute path recorded at launch, gone since: said so, not a bare
    with pytest.raises(InvalidInputError) as gone:  # "no such file" from deep in the reader
        locate_inputs(recorded, launch / "runs" / "c")
    assert str(gone.value) == (
        f"run {str(launch / 'runs' / 'c')!r}: its --cluster-tsv {str(clusters)!r}, recorded when "
        "the run was launched, is not there any more: put the file back there"
    )
