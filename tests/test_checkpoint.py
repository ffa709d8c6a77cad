from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from protssl.checkpoint import (
    export_fair_esm,
    file_sha256,
    import_fair_esm,
    load_model,
    refused_global,
    save_model,
    torch_load_reason,
    update_card_training,
)
from protssl.cli import main
from protssl.errors import (
    CheckpointError,
    InvalidInputError,
    ModelNotFoundError,
    UntrustedCheckpointError,
)
from protssl.kernels import Int8Linear


def test_saved_model_loads_without_pickle_and_matches(tiny_model_dir: Path) -> None:
    card = json.loads((tiny_model_dir / "model.json").read_text())
    assert card["weights"]["sha256"] == file_sha256(tiny_model_dir / "model.safetensors")
    assert card["architecture"]["num_layers"] == 2
    loaded = load_model(tiny_model_dir, dtype="float32")
    again = load_model(tiny_model_dir / "model.json", dtype="float32")
    assert loaded.sha256 == card["weights"]["sha256"] == again.sha256
    for a, b in zip(
        loaded.encoder.state_dict().values(), again.encoder.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_int8_swaps_the_blocks_linears_and_keeps_the_rest_float32(tiny_model_dir: Path) -> None:
    full = load_model(tiny_model_dir, dtype="float32")
    int8 = load_model(tiny_model_dir, dtype="int8")
    assert (int8.dtype, int8.dtype_name, full.dtype_name) == (torch.float32, "int8", "float32")
    assert int8.sha256 == full.sha256  # the same weights file; the store keys on dtype too
    swapped = [m for m in int8.encoder.modules() if isinstance(m, Int8Linear)]
    assert len(swapped) == 4 * int8.encoder.config.num_layers
    assert type(int8.encoder.lm_head.dense) is torch.nn.Linear
    assert int8.encoder.state_dict().keys() == full.encoder.state_dict().keys()
    with pytest.raises(InvalidInputError, match="int8 runs on the CPU only"):
        load_model(tiny_model_dir, dtype="int8", device="cuda")


def test_tampered_weights_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "model.json").write_text((tiny_model_dir / "model.json").read_text())
    data = bytearray((tiny_model_dir / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_model(copy)


def test_fair_esm_pickle_needs_trust_or_allowed_hash(tiny_model_dir: Path, tmp_path: Path) -> None:
    encoder = load_model(tiny_model_dir, dtype="float32").encoder
    pt = tmp_path / "esm2_t2_tiny.pt"
    export_fair_esm(encoder, pt)
    with pytest.raises(UntrustedCheckpointError, match="--trust-pickle"):
        import_fair_esm(pt)
    imported, card = import_fair_esm(pt, allowed_sha256={file_sha256(pt)})
    assert card.provenance["file_sha256"] == file_sha256(pt)
    trusted = load_model(pt, trust_pickle=True, dtype="float32")
    x = torch.tensor([[0, 5, 6, 7, 2]])
    assert torch.allclose(
        trusted.encoder(x, (2,)).representations[2],
        encoder(x, (2,)).representations[2],
        atol=1e-6,
    )
    assert imported.config.num_layers == 2


def test_a_broken_fair_esm_checkpoint_is_refused_in_one_line(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A .pt missing a tensor, with weights unlike its config, or no checkpoint at all raised a
    KeyError, RuntimeError, ValueError or IndexError traceback from `protssl import-esm`."""
    encoder = load_model(tiny_model_dir, dtype="float32").encoder
    good = tmp_path / "good.pt"
    export_fair_esm(encoder, good)

    def broken(name: str, change) -> Path:
        copy = torch.load(good, weights_only=False)
        change(copy)
        path = tmp_path / f"{name}.pt"
        torch.save(copy, path)
        return path

    cases = {
        broken(
            "no-fc1", lambda d: d["model"].pop(next(k for k in d["model"] if ".fc1.weight" in k))
        ): "lacks layers.0.fc1.weight",
        broken(
            "no-embeddings",
            lambda d: d["model"].pop(next(k for k in d["model"] if "embed_tokens" in k)),
        ): "lacks embed_tokens.weight",
        broken(
            "wider", lambda d: setattr(d["cfg"]["model"], "encoder_embed_dim", 128)
        ): "do not fit the ESM-2 its config describes",
        broken(
            "heads", lambda d: setattr(d["cfg"]["model"], "encoder_attention_heads", 5)
        ): "not an ESM-2 checkpoint",
    }
    zeros = tmp_path / "zeros.pt"
    torch.save(torch.zeros(3), zeros)
    cases[zeros] = "not an ESM-2 checkpoint"
    assert import_fair_esm(good, trust_pickle=True)[0].config.num_layers == 2  # the good one
    for path, said in cases.items():
        with pytest.raises(CheckpointError, match=f"^{path}: .*") as refused:
            import_fair_esm(path, trust_pickle=True)
        assert said in str(refused.value), (path, str(refused.value))


class _Pickled:
    """An object a weights_only load refuses: unpickling it calls a function."""

    def __reduce__(self) -> tuple[object, tuple[int]]:
        return (abs, (-1,))


def test_a_refused_torch_load_is_named_in_one_line_without_torch_advice(tmp_path: Path) -> None:
    """torch words a weights_only failure as a page of advice on `add_safe_globals`."""
    pickled, garbage = tmp_path / "pickled.pt", tmp_path / "garbage.pt"
    torch.save({"x": _Pickled()}, pickled)
    garbage.write_bytes(b"not a checkpoint")
    for path, name, reason in (
        (pickled, "abs", "it pickles abs"),
        (garbage, None, "Unsupported operand 110"),
    ):
        with pytest.raises(pickle.UnpicklingError) as caught:
            torch.load(path, weights_only=True)
        assert "weights_only" in str(caught.value)
        assert refused_global(caught.value) == name
        assert torch_load_reason(caught.value) == reason
    assert torch_load_reason(RuntimeError("zip archive\nmore")) == "zip archive"


def test_a_trusted_pickle_logs_one_line_and_no_torch_advice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "other.pt"
    torch.save({"x": _Pickled()}, path)
    with (
        caplog.at_level("INFO", logger="protssl.checkpoint"),
        pytest.raises(CheckpointError, match="not an ESM-2 checkpoint"),
    ):
        import_fair_esm(path, trust_pickle=True)
    assert caplog.messages == [
        f"{path}: loading without unpickling code failed (it pickles abs); unpickling it (trusted)"
    ]


def test_import_esm_into_a_folder_holding_a_model_is_refused_without_overwrite(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It wrote over whatever model was there (the shipped one, given as the folder by mistake)."""
    pt = tmp_path / "esm2_t2_tiny.pt"
    export_fair_esm(load_model(tiny_model_dir, dtype="float32").encoder, pt)
    there = tmp_path / "there"
    shutil.copytree(tiny_model_dir, there)
    before = {f.name: f.read_bytes() for f in there.iterdir()}
    argv = ["import-esm", str(pt), str(there), "--allow-sha256", file_sha256(pt)]
    assert main(argv) == 2
    assert "holds a model already: give another folder, or --overwrite" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in there.iterdir()} == before
    assert main([*argv, "--overwrite"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["sha256"] == file_sha256(
        there / "model.safetensors"
    )


def test_unknown_model_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="esm2-8m"):
        load_model(tmp_path / "nowhere")


def test_save_is_atomic_and_leaves_no_temp_files(tiny_model_dir: Path, tmp_path: Path) -> None:
    encoder = load_model(tiny_model_dir, dtype="float32").encoder
    card = save_model(encoder, tmp_path / "m", name="m", training={"steps": 3})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "model.safetensors"]
    assert card.training == {"steps": 3}


def test_update_card_training_merges_and_leaves_the_weights(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    encoder = load_model(tiny_model_dir, dtype="float32").encoder
    save_model(encoder, tmp_path / "m", name="m", training={"steps": 3, "recommended_layer": 1})
    before = file_sha256(tmp_path / "m" / "model.safetensors")
    update_card_training(tmp_path / "m", {"recommended_layer": 2, "recommended_pooling": "bos"})
    loaded = load_model(tmp_path / "m")
    card = loaded.card
    assert card.training == {"steps": 3, "recommended_layer": 2, "recommended_pooling": "bos"}
    assert (loaded.default_layer, loaded.recommended_pooling) == (2, "bos")
    update_card_training(tmp_path / "m", {"recommended_pooling": "per-residue"})
    assert load_model(tmp_path / "m").recommended_pooling is None  # not a pooled vector
    assert file_sha256(tmp_path / "m" / "model.safetensors") == before == card.sha256
    with pytest.raises(ModelNotFoundError):
        update_card_training(tmp_path, {"recommended_layer": 0})
