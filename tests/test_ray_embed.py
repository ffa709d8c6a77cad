"""The Ray engine on a local Ray (2 CPUs, started once): the local engine's vectors, shards, resume."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from other_process import another_process_holding
from ports import free_port

from protssl import ray_embed
from protssl.batching import WindowPolicy
from protssl.checkpoint import load_model
from protssl.cli import main
from protssl.embed_file import embed_fasta_file
from protssl.embedding import EmbedConfig
from protssl.errors import (
    WINDOW_ADVICE,
    FastaFormatError,
    InvalidInputError,
    SequenceTooLongError,
    UnavailableError,
)
from protssl.fasta import UTF8_BOM, FastaPolicy, read_fasta
from protssl.output import part_name, read_vectors
from protssl.ray_embed import (
    RayOptions,
    Shard,
    _grpc_forks_unsafely,
    embed_fasta_ray,
    plan_shards,
    read_shard,
)

ray = pytest.importorskip("ray")

SHARD_RESIDUES = 4000


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One in-process Ray for the module: starting it costs seconds on two cores."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture
def fasta(sample_fasta: Path, tmp_path: Path) -> Path:
    """36 real records, with a repeated id and an invalid record between shards."""
    chunks = sample_fasta.read_text().split(">")[1:37]
    path = tmp_path / "in.fasta"
    path.write_text("".join(">" + c for c in chunks) + ">bad\nMK-V\n>" + chunks[0])
    return path


def _config() -> EmbedConfig:
    return EmbedConfig(max_tokens=4096, read_ahead_residues=SHARD_RESIDUES)


def test_the_refuse_window_policy_names_the_record_before_any_actor_starts(fasta: Path) -> None:
    """A record past the model window stops the plan, named by file, id and number, as the local
    engine names it."""
    policy = FastaPolicy(on_invalid="skip", on_duplicate="skip")
    records = list(read_fasta(fasta, policy=policy))
    longest = max(range(len(records)), key=lambda i: len(records[i]))
    window = len(records[longest]) - 1
    first = next(i for i, r in enumerate(records) if len(r) > window)
    config = replace(_config(), window=WindowPolicy(mode="refuse"))
    with pytest.raises(SequenceTooLongError) as refused:
        plan_shards(fasta, config, policy, window_residues=window)
    assert str(refused.value).startswith(f"{fasta}: record {records[first].id!r} (#")
    assert f"more than the model's window of {window}; {WINDOW_ADVICE}" in str(refused.value)
    assert plan_shards(fasta, config, policy)  # no window given: nothing to refuse here


def test_shards_are_the_local_read_ahead_groups(fasta: Path) -> None:
    policy = FastaPolicy(on_invalid="skip", on_duplicate="skip")
    shards = plan_shards(fasta, _config(), policy)
    assert len(shards) > 2
    records = list(read_fasta(fasta, policy=policy))
    assert [i for s in shards for i in s.ids] == [r.id for r in records]  # repeat dropped once
    assert all(s.residues >= SHARD_RESIDUES for s in shards[:-1])
    assert [s.start for s in shards[1:]] == [s.end for s in shards[:-1]]
    assert (
        read_shard(fasta, shards[1], policy) == records[len(shards[0].ids) :][: len(shards[1].ids)]
    )
    with pytest.raises(FastaFormatError, match="duplicate id"):
        plan_shards(fasta, _config(), FastaPolicy(on_invalid="skip"))
    marked = fasta.with_name("bom.fasta")  # a UTF-8 byte order mark first: the same shards
    marked.write_bytes(UTF8_BOM + fasta.read_bytes())
    with_bom = plan_shards(marked, _config(), policy)
    assert [s.ids for s in with_bom] == [s.ids for s in shards]
    assert read_shard(marked, with_bom[0], policy) == read_shard(fasta, shards[0], policy)
    packed = fasta.with_suffix(".fasta.gz")
    packed.write_bytes(gzip.compress(fasta.read_bytes()))
    with pytest.raises(InvalidInputError, match="decompress it first"):
        plan_shards(packed, _config(), policy)


def _embed_with_ray(
    fasta: Path, out: Path, model_dir: Path, *extra: str, **env: str
) -> tuple[int, list[str]]:
    """Exit code and non-empty stderr lines of `protssl embed --engine ray` in its own process."""
    command = [sys.executable, "-m", "protssl", "embed", str(fasta), "-o", str(out)]
    command += ["--model", str(model_dir), "--no-cache", "--no-progress", "--engine", "ray"]
    command += ["--on-invalid", "skip", "--on-duplicate", "skip", *extra]
    proc = subprocess.run(
        command, capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )
    return proc.returncode, [line for line in proc.stderr.splitlines() if line.strip()]


def test_a_cluster_that_is_not_there_is_one_line_and_exit_2(
    fasta: Path, tmp_path: Path, service_model_dir: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there: Ray alone would retry for minutes
    code, lines = _embed_with_ray(
        fasta, tmp_path / "parts", service_model_dir, "--ray-address", address
    )
    assert code == 2 and len(lines) == 1, lines
    assert lines[0] == (
        f"protssl embed: error: --engine ray could not reach the Ray cluster at {address}: "
        "Connection refused"
    )
    assert not (tmp_path / "parts").exists()  # made for the parts, none written: removed


def test_a_run_stopped_before_its_first_part_leaves_no_folder_and_an_empty_one_is_no_output(
    fasta: Path,
    tmp_path: Path,
    service_model_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run refused (a .gz input) or failed (Ray not reached) before its first part removes the
    folder it made (it was left, and the corrected command was refused: exists, pass --resume);
    a folder without parts (a killed run's, or made by hand) is no output, and not removed."""
    out = tmp_path / "parts"
    common = ["--model", str(service_model_dir), "--no-progress", "--engine", "ray"]
    common += ["--on-invalid", "skip", "--on-duplicate", "skip"]
    common += ["--db", f"sqlite:///{tmp_path / 'store.sqlite3'}"]
    packed = fasta.with_suffix(".fasta.gz")
    packed.write_bytes(gzip.compress(fasta.read_bytes()))
    assert main(["embed", str(packed), "-o", str(out), *common]) == 2
    assert "decompress it first" in capsys.readouterr().err
    assert not out.exists()
    unreachable = "--engine ray could not reach the Ray cluster at 127.0.0.1:1: Connection refused"

    def no_cluster(*args: object, **kwargs: object) -> None:
        raise UnavailableError(unreachable)

    monkeypatch.setattr(ray_embed, "_run", no_cluster)  # what an unreachable --ray-address says
    out.mkdir()
    assert main(["embed", str(fasta), "-o", str(out), *common]) == 2
    assert capsys.readouterr().err == f"protssl embed: error: {unreachable}\n"
    assert out.is_dir() and list(out.iterdir()) == []  # the user's folder: kept
    out.rmdir()
    assert main(["embed", str(fasta), "-o", str(out), *common]) == 2
    assert capsys.readouterr().err == f"protssl embed: error: {unreachable}\n"
    assert not out.exists()


