"""What this machine can run: the CPU's instruction sets, native bf16, and which fast kernels pass.

Figures differ between CPUs (AVX2 only, AVX512-BF16, AMX), so `protssl info` and every benchmark's
JSON report the same `describe()` fields. Nothing here assumes bf16 hardware: a fast path is used
only after its probe passed for the exact (device, dtype) it is about to run.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = [
    "CpuInfo",
    "cpu_has_bf16",
    "cpu_info",
    "describe",
    "fast_paths",
    "fused_linear_op",
    "fused_linear_works",
]

# /proc/cpuinfo flag -> the name `protssl info` gives it, in the order they are listed.
_ISA_FLAGS: dict[str, str] = {
    "avx2": "avx2",
    "fma": "fma",
    "avx512f": "avx512",
    "avx512_bf16": "avx512-bf16",
    "amx_bf16": "amx",
}


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as torch will use it."""

    model: str
    """Model name from /proc/cpuinfo (or the platform's processor string)."""
    isa: tuple[str, ...]
    """Vector extensions present: avx2, fma, avx512, avx512-bf16, amx."""
    torch_capability: str
    """What ATen's own kernels dispatch to (DEFAULT, AVX2, AVX512; ATEN_CPU_CAPABILITY caps it)."""
    onednn_bf16: bool
    """oneDNN runs bf16 primitives here (False when the ISA lacks it or ONEDNN_MAX_CPU_ISA caps it)."""
    cores: int
    """Logical CPUs this process may run on."""
    threads: int
    """torch's intra-op threads."""

    @property
    def native_bf16(self) -> bool:
        """bf16 matmuls in hardware (AVX512-BF16 or AMX) that oneDNN is allowed to use."""
        return self.onednn_bf16 and ("avx512-bf16" in self.isa or "amx" in self.isa)


def _cpu_flags_and_model() -> tuple[set[str], str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set(), platform.processor() or platform.machine()
    flags: set[str] = set()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags" and not flags:
            flags = set(value.split())
        elif key == "model name" and not model:
            model = value.strip()
    return flags, model or platform.processor() or platform.machine()


def _onednn_bf16() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@functools.cache
def _cpu_static() -> tuple[str, tuple[str, ...], str, bool]:
    flags, model = _cpu_flags_and_model()
    isa = tuple(name for flag, name in _ISA_FLAGS.items() if flag in flags)
    return model, isa, torch.backends.cpu.get_cpu_capability(), _onednn_bf16()


def cpu_info() -> CpuInfo:
    """This process's CPU: model, vector extensions, what torch and oneDNN dispatch to, threads."""
    model, isa, capability, onednn_bf16 = _cpu_static()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return CpuInfo(
        model=model,
        isa=isa,
        torch_capability=capability,
        onednn_bf16=onednn_bf16,
        cores=cores or 1,
        threads=torch.get_num_threads(),
    )


def cpu_has_bf16() -> bool:
    """True when this CPU has native bf16 matmul (AVX512-BF16 or AMX) and oneDNN may use it."""
    return cpu_info().native_bf16


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


def describe() -> dict[str, object]:
    """Versions, CPU and fast paths: what tells figures from different machines apart."""
    from protssl import __version__
    from protssl.model import resolve_dtype

    cpu = cpu_info()
    auto = resolve_dtype("auto", torch.device("cpu"))
    return {
        "protssl": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu.model,
        "isa": " ".join(cpu.isa) or "none",
        **{k: v for k, v in asdict(cpu).items() if k not in ("model", "isa")},
        "native_bf16": cpu.native_bf16,
        "auto_dtype": str(auto).removeprefix("torch."),
        "fast_paths": {
            str(dtype).removeprefix("torch."): fast_paths(dtype)
            for dtype in (torch.float32, torch.bfloat16)
        },
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
