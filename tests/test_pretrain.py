"""Pretraining: MLM masking, crops, validation split, atomic checkpoints, exact resume, 2-rank DDP."""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import shlex
import signal
import socket
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from protssl.alphabet import ALPHABET, tokenize
from protssl.checkpoint import load_model
from protssl.cli.pretrain import main
from protssl.errors import InvalidInputError
from protssl.fasta import read_fasta
from protssl.model import PRESETS, ProteinEncoder, init_weights
from protssl.pretrain import (
    CHECKPOINT_NAME,
    LOG_NAME,
    PLOT_NAME,
    FunctionProbe,
    PretrainConfig,
    crop_sequence,
    export_checkpoint,
    initial_encoder,
    is_validation_id,
    learning_rate,
    load_checkpoint,
    load_corpus,
    mask_tokens,
    masked_lm_loss,
    pretrain,
    save_checkpoint,
    unigram_perplexity,
)


def tiny_config(corpus: Path, run_dir: Path, **changes: object) -> PretrainConfig:
    """A toy run on real sequences: 2 layers x 64 wide, crops of 126, 2 micro-batches per step."""
    base = PretrainConfig(
        corpus=corpus,
        run_dir=run_dir,
        preset="protssl-tiny",
        steps=12,
        crop_residues=126,
        max_tokens=1024,
        tokens_per_step=2048,
        lr=3e-3,
        warmup_steps=3,
        val_every=6,
        val_max_records=32,
        log_every=2,
        checkpoint_every=4,
        pool_sequences=256,
    )
    return replace(base, **changes)


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / LOG_NAME).open() as handle:
        return list(csv.DictReader(handle))


# --- the recipe's parts ----------------------------------------------------------------------------


def test_masking_follows_the_80_10_10_recipe(sample_fasta: Path) -> None:
    sequences = [r.sequence[:510] for r in read_fasta(sample_fasta)][:200]
    width = max(len(s) for s in sequences) + 2
    tokens = torch.full((len(sequences), width), ALPHABET.padding_idx)
    tokens[:, 0] = ALPHABET.cls_idx
    for row, sequence in enumerate(sequences):
        tokens[row, 1 : len(sequence) + 1] = torch.from_numpy(tokenize(sequence))
        tokens[row, len(sequence) + 1] = ALPHABET.eos_idx
    inputs, targets = mask_tokens(
        tokens, mask_prob=0.15, generator=torch.Generator().manual_seed(1)
    )
    special = (
        tokens.eq(ALPHABET.padding_idx) | tokens.eq(ALPHABET.cls_idx) | tokens.eq(ALPHABET.eos_idx)
    )
    selected = targets.ne(-100)
    assert not (selected & special).any()
    assert torch.equal(inputs[special], tokens[special])
    assert torch.equal(inputs[~selected], tokens[~selected])
    assert torch.equal(targets[selected], tokens[selected])
    n = int(selected.sum())
    assert abs(n / int((~special).sum()) - 0.15) < 0.01
    masked = inputs[selected].eq(ALPHABET.mask_idx).float().mean().item()
    kept = inputs[selected].eq(tokens[selected]).float().mean().item()
    replaced = 1 - masked - kept
    assert abs(masked - 0.8) < 0.02
    # a random residue equals the original about 1 time in 20, so "kept" is 10% + 0.5%
    assert abs(kept - 0.105) < 0.015
    assert abs(replaced - 0.095) < 0.015
    standard = {ALPHABET.get_idx(a) for a in "ACDEFGHIKLMNPQRSTVWY"}
    changed = selected & inputs.ne(tokens) & inputs.ne(ALPHABET.mask_idx)
    assert set(inputs[changed].tolist()) <= standard


def test_crops_start_at_varying_offsets(sample_fasta: Path) -> None:
    sequence = max((r.sequence for r in read_fasta(sample_fasta)), key=len)
    assert len(sequence) > 1000
    rng = np.random.default_rng(0)
    crops = [crop_sequence(sequence, 300, rng) for _ in range(200)]
    offsets = {sequence.find(c) for c in crops}
    assert all(len(c) == 300 for c in crops)
    assert -1 not in offsets
    assert len(offsets) > 100
    assert min(offsets) < 100 and max(offsets) > len(sequence) - 400
    short = sequence[:50]
    assert crop_sequence(short, 300, rng) == short