def test_a_table_name_for_the_parts_folder_is_refused_before_any_work(
    fasta: Path, tmp_path: Path
) -> None:
    """A folder named `out.tsv` full of .h5 parts is not what a user asking for a table wants."""
    code, lines = _embed_with_ray(fasta, tmp_path / "out.tsv", tmp_path / "no-such-model")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0] == (
        f"protssl embed: error: output {str(tmp_path / 'out.tsv')!r}: --engine ray writes a folder "
        "of part-NNNNN.h5 files, not a table: give a folder name (protssl.output.read_vectors "
        "reads the folder as one)"
    )
    assert not (tmp_path / "out.tsv").exists()


def test_a_local_ray_that_does_not_start_ends_with_one_error_line_and_exit_2(
    fasta: Path, tmp_path: Path, service_model_dir: Path
) -> None:
    # no time at all for the GCS server to publish its port: the start fails as it does when the
    # server dies before publishing it
    code, lines = _embed_with_ray(
        fasta, tmp_path / "parts", service_model_dir, RAY_gcs_server_port_wait_time_s="0"
    )
    assert code == 2, lines
    assert lines[-1].startswith(
        "protssl embed: error: --engine ray could not start Ray in this process: Timed out waiting"
    ), lines
    assert not any("Traceback" in line for line in lines), lines


