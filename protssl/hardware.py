"""What this machine is: the CPU's model and instruction sets, what torch and oneDNN dispatch to, native bf16.

Figures differ between CPUs (AVX2 only, AVX512-BF16, AMX); `protssl.info.describe()` reports these
fields in `protssl info` and every benchmark's JSON. Nothing here assumes bf16 hardware. Also what
this process may use of it: the threads a container's CPU limit allows (`usable_cores`), and
whether a device it is asked for exists here (`usable_device`).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from protssl.errors import InvalidInputError

__all__ = [
    "CpuInfo",
    "cpu_has_bf16",
    "cpu_info",
    "cpu_quota",
    "fit_threads_to_cpu_budget",
    "usable_cores",
    "usable_device",
]

log = logging.getLogger(__name__)

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
    cpu_quota: float | None
    """CPUs' worth of time its cgroup may use (Docker --cpus, a Kubernetes limit); None: no limit."""
    threads: int
    """torch's intra-op threads."""

    @property
    def native_bf16(self) -> bool:
        """bf16 matmuls in hardware (AVX512-BF16 or AMX) that oneDNN is allowed to use."""
        return _native_bf16(self.isa, self.onednn_bf16)


def _native_bf16(isa: tuple[str, ...], onednn_bf16: bool) -> bool:
    return onednn_bf16 and ("avx512-bf16" in isa or "amx" in isa)


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
    return CpuInfo(
        model=model,
        isa=isa,
        torch_capability=capability,
        onednn_bf16=onednn_bf16,
        cores=_affinity_cores(),
        cpu_quota=cpu_quota(),
        threads=torch.get_num_threads(),
    )


def cpu_has_bf16() -> bool:
    """True when this CPU has native bf16 matmul (AVX512-BF16 or AMX) and oneDNN may use it (from
    the CPU alone: no cgroup or thread reading, as `cpu_info` does)."""
    _, isa, _, onednn_bf16 = _cpu_static()
    return _native_bf16(isa, onednn_bf16)


def _affinity_cores() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


def cpu_quota(root: Path = Path("/")) -> float | None:
    """CPUs' worth of time per period this process's cgroup (or an ancestor) may use, the least of
    them: what Docker's `--cpus` and a Kubernetes CPU limit set (cgroup v2 `cpu.max`, v1
    `cpu.cfs_quota_us`). None where none is set or none can be read. `root` stands for `/`."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    base = root / "sys/fs/cgroup"
    limits: list[float] = []
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":
            limits += _limits(base, path, _cpu_max)
        elif "cpu" in controllers.split(","):
            mount = base / controllers if (base / controllers).is_dir() else base / "cpu"
            limits += _limits(mount, path, _cfs_quota)
    return min(limits, default=None)


def _limits(mount: Path, path: str, read: Callable[[Path], float | None]) -> list[float]:
    """The limits `read` finds in `path`'s cgroup folder and its ancestors under `mount`. Inside a
    container the path /proc names may not exist there (the container's own cgroup is mounted as
    the root): the walk up then ends at the mount, which is that cgroup."""
    parts = [p for p in path.split("/") if p]
    found = []
    for depth in range(len(parts), -1, -1):
        folder = mount.joinpath(*parts[:depth])
        limit = read(folder)
        if limit is not None:
            found.append(limit)
    return found


def _cpu_max(folder: Path) -> float | None:
    """cgroup v2: `cpu.max` holds `QUOTA PERIOD` (microseconds), or `max PERIOD` for no limit."""
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _cfs_quota(folder: Path) -> float | None:
    """cgroup v1: `cpu.cfs_quota_us` (-1 for no limit) over `cpu.cfs_period_us`."""
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def usable_cores() -> int:
    """The threads this process can keep busy: the CPUs it may run on, fewer where a CPU quota
    allows less time (rounded down: one thread more than the quota gets them all throttled)."""
    return _cores_within(cpu_quota())


def _cores_within(quota: float | None) -> int:
    cores = _affinity_cores()
    return cores if quota is None else max(1, min(cores, math.floor(quota)))


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def fit_threads_to_cpu_budget() -> int | None:
    """Lower torch's threads to `usable_cores()` where a CPU quota allows fewer than it would start
    (torch counts the CPUs it may run on, not the time it may use: under a quota the extra
    threads wait on each other's throttling). A thread count set in the environment is kept.
    Returns the new count, or None where nothing changed. For entry points: it sets the process's
    torch threads."""
    if any(os.environ.get(name) for name in _THREAD_VARIABLES):
        return None
    quota = cpu_quota()
    usable, current = _cores_within(quota), torch.get_num_threads()
    if current <= usable:
        return None
    torch.set_num_threads(usable)
    log.info(
        "torch threads %d -> %d: this process's cgroup may use %.2f CPUs (a container's CPU limit)",
        current,
        usable,
        quota or 0.0,
    )
    return usable


def usable_device(spec: str | torch.device) -> torch.device:
    """`spec` as a torch device this process can run on. A name torch does not know, or a device
    this machine or this torch build lacks (`cuda` on a CPU build, `cuda:3` on a 2-GPU node), is
    one InvalidInputError saying what there is, not torch's error from deep inside a load."""
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise InvalidInputError(f"unknown device {str(spec)!r}: give cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                "this torch is a CPU build"
                if torch.version.cuda is None
                else "no CUDA GPU is visible here (driver, CUDA_VISIBLE_DEVICES?)"
            )
            raise InvalidInputError(f"device {str(spec)!r}: {why}; use cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise InvalidInputError(
                f"device {str(spec)!r}: this machine has {count} CUDA GPU(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
        return device
    backend = getattr(torch, device.type, None)
    if not getattr(backend, "is_available", lambda: False)():
        raise InvalidInputError(f"device {str(spec)!r}: not available here; use cpu or cuda")
    return device