def test_validation_split_is_deterministic_by_id(sample_fasta: Path) -> None:
    first = load_corpus(sample_fasta, val_fraction=0.02)
    second = load_corpus(sample_fasta, val_fraction=0.02)
    assert first.val_ids == second.val_ids and first.train_ids == second.train_ids
    assert not set(first.val_ids) & set(first.train_ids)
    total = len(first.val_ids) + len(first.train_ids)
    assert 0.01 < len(first.val_ids) / total < 0.035
    assert all(is_validation_id(i, 0.02) for i in first.val_ids)
    # a larger fraction keeps every record of the smaller one (a threshold on the same hash)
    wider = load_corpus(sample_fasta, val_fraction=0.1)
    assert set(first.val_ids) < set(wider.val_ids)
    assert unigram_perplexity(first.train, first.val) < 25.0


def test_learning_rate_warms_up_then_decays(tmp_path: Path, sample_fasta: Path) -> None:
    config = tiny_config(sample_fasta, tmp_path, steps=100, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [learning_rate(config, s) for s in range(100)]
    assert lrs[9] == pytest.approx(config.lr)
    assert all(a < b for a, b in itertools.pairwise(lrs[:10]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[-1] == pytest.approx(0.1 * config.lr, rel=0.01)
    linear = replace(config, schedule="linear")
    assert learning_rate(linear, 55) == pytest.approx(config.lr * (0.1 + 0.9 * 0.5))


def test_config_rejects_bad_values(tmp_path: Path, sample_fasta: Path) -> None:
    with pytest.raises(InvalidInputError, match="preset"):
        tiny_config(sample_fasta, tmp_path, preset="nope")
    with pytest.raises(InvalidInputError, match="max_tokens"):
        tiny_config(sample_fasta, tmp_path, max_tokens=100)
    with pytest.raises(InvalidInputError, match="mask_prob"):
        tiny_config(sample_fasta, tmp_path, mask_prob=1.5)


def test_checkpoint_writes_are_atomic(tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, {"step": 1, "weights": torch.arange(4)})
    with pytest.raises(Exception, match=r"pickle|lambda|Can't"):
        save_checkpoint(path, {"step": 2, "weights": torch.arange(4), "bad": lambda: 0})
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["weights"], torch.arange(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]


# --- whole runs ------------------------------------------------------------------------------------


def test_function_probe_is_scored_at_each_validation_and_recorded_in_the_card(
    tmp_path: Path, sample_fasta: Path
) -> None:
    labelled = Path(__file__).resolve().parents[1] / "examples" / "labelled.fasta"
    run = tmp_path / "run"
    result = pretrain(tiny_config(sample_fasta, run, probe_fasta=labelled), progress=False)
    rows = _rows(run)
    scored = [r for r in rows if r["probe_nn1"]]
    assert [r["step"] for r in scored] == [r["step"] for r in rows if r["val_loss"]] == ["6", "12"]
    for row in scored:
        assert 0 <= float(row["probe_nn1"]) <= float(row["probe_nn1_best"]) <= 1
    assert (run / PLOT_NAME).stat().st_size > 1000  # the probe on a second axis
    probe = json.loads((run / "model" / "model.json").read_text())["training"]["function_probe"]
    assert (probe["records"], probe["labels"]) == (72, 6)
    assert probe["nn1_last_layer"] == float(scored[-1]["probe_nn1"])
    assert probe["nn1_composition"] > 1 / 6  # composition carries family signal: well above chance
    exported = load_model(result.model_dir)
    again = FunctionProbe.from_fasta(labelled).score(exported.encoder, torch.float32)
    assert again["nn1_last_layer"] == pytest.approx(probe["nn1_last_layer"], abs=0.03)


def test_denormals_are_flushed_while_training_and_only_then(
    tmp_path: Path, sample_fasta: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import protssl.pretrain as module

    tiny = torch.tensor([1e-39])  # a float32 denormal
    seen: list[float] = []

    def run(config: PretrainConfig, **_: object) -> None:
        seen.append(float(tiny * 1.0))
        raise KeyboardInterrupt  # the flag must be restored on any way out

    monkeypatch.setattr(module, "_pretrain", run)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_config(sample_fasta, tmp_path / "run"))
    assert seen == [0.0]
    assert float(tiny * 1.0) > 0


def test_function_probe_needs_labels(tmp_path: Path) -> None:
    fasta = tmp_path / "probe.fasta"
    fasta.write_text(">a label=X\nMKVL\n>b label=X\nMKVI\n>c\nMKVA\n")
    with pytest.raises(InvalidInputError, match="record 'c' has no label="):
        FunctionProbe.from_fasta(fasta)
    fasta.write_text(">a label=X\nMKVL\n>b label=X\nMKVI\n>c label=Y\nMKVA\n")
    with pytest.raises(InvalidInputError, match="two labels with two or more records"):
        FunctionProbe.from_fasta(fasta)


def test_fifty_steps_lower_validation_loss_through_the_cli(
    tmp_path: Path, sample_fasta: Path
) -> None:
    run = tmp_path / "run"
    argv = [
        str(sample_fasta),
        "--run-dir",
        str(run),
        "--preset",
        "protssl-tiny",
        "--steps",
        "50",
        "--crop",
        "126",
        "--max-tokens",
        "1024",
        "--tokens-per-step",
        "2048",
        "--lr",
        "3e-3",
        "--warmup",
        "5",
        "--val-every",
        "5",
        "--val-max-records",
        "32",
        "--no-progress",
    ]
    assert main(argv) == 0
    val = [float(r["val_loss"]) for r in _rows(run) if r["val_loss"]]
    assert len(val) == 10
    assert val[-1] < val[0] - 0.1
    assert (run / PLOT_NAME).stat().st_size > 1000
    loaded = load_model(run / "model")
    card = json.loads((run / "model" / "model.json").read_text())["training"]
    assert loaded.card.architecture.num_layers == 2
    assert card["steps"] == 50 and card["tokens_seen"] > 50 * 1500
    assert card["val_perplexity"] == pytest.approx(math.exp(val[-1]), rel=1e-3)
    assert card["unigram_val_perplexity"] > 10
    assert card["command"] == shlex.join(["python", "-m", "protssl.pretrain", *argv])
    assert card["recipe"]["preset"] == "protssl-tiny"
    held_out = list(load_corpus(sample_fasta, val_fraction=0.02).val)
    untrained = ProteinEncoder(PRESETS["protssl-tiny"])
    init_weights(untrained)
    trained_loss = masked_lm_loss(loaded.encoder, held_out, window_residues=126)
    assert trained_loss < masked_lm_loss(untrained, held_out, window_residues=126) - 0.1
    assert main(["--resume", "--run-dir", str(tmp_path / "missing")]) == 2
    assert main(["--resume", "--run-dir", str(run), "--lr", "0.1"]) == 2
    assert main([*argv, "--stop-after", "0"]) == 2


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(
    tmp_path: Path, sample_fasta: Path
) -> None:
    whole = pretrain(tiny_config(sample_fasta, tmp_path / "whole"), progress=False)
    first = pretrain(tiny_config(sample_fasta, tmp_path / "split"), stop_after=5, progress=False)
    assert first.interrupted and first.step == 5 and first.model_dir is None
    exported = export_checkpoint(tmp_path / "split", tmp_path / "at5", extra={"note": "x"})
    card = load_model(exported).card.training or {}
    assert card["steps"] == 5 and card["scheduled_steps"] == 12 and card["note"] == "x"
    assert card["tokens_seen"] == first.tokens_seen and card["val_perplexity"] > 1
    second = pretrain(tiny_config(sample_fasta, tmp_path / "split"), resume=True, progress=False)
    assert not second.interrupted and second.step == 12
    assert first.losses + second.losses == whole.losses
    assert second.tokens_seen == whole.tokens_seen
    assert second.val_loss == whole.val_loss
    for key, value in whole.encoder.state_dict().items():
        assert torch.equal(value, second.encoder.state_dict()[key]), key
    assert [r["loss"] for r in _rows(tmp_path / "whole")] == [
        r["loss"] for r in _rows(tmp_path / "split")
    ]


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


def test_sigterm_checkpoints_and_stops(tmp_path: Path, sample_fasta: Path) -> None:
    config = tiny_config(sample_fasta, tmp_path, steps=100_000, checkpoint_every=100_000)
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        result = pretrain(config, progress=False)
    finally:
        timer.cancel()
    assert result.interrupted and 0 < result.step < config.steps
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == result.step
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def _ddp_worker(rank: int, port: int, corpus: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        config = tiny_config(Path(corpus), Path(out) / "run", steps=4, val_every=4)
        result = pretrain(config, progress=False)
        torch.save(result.encoder.state_dict(), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_two_process_ddp_ends_with_identical_weights(tmp_path: Path, sample_fasta: Path) -> None:
    mp.spawn(_ddp_worker, args=(_free_port(), str(sample_fasta), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    initial = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    assert initial["step"] == 4
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key
    moved = [k for k, v in ranks[0].items() if not torch.equal(v, torch.zeros_like(v))]
    assert moved
    assert (tmp_path / "run" / "model" / "model.json").is_file()
    # both ranks contributed: twice the tokens of one rank's micro-batches per step
    card = json.loads((tmp_path / "run" / "model" / "model.json").read_text())["training"]
    assert card["tokens_seen"] > 4 * 2048 * 0.7