def test_grpc_loaded_with_fork_support_on_is_seen_before_a_local_ray_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import grpc  # noqa: F401  (loaded, as in a program that has used the SDK)

    for setting, unsafe in (
        ("", True),
        ("true", True),
        ("false", False),
        ("0", False),
        ("No", False),
    ):
        monkeypatch.setenv("GRPC_ENABLE_FORK_SUPPORT", setting)
        assert _grpc_forks_unsafely() is unsafe, setting


@pytest.mark.slow
def test_ray_gives_the_local_engines_vectors(
    local_ray: None, fasta: Path, tmp_path: Path, service_model_dir: Path
) -> None:
    model = load_model(service_model_dir, dtype="float32")
    policy = FastaPolicy(on_invalid="skip", on_duplicate="skip")
    options = RayOptions(workers=2)
    # Same bits need the same kernels and thread count: float32 matmuls may sum in another order
    # with another count (oneDNN's AVX2 kernels do), so the local engine runs on the workers' count.
    threads = torch.get_num_threads()
    torch.set_num_threads(options.cpus_per_worker)
    try:
        local = embed_fasta_file(
            fasta, tmp_path / "local.h5", model, config=_config(), policy=policy, progress=False
        )
    finally:
        torch.set_num_threads(threads)
    folder = tmp_path / "parts"
    summary = embed_fasta_ray(
        fasta,
        folder,
        model,
        model_spec=str(service_model_dir),
        config=_config(),
        policy=policy,
        options=options,
        progress=False,
    )
    assert (
        (summary.records, summary.residues)
        == (local.records, local.residues)
        == (36, local.residues)
    )
    assert summary.skipped == 2 and summary.computed == 36
    shards = plan_shards(fasta, _config(), policy)
    assert sorted(p.name for p in folder.iterdir()) == [part_name(s.index) for s in shards]
    expected = {key: vector for key, vector, _ in read_vectors(tmp_path / "local.h5")}
    got = {key: (vector, attrs) for key, vector, attrs in read_vectors(folder)}
    assert list(got) == list(expected)  # the input's order, shard after shard
    assert sorted(got) != list(got)
    for key, (vector, attrs) in got.items():
        assert np.array_equal(vector, expected[key]), key  # same groups, same batches: same bits
        assert attrs["model_sha256"] == model.sha256


