"""CPU detection and the fast paths' probes: every fast path falls back when its probe fails.

`ONEDNN_MAX_CPU_ISA=AVX2` (with `ATEN_CPU_CAPABILITY=avx2`, and `FBGEMM_ENABLE_INSTRUCTIONS=AVX2`
for the int8 GEMM) makes torch on any x86 CPU behave as on one without bf16: oneDNN refuses bf16
primitives there, as on the AVX2-only machines that crashed in `_linear_pointwise`. The subprocess
tests run the product under it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from protssl import hardware, kernels
from protssl.alphabet import ALPHABET
from protssl.checkpoint import load_model
from protssl.model import PRESETS, ProteinEncoder, init_weights, resolve_dtype
from protssl.output import read_vectors

AVX2_ONLY = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
    "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
}
CLI = (sys.executable, "-c", "from protssl.cli import main; raise SystemExit(main())")


@pytest.fixture
def fresh_probes() -> Iterator[None]:
    """Probes re-run inside the test and again after it, so a patched op is never remembered."""
    kernels.fused_linear_works.cache_clear()
    kernels.int8_linear_works.cache_clear()
    yield
    kernels.fused_linear_works.cache_clear()
    kernels.int8_linear_works.cache_clear()


def _tokens() -> torch.Tensor:
    converter = ALPHABET.get_batch_converter()
    _, _, tokens = converter([("a", "MKTAYIAKQRQISFVKSHFSRQ"), ("b", "GSHMLEDPVDAFQ")])
    return tokens


def _encoder(dtype: torch.dtype) -> ProteinEncoder:
    encoder = ProteinEncoder(PRESETS["protssl-tiny"])
    init_weights(encoder, seed=3)
    return encoder.to(dtype).eval()


def _inference_and_training_paths(encoder: ProteinEncoder) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = _tokens()
    with torch.no_grad():
        inference = encoder(tokens, (-1,)).representations[2]
    training = encoder(tokens, (-1,)).representations[2].detach()
    keep = ~tokens.eq(ALPHABET.padding_idx)
    return inference[keep].float(), training[keep].float()


def test_a_fused_op_that_fails_for_bf16_only_keeps_float32_fast(monkeypatch, fresh_probes) -> None:
    """The probe is per dtype: the op failing in bf16 (as on AVX2-only CPUs) leaves float32 fused."""
    real = kernels.fused_linear_op
    calls: list[torch.dtype] = []

    def like_avx2(x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        calls.append(x.dtype)
        if x.dtype == torch.bfloat16:
            raise RuntimeError("could not create a primitive descriptor for the inner product")
        return real(x, *args, **kwargs)

    monkeypatch.setattr(kernels, "fused_linear_op", like_avx2)
    assert kernels.fused_linear_works(torch.float32)  # x86 torch builds have the op
    assert not kernels.fused_linear_works(torch.bfloat16)
    assert kernels.fast_paths(torch.bfloat16)["fused_linear"] is False
    calls.clear()
    inference, training = _inference_and_training_paths(_encoder(torch.bfloat16))
    assert calls == []  # bf16 forwards never reach the op once its probe failed
    cos = torch.nn.functional.cosine_similarity(inference, training, dim=-1)
    assert cos.min().item() >= 0.999
    _inference_and_training_paths(_encoder(torch.float32))
    assert set(calls) == {torch.float32}  # float32 still takes the fused path


def test_a_fused_op_that_fails_everywhere_leaves_the_public_path(monkeypatch, fresh_probes) -> None:
    def broken(*args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError("no such kernel on this CPU")

    monkeypatch.setattr(kernels, "fused_linear_op", broken)
    for dtype in (torch.float32, torch.bfloat16):
        assert not kernels.fused_linear_works(dtype)
        inference, training = _inference_and_training_paths(_encoder(dtype))
        tolerance = 1e-6 if dtype == torch.float32 else 0.0
        assert (inference - training).abs().max().item() <= tolerance  # same kernels both ways


def test_a_fused_op_that_disagrees_is_not_used(monkeypatch, fresh_probes) -> None:
    real = kernels.fused_linear_op
    monkeypatch.setattr(kernels, "fused_linear_op", lambda *a, **k: real(*a, **k) * 1.01)
    assert not kernels.fused_linear_works(torch.float32)


def _linear_and_input() -> tuple[torch.nn.Linear, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    layer = torch.nn.Linear(64, 96)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(96, 64, generator=generator) * 0.05)
        layer.bias.copy_(torch.randn(96, generator=generator) * 0.1)
    return layer, torch.randn(40, 64, generator=generator)


def test_an_int8_linear_is_float32_to_int8_precision_through_the_int8_op(
    monkeypatch, fresh_probes
) -> None:
    real = kernels.int8_linear_op
    calls: list[torch.Size] = []
    monkeypatch.setattr(kernels, "int8_linear_op", lambda x, p: calls.append(x.shape) or real(x, p))
    layer, x = _linear_and_input()
    assert kernels.int8_linear_works()  # x86 and ARM torch builds carry a quantized engine
    quantized = kernels.Int8Linear(layer)
    calls.clear()
    with torch.no_grad():
        got = kernels.linear(x, quantized, gelu=True)
        want = kernels.linear(x, layer, gelu=True)
    assert calls == [x.shape]
    assert quantized.weight.shape == layer.weight.shape and quantized.bias is not None
    assert (
        0 < (quantized.weight - layer.weight).abs().max() <= layer.weight.abs().max() / 254 + 1e-7
    )
    cos = torch.nn.functional.cosine_similarity(got, want, dim=-1)
    assert cos.min().item() >= 0.999 and not torch.equal(got, want)  # close, and really int8


def test_an_int8_op_that_fails_leaves_float32_kernels_on_the_int8_weights(
    monkeypatch, fresh_probes
) -> None:
    def broken(*args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError("no quantized engine on this CPU")

    monkeypatch.setattr(kernels, "int8_linear_op", broken)
    layer, x = _linear_and_input()
    assert not kernels.int8_linear_works()
    quantized = kernels.Int8Linear(layer)
    assert quantized.packed is None
    with torch.no_grad():
        got = kernels.linear(x, quantized)
    want = torch.nn.functional.linear(x, quantized.weight, quantized.bias)
    assert torch.allclose(got, want, atol=1e-5)


def test_int8_without_the_op_loads_with_one_warning_and_float32_vectors_to_int8_precision(
    monkeypatch, fresh_probes, tiny_model_dir: Path, caplog
) -> None:
    def broken(*args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError("no quantized engine on this CPU")

    monkeypatch.setattr(kernels, "int8_linear_op", broken)
    with caplog.at_level("WARNING", logger="protssl"):
        model = load_model(tiny_model_dir, dtype="int8")
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "does not run on this CPU" in warning and model.dtype_name == "int8"
    full = load_model(tiny_model_dir, dtype="float32")
    with torch.no_grad():
        got, want = (m.encoder(_tokens(), (-1,)).representations[2] for m in (model, full))
    cos = torch.nn.functional.cosine_similarity(got.flatten(1), want.flatten(1), dim=-1)
    assert cos.min().item() >= 0.999


def test_an_int8_op_that_disagrees_is_not_used(monkeypatch, fresh_probes) -> None:
    real = kernels.int8_linear_op
    monkeypatch.setattr(kernels, "int8_linear_op", lambda x, p: real(x, p) + 1.0)
    assert not kernels.int8_linear_works()


@pytest.mark.bf16_cpu
def test_a_cpu_with_native_bf16_runs_bf16_fused_and_picks_it() -> None:
    assert hardware.cpu_info().native_bf16
    assert kernels.fused_linear_works(torch.bfloat16)
    assert resolve_dtype("auto", torch.device("cpu")) is torch.bfloat16


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_info_on_a_cpu_without_bf16() -> None:
    result = _run(["info", "--json"], AVX2_ONLY)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["torch_capability"] == "AVX2" and info["onednn_bf16"] is False
    assert info["native_bf16"] is False and info["auto_dtype"] == "float32"
    assert info["fast_paths"]["bfloat16"] == {"fused_linear": False, "native_bf16": False}
    assert info["fast_paths"]["float32"]["fused_linear"] is True
    assert info["fast_paths"]["int8"] == {"int8_linear": True}


@pytest.mark.slow
def test_bf16_and_int8_embed_on_a_cpu_without_bf16_are_correct(
    tiny_model_dir: Path, sample_fasta: Path, tmp_path: Path
) -> None:
    """Exit 0, no traceback, and the float32 vectors to bf16 (one warning line) or int8 precision."""
    fasta = tmp_path / "small.fasta"
    fasta.write_text("".join(">" + c for c in sample_fasta.read_text().split(">")[1:13]))
    outputs = {}
    for dtype in ("bfloat16", "int8", "float32"):
        out = tmp_path / f"{dtype}.h5"
        result = _run(
            ["embed", str(fasta), "-o", str(out), "--model", str(tiny_model_dir), "--dtype",
             dtype, "--no-cache", "--no-progress", "--overlap", "16"],
            AVX2_ONLY,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        outputs[dtype] = {name: vector for name, vector, _ in read_vectors(out)}
        assert {attrs["dtype"] for _, _, attrs in read_vectors(out)} == {dtype}
        if dtype == "bfloat16":
            warnings = [line for line in result.stderr.splitlines() if line.strip()]
            assert len(warnings) == 1 and "without native bf16" in warnings[0], result.stderr
        else:
            assert result.stderr.strip() == ""
    assert len(outputs["float32"]) == 12
    for dtype in ("bfloat16", "int8"):
        assert outputs[dtype].keys() == outputs["float32"].keys()
        for name, want in outputs["float32"].items():
            got = outputs[dtype][name]
            assert got @ want / np.linalg.norm(got) / np.linalg.norm(want) >= 0.999, (dtype, name)
