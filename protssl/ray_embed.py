"""The Ray engine of `protssl embed`: shards of a FASTA file embedded by a pool of actors.

The driver reads the file once with the FASTA policy (every error, duplicates included, is found
before any model work) and cuts it where the local engine's read-ahead groups end: one shard per
group, a byte range of the file. Ray Data hands each shard to one actor of a pool (`workers`, each
with its own model, `cpus_per_worker` threads or `gpus_per_worker` GPUs); the actor reads its
range, embeds it with `embed_records` (same batching, same encoder) through the shared store's
cache when a database URL is given, and writes `part-NNNNN.h5` into the output folder, renamed into
place when complete. So a vector is the local engine's, and a run continues by skipping the parts
that exist. The input file and the model must be readable at the same path on every node.

Ray is an optional extra (`pip install 'protssl[ray]'`), imported only when this engine runs.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from protssl.batching import read_ahead, refusing_long
from protssl.checkpoint import LoadedModel
from protssl.durable import check_room, make_folder, remove_empty
from protssl.embed_file import JobSummary, refuse_no_records
from protssl.embedding import CacheStats, EmbedConfig, embed_records
from protssl.errors import (
    CheckpointError,
    InvalidInputError,
    ProtsslError,
    UnavailableError,
    first_line,
    refuse_non_finite,
)
from protssl.fasta import (
    UTF8_BOM,
    FastaPolicy,
    ProteinRecord,
    ReadStats,
    read_fasta,
    read_fasta_range,
)
from protssl.memory import MemoryReleaser
from protssl.output import (
    VectorWriter,
    check_parts_output,
    output_bytes,
    part_name,
    writer_lock,
)
from protssl.pooling import vector_values

__all__ = ["RayOptions", "Shard", "embed_fasta_ray", "plan_shards", "read_shard"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    """Where the Ray engine runs and how its actor pool is sized."""

    address: str | None = None
    """A running cluster (`ray start --head` prints it; `auto` finds the local one); None starts
    Ray inside this process with `workers x cpus_per_worker` CPUs and stops it at the end."""
    workers: int = 1
    """Actors in the pool, each with its own copy of the model."""
    cpus_per_worker: int = 1
    """CPUs Ray reserves for each actor; also its torch threads."""
    gpus_per_worker: float = 0.0
    """GPUs per actor (0: CPU); with a GPU the actor's model runs on `cuda`."""
    connect_timeout_s: float = 10.0
    """How long a `host:port` address may take to accept a connection before the run fails."""
    retries: int = 3
    """Times a dead actor (a node lost, an OOM kill) is restarted and its shard retried; past that
    the run stops with the unfinished shards named. Ray Data's own default retries forever, so a
    shard that kills its actor every time would hang the run."""

    def __post_init__(self) -> None:
        refuse_non_finite(self)
        if self.workers < 1 or self.cpus_per_worker < 1:
            raise InvalidInputError("workers and cpus per worker must be at least 1")
        if self.retries < 0:
            raise InvalidInputError("worker retries must not be negative")
        if self.gpus_per_worker < 0:
            raise InvalidInputError("gpus per worker must not be negative")


@dataclass(frozen=True)
class Shard:
    """Bytes [start, end) of the input: one read-ahead group of the local engine."""

    index: int
    start: int
    end: int
    ids: tuple[str, ...]
    """The records the policy keeps in this range, in file order."""
    residues: int


def plan_shards(
    source: str | Path,
    config: EmbedConfig,
    policy: FastaPolicy,
    *,
    stats: ReadStats | None = None,
    window_residues: int | None = None,
) -> list[Shard]:
    """Cut a plain FASTA file into shards at the ends of `read_ahead` groups (policy applied).

    `stats`, if given, counts what the policy kept and dropped. With the `refuse` window policy and
    the model's `window_residues`, a record longer than the window stops the plan, named by its
    file and number, before any actor starts."""
    path = Path(source)
    if str(source) == "-" or not path.is_file():
        raise InvalidInputError("--engine ray reads a FASTA file by byte ranges, not stdin")
    with path.open("rb") as probe:
        if probe.read(2) == b"\x1f\x8b":
            raise InvalidInputError(
                f"{path}: --engine ray reads byte ranges of a plain FASTA file; decompress it first"
            )
    headers = list(_header_offsets(path))
    size = path.stat().st_size
    stats = stats if stats is not None else ReadStats()
    shards: list[Shard] = []
    start = 0
    records: Iterable[ProteinRecord] = read_fasta(path, policy=policy, stats=stats)
    if config.window.mode == "refuse" and window_residues is not None:
        records = refusing_long(records, path, stats, window_residues)
    for group in read_ahead(records, config.read_ahead_residues):
        # read_ahead yields as soon as its last record arrives: stats has counted just that far
        following = stats.records + stats.skipped
        end = headers[following] if following < len(headers) else size
        residues = sum(len(r) for r in group)
        shards.append(Shard(len(shards), start, end, tuple(r.id for r in group), residues))
        start = end
    return shards


