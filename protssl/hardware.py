"""What this machine is: the CPU's model and instruction sets, what torch and oneDNN dispatch to, native bf16.

Figures differ between CPUs (AVX2 only, AVX512-BF16, AMX); `protssl.info.describe()` reports these
fields in `protssl info` and every benchmark's JSON. Nothing here assumes bf16 hardware.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["CpuInfo", "cpu_has_bf16", "cpu_info"]

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
