"""`describe()`: the machine fields `protssl info` prints and every benchmark's JSON carries."""

from __future__ import annotations

import torch

from protssl import hardware, info, kernels


def test_describe_agrees_with_itself() -> None:
    report = info.describe()
    cpu = hardware.cpu_info()
    assert report["torch"] == torch.__version__ and report["cpu"] == cpu.model
    assert set(str(report["isa"]).split()) <= {
        "avx2",
        "fma",
        "avx512",
        "avx512-bf16",
        "amx",
        "none",
    }
    assert report["native_bf16"] is cpu.native_bf16
    assert report["auto_dtype"] == ("bfloat16" if cpu.native_bf16 else "float32")
    paths = report["fast_paths"]
    assert isinstance(paths, dict)
    assert paths["float32"] == {"fused_linear": kernels.fused_linear_works(torch.float32)}
    assert paths["bfloat16"]["native_bf16"] is cpu.native_bf16
    assert int(report["threads"]) >= 1 and int(report["cores"]) >= 1
