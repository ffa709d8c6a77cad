"""What tells figures from different machines apart: versions, CPU, the dtype `auto` picks, fast paths.

`protssl info` prints `describe()`, and every benchmark's JSON carries it under `machine`.
"""

from __future__ import annotations

import platform
from dataclasses import asdict

import torch

from protssl.hardware import cpu_info
from protssl.kernels import fast_paths, int8_linear_works
from protssl.model import resolve_dtype

__all__ = ["describe"]


def describe() -> dict[str, object]:
    """Versions, CPU and fast paths: what tells figures from different machines apart."""
    from protssl import __version__

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
        }
        | {"int8": {"int8_linear": int8_linear_works()}},
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
