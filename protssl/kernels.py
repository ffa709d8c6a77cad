"""CPU fast paths under the encoder: the fused oneDNN linear (probed per dtype), int8 linears, the
matmul row grid, and attention's dtype rule in training.

Each fast path rests on an internal or CPU-specific kernel, so it is used only after its probe passed
for the exact (device, dtype) it is about to run; otherwise torch's public ops run. `model.py` calls
`linear`, `attention`, `matmul_rows` and `pad_rows` and knows nothing else of this.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from protssl.hardware import cpu_has_bf16

__all__ = [
    "Int8Linear",
    "attention",
    "fast_paths",
    "fused_linear_op",
    "fused_linear_works",
    "int8_linear_works",
    "linear",
    "linear_weights",
    "matmul_rows",
    "pad_rows",
]


def fused_linear_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, gelu: bool
) -> torch.Tensor:
    """oneDNN's linear with bias and (erf) GELU in its epilogue: the op torch.compile emits on CPU.

    Call it only where `fused_linear_works(x.dtype)` holds.
    """
    return torch.ops.mkldnn._linear_pointwise(
        x, weight, bias, "gelu" if gelu else "none", [], "none" if gelu else ""
    )


# The probes' tolerances: float32 must agree to rounding, bf16 to its 8-bit mantissa.
_PROBE_ATOL = {torch.float32: 1e-5, torch.bfloat16: 5e-2}


@functools.cache
def fused_linear_works(dtype: torch.dtype) -> bool:
    """Whether the fused oneDNN linear runs on the CPU in `dtype` and agrees with F.linear + F.gelu.

    It is an internal op whose kernels depend on the CPU (bf16 needs AVX512 or AMX), so it is tried
    once per process and dtype on a tiny input; any failure or mismatch keeps that dtype's linears on
    torch's public path.
    """
    if dtype not in _PROBE_ATOL or not torch.backends.mkldnn.is_available():
        return False
    generator = torch.Generator().manual_seed(0)
    x, w, b = (
        torch.randn(shape, generator=generator).to(dtype) for shape in ((5, 8), (4, 8), (4,))
    )
    try:
        with torch.no_grad():
            fused = fused_linear_op(x, w, b, gelu=True)
            plain = fused_linear_op(x, w, b, gelu=False)
    except (AttributeError, RuntimeError, TypeError, NotImplementedError):
        return False
    expected = F.linear(x.float(), w.float(), b.float())
    atol = _PROBE_ATOL[dtype]
    return bool(
        plain.dtype == dtype
        and torch.allclose(plain.float(), expected, atol=atol, rtol=atol)
        and torch.allclose(fused.float(), F.gelu(expected), atol=atol, rtol=atol)
    )


def fast_paths(dtype: torch.dtype) -> dict[str, bool]:
    """Which CPU fast paths inference in `dtype` takes on this machine."""
    paths = {"fused_linear": fused_linear_works(dtype)}
    if dtype == torch.bfloat16:
        paths["native_bf16"] = cpu_has_bf16()
    return paths


def _int8_reduce_range() -> bool:
    """x86 engines keep activations to 7 bits: AVX2's int8 dot products saturate in int16 otherwise."""
    return torch.backends.quantized.engine in ("x86", "fbgemm")