@pytest.mark.slow
def test_ray_through_the_cli_skips_cached_sequences_and_finished_parts(
    local_ray: None,
    fasta: Path,
    tmp_path: Path,
    service_model_dir: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    common = ["--model", str(service_model_dir), "--dtype", "float32", "--no-progress", "--db", url]
    common += ["--engine", "ray", "--read-ahead", str(SHARD_RESIDUES)]
    common += ["--on-invalid", "skip", "--on-duplicate", "skip"]
    first = tmp_path / "first"
    assert main(["embed", str(fasta), "-o", str(first), *common]) == 0
    out, err = capfd.readouterr()
    done = json.loads(out.strip().splitlines()[-1])
    assert (done["records"], done["computed"], done["cached"]) == (36, 36, 0)
    # Ray Data's plan, progress lines and "progress bars disabled" stay off the console
    assert "streaming_executor" not in err and "Progress bars" not in err, err

    second = tmp_path / "second"  # another job, same sequences: the store answers for all
    assert main(["embed", str(fasta), "-o", str(second), *common]) == 0
    cached = json.loads(capfd.readouterr().out.strip().splitlines()[-1])
    assert (cached["computed"], cached["cached"]) == (0, 36)

    (first / part_name(1)).unlink()  # a part lost: --resume redoes that shard only, from the store
    assert main(["embed", str(fasta), "-o", str(first), "--resume", *common]) == 0
    resumed = json.loads(capfd.readouterr().out.strip().splitlines()[-1])
    assert resumed["records"] + resumed["resumed"] == 36 and resumed["computed"] == 0
    assert 0 < resumed["records"] < 36
    assert len({key for key, _, _ in read_vectors(first)}) == 36


@pytest.mark.slow
def test_a_shard_whose_worker_dies_every_time_stops_the_run_after_its_retries(
    local_ray: None,
    fasta: Path,
    tmp_path: Path,
    service_model_dir: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ray Data alone would restart the actor and retry the shard forever: the run would hang."""

    class DiesOnShardOne(ray_embed.ShardEmbedder):  # local: Ray pickles it by value
        def _embed(self, shard: Shard) -> dict[str, int]:
            if shard.index == 1:
                os._exit(1)  # as a worker killed for its memory ends
            return super()._embed(shard)

    monkeypatch.setattr(ray_embed, "ShardEmbedder", DiesOnShardOne)
    common = [
        "--model",
        str(service_model_dir),
        "--dtype",
        "float32",
        "--no-progress",
        "--no-cache",
    ]
    common += ["--engine", "ray", "--read-ahead", str(SHARD_RESIDUES), "--worker-retries", "1"]
    common += ["--on-invalid", "skip", "--on-duplicate", "skip"]
    folder = tmp_path / "parts"
    assert main(["embed", str(fasta), "-o", str(folder), *common]) == 2
    error = capfd.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(
        "protssl embed: error: --engine ray: Ray workers died past --worker-retries 1;"
    )
    assert part_name(1) in error and "--resume" in error
    assert not (folder / part_name(1)).exists()
    shards = plan_shards(fasta, _config(), FastaPolicy(on_invalid="skip", on_duplicate="skip"))
    names = [part_name(s.index) for s in shards]
    kept = {p.name for p in folder.glob("part-*")}
    assert len(names) <= 5  # the message names five at most
    assert [name in error for name in names] == [name not in kept for name in names], error

    monkeypatch.undo()  # the worker no longer dies: --resume finishes the job from the kept parts
    assert main(["embed", str(fasta), "-o", str(folder), "--resume", *common]) == 0
    resumed = json.loads(capfd.readouterr().out.strip().splitlines()[-1])
    assert resumed["records"] + resumed["resumed"] == 36
    assert len({key for key, _, _ in read_vectors(folder)}) == 36


def test_negative_worker_retries_are_refused_before_ray_starts() -> None:
    with pytest.raises(InvalidInputError, match="worker retries must not be negative"):
        RayOptions(retries=-1)
    assert RayOptions(retries=0).retries == 0  # no restarts: the first death stops the run


def test_an_output_folder_another_run_is_writing_is_refused_before_ray_starts(
    fasta: Path, tmp_path: Path, service_model_dir: Path
) -> None:
    out = tmp_path / "parts"
    setup = (
        "from pathlib import Path\nfrom protssl.output import writer_lock\n"
        f"lock = writer_lock(Path({str(out)!r}))"
    )
    with another_process_holding(setup) as pid:
        code, lines = _embed_with_ray(fasta, out, service_model_dir, "--resume")
    assert code == 2 and lines == [
        f"protssl embed: error: output {str(out)!r} is being written by another process "
        f"(pid {pid}): wait for it to end, or write to another file"
    ]
    assert not out.exists()


def test_parts_that_cannot_fit_are_refused_before_ray_starts(
    fasta: Path, small_disk: Path, service_model_dir: Path
) -> None:
    """36 records' per-residue vectors on a real 2 MiB disk: one line, Ray never started."""
    out = small_disk / "parts"
    code, lines = _embed_with_ray(fasta, out, service_model_dir, "--pooling", "per-residue")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("protssl embed: error: not enough disk space for this job: ")
    assert "36 per-residue vectors in parts" in lines[0]
    assert not out.exists()  # the folder made for the parts, none written: removed