def _header_offsets(path: Path) -> Iterator[int]:
    """Byte offset of every header line (`>` first, after a UTF-8 BOM on the first line), as
    SimpleFastaParser splits records."""
    offset = 0
    with path.open("rb") as handle:
        for line in handle:
            if line.startswith(b">") or (offset == 0 and line.startswith(UTF8_BOM + b">")):
                yield offset
            offset += len(line)


def read_shard(path: str | Path, shard: Shard, policy: FastaPolicy) -> list[ProteinRecord]:
    """The records of one shard, exactly those the plan kept; fails if the file changed since."""
    wanted = set(shard.ids)
    # a repeat across shards was dropped by the plan; within one, the policy drops it again
    lenient = replace(policy, on_duplicate="skip")
    records = [
        r for r in read_fasta_range(path, shard.start, shard.end, policy=lenient) if r.id in wanted
    ]
    if tuple(r.id for r in records) != shard.ids:
        raise InvalidInputError(f"{path} changed while it was being embedded (shard {shard.index})")
    return records


class ShardEmbedder:
    """A Ray Data actor: loads the model once, then embeds whole shards into part files."""

    def __init__(
        self,
        *,
        source: str,
        output: str,
        model_spec: str | None,
        model_sha256: str,
        load: dict[str, Any],
        threads: int,
        config: EmbedConfig,
        policy: FastaPolicy,
        database_url: str | None,
    ) -> None:
        import torch

        from protssl.checkpoint import load_model
        from protssl.store import Store, StoreConfig

        torch.set_num_threads(threads)
        self.model = load_model(model_spec, **load)
        if self.model.sha256 != model_sha256:
            raise CheckpointError(
                f"the model at {model_spec!r} on this node has sha256 {self.model.sha256}, "
                f"not the driver's {model_sha256}"
            )
        self.source, self.output = source, Path(output)
        self.config, self.policy = config, policy
        self.store = Store(StoreConfig(url=database_url)) if database_url else None
        self.release = MemoryReleaser()  # an actor lives for the whole job: its heap would grow

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Embed each shard of the batch; one row of counts per shard."""
        rows = [self._embed(_shard_from_row(batch, i)) for i in range(len(batch["index"]))]
        return {name: np.array([row[name] for row in rows]) for name in _COUNTS}

    def _embed(self, shard: Shard) -> dict[str, int]:
        records = read_shard(self.source, shard, self.policy)
        final = self.output / part_name(shard.index)
        partial = final.with_name("." + final.name)  # hidden until complete
        stats = CacheStats()
        windowed = 0
        cache = self.store.embeddings if self.store is not None else None
        positions = {record.id: index for index, record in enumerate(records)}
        with VectorWriter(partial, resume=False, overwrite=True) as writer:
            for embedding in embed_records(
                records, self.model, self.config, cache=cache, stats=stats
            ):
                writer.write(embedding, position=positions[embedding.id])
                windowed += int(embedding.provenance.windowed)
        os.replace(partial, final)
        self.release()
        return {
            "index": shard.index,
            "records": len(records),
            "residues": shard.residues,
            "computed": stats.computed,
            "cached": stats.cached,
            "windowed": windowed,
        }


_COUNTS = ("index", "records", "residues", "computed", "cached", "windowed")


def _shard_row(shard: Shard) -> dict[str, Any]:
    return {
        "index": shard.index,
        "start": shard.start,
        "end": shard.end,
        "ids": "\n".join(shard.ids),
        "residues": shard.residues,
    }


def _shard_from_row(batch: dict[str, np.ndarray], i: int) -> Shard:
    ids = str(batch["ids"][i])
    return Shard(
        index=int(batch["index"][i]),
        start=int(batch["start"][i]),
        end=int(batch["end"][i]),
        ids=tuple(ids.split("\n")) if ids else (),
        residues=int(batch["residues"][i]),
    )


def embed_fasta_ray(
    source: str | Path,
    output: str | Path,
    model: LoadedModel,
    *,
    model_spec: str | None,
    trust_pickle: bool = False,
    allowed_sha256: Sequence[str] = (),
    config: EmbedConfig | None = None,
    policy: FastaPolicy | None = None,
    options: RayOptions | None = None,
    database_url: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    summary: JobSummary | None = None,
    on_shard: Callable[[JobSummary], None] | None = None,
) -> JobSummary:
    """Embed every record of a plain FASTA file into the folder OUTPUT (`part-NNNNN.h5` per shard).

    `model` is the driver's copy (its sha256 is checked on every actor); actors load `model_spec`
    (with `trust_pickle` and `allowed_sha256` as the driver did).
    With `resume`, shards whose part exists are skipped; with `database_url`, actors read and
    write the shared cache. `on_shard(summary)` is called as each shard's part lands.
    """
    config = config or EmbedConfig()
    policy = policy or FastaPolicy()
    options = options or RayOptions()
    summary = summary if summary is not None else JobSummary()
    folder = Path(output)
    summary.output = str(folder)
    start = time.perf_counter()
    lock = writer_lock(folder)  # one run per output folder
    created = not folder.exists()
    try:
        check_parts_output(folder, resume=resume, overwrite=overwrite)
        read = ReadStats()
        window = model.encoder.config.max_residues
        shards = plan_shards(source, config, policy, stats=read, window_residues=window)
        summary.skipped, summary.skipped_ids = read.skipped, list(read.skipped_ids)
        refuse_no_records(source, sum(len(s.ids) for s in shards), read.skipped_by(), summary)
        _prepare_folder(folder, resume=resume, overwrite=overwrite)
        pending = _unfinished(shards, folder)
        summary.resumed = sum(len(s.ids) for s in shards) - sum(len(s.ids) for s in pending)
        _check_room(folder, pending, model, config)
        if pending:
            device = "cuda" if options.gpus_per_worker > 0 else model.device.type
            actor_args = {
                "source": str(Path(source).resolve()),
                "output": str(folder.resolve()),
                "model_spec": model_spec,
                "model_sha256": model.sha256,
                "load": {
                    "device": device,
                    "dtype": model.dtype_name,
                    "trust_pickle": trust_pickle,
                    "allowed_sha256": list(allowed_sha256),
                },
                "threads": options.cpus_per_worker,
                "config": config,
                "policy": policy,
                "database_url": database_url,
            }
            for counts in _run(pending, actor_args, options, progress):
                summary.records += counts["records"]
                summary.residues += counts["residues"]
                summary.computed += counts["computed"]
                summary.cached += counts["cached"]
                summary.windowed += counts["windowed"]
                if on_shard is not None:
                    on_shard(summary)
    except BaseException:
        if created:  # stopped before writing anything: no folder left to look like an output
            remove_empty([folder])
        raise
    finally:
        summary.seconds = time.perf_counter() - start
        if lock is not None:
            lock.release()
    return summary


def _check_room(
    folder: Path, pending: Sequence[Shard], model: LoadedModel, config: EmbedConfig
) -> None:
    """Refuse a run whose part files cannot fit in OUTPUT's disk, before Ray starts: every part
    stays, and each is merged from its own parts first (the largest counted twice)."""
    dim = model.encoder.config.embed_dim
    merged = [
        output_bytes(len(s.ids), vector_values(config.pooling, dim, len(s.ids), s.residues))
        for s in pending
    ]
    if not merged:
        return
    need = sum(merged) // 2 + max(merged) // 2
    records = sum(len(s.ids) for s in pending)
    check_room([(folder, need, f"{str(folder)!r} ({records:,} {config.pooling} vectors in parts)")])


def _prepare_folder(folder: Path, *, resume: bool, overwrite: bool) -> None:
    """Make the output folder (`check_parts_output` has passed it); clear its parts to overwrite."""
    if overwrite and not resume:
        for part in folder.glob("part-*.h5"):
            part.unlink()
    make_folder(folder, what="output")
    for partial in folder.glob(".part-*.h5"):  # left by an actor that was stopped mid-shard
        partial.unlink()


def _run(
    shards: Sequence[Shard], actor_args: dict[str, Any], options: RayOptions, progress: bool
) -> Iterator[dict[str, int]]:
    """Counts of each shard as its actor finishes it; Ray is started here if no cluster is given."""
    try:
        import ray
    except ImportError:
        raise InvalidInputError("--engine ray needs Ray: pip install 'protssl[ray]'") from None
    started = not ray.is_initialized()
    if started:
        _start_ray(ray, options)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = progress
        rows = ray.data.from_items([_shard_row(s) for s in shards], override_num_blocks=len(shards))
        with warnings.catch_warnings():  # the only way to bound actor restarts; deprecated in 2.60
            warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated", DeprecationWarning)
            dataset = rows.map_batches(
                ShardEmbedder,
                fn_constructor_kwargs=actor_args,
                batch_size=1,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=min(options.workers, len(shards))),
                num_cpus=options.cpus_per_worker,
                num_gpus=options.gpus_per_worker or None,
                max_restarts=options.retries,
                max_task_retries=options.retries,
            )
        with _quiet_ray_data():
            for row in dataset.iter_rows():
                yield {name: int(row[name]) for name in _COUNTS}
    except ray.exceptions.RayError as exc:
        cause = _protssl_cause(exc)
        if cause is not None:
            raise cause from None
        if _worker_lost(ray, exc):
            unfinished = [
                part_name(s.index) for s in _unfinished(shards, Path(actor_args["output"]))
            ]
            raise UnavailableError(
                f"--engine ray: Ray workers died past --worker-retries {options.retries}; "
                f"{len(unfinished)} shard(s) not finished ({', '.join(unfinished[:5])}"
                f"{', ...' if len(unfinished) > 5 else ''}); the finished parts are kept and "
                "--resume goes on from them (a worker that dies every time is often out of "
                f"memory: try a smaller --max-tokens). Ray said: {first_line(exc)}"
            ) from None
        raise
    finally:
        if started:
            ray.shutdown()


def _worker_lost(ray: Any, exc: BaseException) -> bool:
    """Whether Ray gave up on an actor or its process: it died, crashed or lost its node."""
    errors = ray.exceptions
    return isinstance(
        exc,
        (
            errors.RayActorError,
            errors.WorkerCrashedError,
            errors.NodeDiedError,
            errors.OutOfMemoryError,
        ),
    )


def _unfinished(shards: Sequence[Shard], folder: Path) -> list[Shard]:
    """The shards whose part is not in `folder` yet (a part lands only when its shard is done)."""
    return [shard for shard in shards if not (folder / part_name(shard.index)).exists()]


@contextmanager
def _quiet_ray_data() -> Iterator[None]:
    """While a run is read, Ray Data's console shows warnings and errors only: the command has its
    own progress bar and summary, where Ray Data prints its plan and progress at INFO, and warns
    that its progress bars are off when the command turned them off."""
    handlers = [
        handler
        for handler in logging.getLogger("ray.data").handlers
        if isinstance(handler, logging.StreamHandler)
        and not isinstance(handler, logging.FileHandler)  # its log file keeps everything
    ]
    levels = [handler.level for handler in handlers]
    for handler in handlers:
        handler.setLevel(max(handler.level, logging.WARNING))
        handler.addFilter(_progress_bars_off)
    try:
        yield
    finally:
        for handler, level in zip(handlers, levels, strict=True):
            handler.setLevel(level)
            handler.removeFilter(_progress_bars_off)


def _progress_bars_off(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Progress bars disabled")


def _start_ray(ray: Any, options: RayOptions) -> None:
    """Connect to the cluster at `options.address`, or start Ray here; a failure is one line."""
    if options.address:
        failed = f"could not reach the Ray cluster at {options.address}"
        refused = _refused(options.address, options.connect_timeout_s)
        if refused is not None:  # Ray itself would retry for minutes
            raise UnavailableError(f"--engine ray {failed}: {refused}")
    else:
        failed = "could not start Ray in this process"
        if _grpc_forks_unsafely():
            log.warning(
                "this process has loaded grpcio with its fork support on: a local Ray starts its "
                "processes by fork, and about 1 in 100 such children crashes; set "
                "GRPC_ENABLE_FORK_SUPPORT=false before grpc is imported"
            )
    try:
        ray.init(
            address=options.address,
            num_cpus=None if options.address else options.workers * options.cpus_per_worker,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        ray.shutdown()  # what a half-finished start left running
        raise UnavailableError(f"--engine ray {failed}: {first_line(exc)}") from None


def _grpc_forks_unsafely() -> bool:
    """Whether grpcio is loaded with its fork handlers on (its default): they restart gRPC's threads
    in every fork()ed child, and Ray's children, closing their descriptors before exec, then crash
    in ~1-2% of forks (the README's Tests section has the measurements)."""
    setting = os.environ.get("GRPC_ENABLE_FORK_SUPPORT", "").strip().lower()
    return "grpc" in sys.modules and setting not in ("0", "false", "no")


def _refused(address: str, timeout_s: float) -> str | None:
    """Why a `host:port` address takes no TCP connection, or None (also for `auto`, `ray://`)."""
    host, colon, port = address.rpartition(":")
    if "://" in address or not colon or not port.isdigit():
        return None  # Ray resolves these and says what it found
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    return None


def _protssl_cause(exc: BaseException) -> ProtsslError | None:
    """The protssl error an actor raised, out of Ray's wrappers (so the CLI prints one line)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ProtsslError):
            return current
        current = getattr(current, "cause", None) or current.__cause__
    return None