def _int8_weights(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes per output channel and their scales: weight ~ codes x scale."""
    weight = weight.detach().float()
    scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127  # (out,)
    codes = torch.round(weight / scale[:, None]).clamp(-127, 127)
    return codes.to(torch.int8), scale


def _int8_pack(codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> object:
    """The quantized engine's packed weight for `torch.ops.quantized.linear_dynamic`."""
    zero_points = torch.zeros(codes.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        # torch 2.13 marks quantized tensors deprecated; the packed weight is all that is kept
        warnings.simplefilter("ignore", UserWarning)
        weight = torch._make_per_channel_quantized_tensor(codes, scale.double(), zero_points, 0)
        return torch.ops.quantized.linear_prepack(weight, bias)


def int8_linear_op(x: torch.Tensor, packed: object) -> torch.Tensor:
    """torch's dynamic int8 linear: `x` quantized per call, int8 GEMM, float32 out with the bias."""
    return torch.ops.quantized.linear_dynamic(x, packed, _int8_reduce_range())


@functools.cache
def int8_linear_works() -> bool:
    """Whether torch's int8 linear runs on this CPU and agrees with float32 to int8 precision.

    It rests on a quantized engine (fbgemm, oneDNN or QNNPACK) that a torch build may lack, through
    an API torch has marked deprecated: tried once per process on a tiny input; when it fails or
    disagrees, `Int8Linear` runs F.linear on its dequantized weights instead.
    """
    generator = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(shape, generator=generator) for shape in ((5, 16), (4, 16), (4,)))
    codes, scale = _int8_weights(w)
    try:
        with torch.no_grad():
            got = int8_linear_op(x, _int8_pack(codes, scale, b))
    except (AttributeError, RuntimeError, TypeError, NotImplementedError):
        return False
    expected = F.linear(x, codes.float() * scale[:, None], b)
    return bool(
        got.dtype == torch.float32
        and got.shape == expected.shape
        and torch.allclose(got, expected, atol=0.1 * float(expected.abs().max()), rtol=0)
    )


class Int8Linear(nn.Module):
    """A linear layer on int8 weights (one scale per output channel) for `--dtype int8` inference.

    Where `int8_linear_works()`, each call quantizes its input (one scale for the whole batch) and
    runs the int8 GEMM (1.4-2.1x a float32 matmul on AVX2); otherwise, or when a gradient is
    recorded, F.linear runs on the dequantized weights. Lossy either way: never what `auto` picks.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        codes, scale = _int8_weights(layer.weight)
        bias = None if layer.bias is None else layer.bias.detach().float().clone()
        self.register_buffer("weight", codes.float() * scale[:, None])
        self.register_buffer("bias", bias)
        self.packed = _int8_pack(codes, scale, bias) if int8_linear_works() else None

    def forward(self, x: torch.Tensor, *, gelu: bool = False) -> torch.Tensor:
        if self.packed is None or x.dtype != torch.float32 or torch.is_grad_enabled():
            return linear_weights(x, self.weight, self.bias, gelu=gelu)
        y = int8_linear_op(x, self.packed)
        return F.gelu(y) if gelu else y


def matmul_rows(rows: int, device: torch.device) -> int:
    """Rows to pad a matmul's input to: on CPU, `rows` rounded up onto a grid of 8 steps per power of 2.

    oneDNN builds a kernel for every new matmul shape (~5-10 ms each, more than a small forward) and
    keeps a bounded cache of them; token-budget batches would otherwise bring a new shape nearly every
    forward. The grid costs at most 12.5% more rows in the linears. Other devices: `rows`.
    """
    if device.type != "cpu":
        return rows
    step = max(8, 1 << max(0, rows.bit_length() - 4))
    return -(-rows // step) * step


def pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """(n, C) → (rows, C) with zero rows appended (x itself when n == rows)."""
    extra = rows - x.shape[0]
    return F.pad(x, (0, 0, 0, extra)) if extra > 0 else x


def linear(x: torch.Tensor, layer: nn.Linear | Int8Linear, *, gelu: bool = False) -> torch.Tensor:
    """`layer(x)`, then GELU if asked; one oneDNN call on CPU when no gradient is recorded (no autocast).

    Eager `F.linear` copies the bias into the output before the matmul and GELU is another pass over
    it; oneDNN adds both in the matmul's epilogue (erf GELU, as fair-esm), the way torch.compile's
    CPU backend does. An `Int8Linear` runs its own path.
    """
    if isinstance(layer, Int8Linear):
        return layer(x, gelu=gelu)
    return linear_weights(x, layer.weight, layer.bias, gelu=gelu)


def linear_weights(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, gelu: bool = False
) -> torch.Tensor:
    if (
        x.device.type == "cpu"
        and x.dtype == weight.dtype
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and fused_linear_works(x.dtype)
    ):
        return fused_linear_op(x, weight, bias, gelu=gelu)
    y = F.linear(x, weight, bias)
    return F.gelu(y) if gelu else y


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None
) -> torch.Tensor:
    """SDPA over (B, H, T, hd); in CPU autocast with a gradient to record, it runs in float32.

    torch's CPU flash-attention backward is slower in bf16 than in float32 (per block it converts
    the probabilities and their gradients to bf16 for small GEMMs); its forward is faster in bf16,
    so inference keeps bf16. Figures in the README's Pretraining section.
    """
    if (
        q.device.type == "cpu"
        and q.requires_grad
        and torch.is_grad_enabled()
        and torch.is_autocast_enabled("cpu")
    ):
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), attn_mask=attn_mask
            )
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
