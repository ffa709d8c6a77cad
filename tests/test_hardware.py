"""The machine's budget: a container's CPU limit (cgroup quota) and the devices a command may name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from protssl import hardware
from protssl.errors import InvalidInputError
from protssl.hardware import cpu_quota, fit_threads_to_cpu_budget, usable_cores, usable_device


def _tree(root: Path, files: dict[str, str]) -> Path:
    """A stand-in for `/`: /proc/self/cgroup and cgroup files as a Linux host has them."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_cgroup_v2_quota_inside_a_container(tmp_path: Path) -> None:
    """Docker --cpus=1.5 with a cgroup namespace: the process is at the root of its own cgroup."""
    root = _tree(
        tmp_path, {"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/cpu.max": "150000 100000\n"}
    )
    assert cpu_quota(root) == 1.5


def test_cgroup_v2_the_least_limit_of_the_cgroup_and_its_ancestors(tmp_path: Path) -> None:
    """A Kubernetes pod's limit sits on the pod's cgroup, the container's own says max."""
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "0::/kubepods/pod1/ctr\n",
            "sys/fs/cgroup/cpu.max": "max 100000\n",
            "sys/fs/cgroup/kubepods/pod1/cpu.max": "400000 100000\n",
            "sys/fs/cgroup/kubepods/pod1/ctr/cpu.max": "max 100000\n",
        },
    )
    assert cpu_quota(root) == 4.0


def test_cgroup_v1_quota_where_the_named_path_is_not_mounted(tmp_path: Path) -> None:
    """Docker on cgroup v1 without a namespace: /proc names the host's path, and the container's
    own cgroup is what is mounted at cpu,cpuacct."""
    root = _tree(
        tmp_path,
        {
            "proc/self/cgroup": "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "250000\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cpu_quota(root) == 2.5


@pytest.mark.parametrize(
    "files",
    [
        {"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/cpu.max": "max 100000\n"},  # no limit
        {"proc/self/cgroup": "1:cpu:/\n", "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
         "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n"},  # v1, no limit
        {"proc/self/cgroup": "0::/\n"},  # no cpu controller files (hybrid hierarchy)
        {"proc/self/cgroup": "garbage\n0::/\n", "sys/fs/cgroup/cpu.max": "lots\n"},  # unreadable
        {"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/cpu.max": "100000 0\n"},  # no period
        {},  # no /proc (another OS)
    ],
)  # fmt: skip
def test_no_quota_where_none_is_set_or_none_can_be_read(
    tmp_path: Path, files: dict[str, str]
) -> None:
    assert cpu_quota(_tree(tmp_path, files)) is None


def test_threads_are_lowered_to_the_quota_rounded_down_and_never_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    monkeypatch.setattr(hardware, "_affinity_cores", lambda: 8)
    try:
        torch.set_num_threads(8)
        monkeypatch.setattr(hardware, "cpu_quota", lambda: 2.7)
        assert usable_cores() == 2  # 3 threads on 2.7 CPUs' worth: all of them throttled
        assert fit_threads_to_cpu_budget() == 2 and torch.get_num_threads() == 2
        assert fit_threads_to_cpu_budget() is None  # fitted already
        monkeypatch.setattr(hardware, "cpu_quota", lambda: 0.5)
        assert usable_cores() == 1
        monkeypatch.setattr(hardware, "cpu_quota", lambda: 64.0)
        assert usable_cores() == 8  # the CPUs it may run on bound it too
        torch.set_num_threads(1)
        assert fit_threads_to_cpu_budget() is None and torch.get_num_threads() == 1
        torch.set_num_threads(8)
        monkeypatch.setattr(hardware, "cpu_quota", lambda: 2.0)
        monkeypatch.setenv("OMP_NUM_THREADS", "8")  # the user's own setting is kept
        assert fit_threads_to_cpu_budget() is None and torch.get_num_threads() == 8
    finally:
        torch.set_num_threads(before)


CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")


@pytest.fixture
def real_cgroup() -> Iterator[Path]:
    """A real cgroup v1 CPU group with a 1.5-CPU quota, where this machine lets us make one (root,
    a writable v1 cpu hierarchy: this project's machines are so); removed after."""
    if not os.access(CGROUP_V1_CPU, os.W_OK) or not (CGROUP_V1_CPU / "cgroup.procs").exists():
        pytest.skip("no writable cgroup v1 cpu hierarchy here")
    group = CGROUP_V1_CPU / f"protssl-test-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text("150000")
    except OSError as exc:
        pytest.skip(f"cannot make a cgroup here ({exc.strerror})")
    try:
        yield group
    finally:
        group.rmdir()  # its processes have exited


@pytest.mark.skipif(sys.platform != "linux", reason="cgroups are Linux's")
def test_a_command_in_a_real_cgroup_with_a_quota_runs_that_many_threads(
    real_cgroup: Path,
) -> None:
    """`protssl info` (which fits its threads as the computing commands do) inside a group limited
    to 1.5 CPUs: one torch thread, whatever the machine's core count; OMP_NUM_THREADS still wins."""
    script = (
        f"echo $$ > {real_cgroup / 'cgroup.procs'} && exec {sys.executable} -m protssl info --json"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    done = subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, env=env, timeout=120, check=True
    )
    info = json.loads(done.stdout)
    assert info["cpu_quota"] == 1.5 and info["threads"] == 1
    kept = subprocess.run(
        ["sh", "-c", script],
        capture_output=True,
        text=True,
        env={**env, "OMP_NUM_THREADS": "2"},
        timeout=120,
        check=True,
    )
    assert json.loads(kept.stdout)["threads"] == min(2, len(os.sched_getaffinity(0)))


@pytest.mark.parametrize(
    ("spec", "said"),
    [
        ("gpu", "unknown device 'gpu': give cpu, cuda or cuda:N"),
        ("cuda", "device 'cuda': "),
        ("cuda:7", "device 'cuda:7': "),
        ("mps", "device 'mps': not available here"),
    ],
)
def test_a_device_this_machine_lacks_is_one_clear_error(spec: str, said: str) -> None:
    """What a command copied from a GPU node does on a laptop: one line, not torch's traceback."""
    if spec.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that GPU")
    with pytest.raises(InvalidInputError) as refused:
        usable_device(spec)
    assert str(refused.value).startswith(said)
    assert usable_device("cpu") == torch.device("cpu")


def test_embed_and_pretrain_refuse_a_missing_gpu_in_one_line(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    fasta = tmp_path / "one.fasta"
    fasta.write_text(">a\nMKTAYIAKQRQISFVKSHFSRQ\n")
    for argv in (
        ["embed", str(fasta), "-o", str(tmp_path / "x.npz"), "--device", "cuda", "--no-cache"],
        ["pretrain", str(fasta), "--run-dir", str(tmp_path / "run"), "--steps", "1",
         "--device", "cuda"],
    ):  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "protssl", *argv], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert "device 'cuda': " in line and line.endswith("; use cpu")
