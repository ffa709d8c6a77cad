"""A batch embedding job: FASTA file → vectors file, resumable, with progress and a summary.

The chain, top to bottom: `validate_fasta` → `read_fasta` → `embed_records` → `VectorWriter`. A file
is checked whole before any model work, so a bad record stops the job at once with every bad record
named, not hours in. Stdin cannot be read twice: there a FASTA error stops reading, the records read
before it are still embedded and written, and the error is raised after the output is flushed.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from protssl.batch_job import JobSpec
from protssl.batching import refusing_long
from protssl.checkpoint import LoadedModel
from protssl.durable import check_room, human_bytes
from protssl.embedding import (
    CacheStats,
    EmbedConfig,
    Embedding,
    embed_records,
    expected_provenance,
)
from protssl.errors import ProtsslError
from protssl.fasta import (
    FastaCheck,
    FastaPolicy,
    ProteinRecord,
    ReadStats,
    no_records_error,
    read_fasta,
    validate_fasta,
)
from protssl.memory import MemoryReleaser
from protssl.output import check_pooling, is_table, open_writer, output_bytes
from protssl.pooling import vector_values
from protssl.progress import progress_bar
from protssl.store import EmbeddingCache

__all__ = ["JobSummary", "embed_fasta_file", "embed_job_spec", "refuse_no_records"]

log = logging.getLogger(__name__)

FLUSH_EVERY = 64
"""Records between two flushes of a job's OUTPUT (local or through a server)."""


@dataclass
class JobSummary:
    """What a job did; printed as the CLI's last JSON line."""

    records: int = 0
    """Records embedded and written by this run."""
    residues: int = 0
    """Residues in those records."""
    seconds: float = 0.0
    skipped: int = 0
    """Records dropped by the FASTA policy (`skip`)."""
    resumed: int = 0
    """Records already in the output (with `--resume`), not recomputed."""
    windowed: int = 0
    """Records longer than the model window, embedded through stitched windows."""
    computed: int = 0
    """Vectors the model computed in this run."""
    cached: int = 0
    """Vectors read from the store's cache instead (no forward)."""
    errors: int = 0
    error: str | None = None
    output: str = ""
    skipped_ids: list[str] = field(default_factory=list)
    job: str | None = None
    """The id of this job in the store's `jobs` table (None without a store)."""
    continued: bool = False
    """True when this run continued a job a previous run left unfinished (killed, failed)."""

    @property
    def done(self) -> int:
        """Records of the input that have their vector in the output."""
        return self.records + self.resumed

    def written(self, embedding: Embedding) -> bool:
        """Count one record written to OUTPUT; whether it is time to make OUTPUT durable (every
        `FLUSH_EVERY` records: what a kill then loses)."""
        self.records += 1
        self.residues += embedding.length
        self.windowed += int(embedding.provenance.windowed)
        return self.records % FLUSH_EVERY == 0

    @property
    def residues_per_second(self) -> float:
        return self.residues / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["res_per_s"] = round(self.residues_per_second, 1)
        data["seconds"] = round(self.seconds, 3)
        data["skipped_ids"] = self.skipped_ids[:20]
        return data


def embed_job_spec(
    source: str | Path,
    output: str | Path,
    model: LoadedModel,
    config: EmbedConfig,
    policy: FastaPolicy,
    *,
    engine: str = "local",
) -> JobSpec:
    """What makes two `embed` runs the same job: input, output, model, dtype, options, engine."""
    window = config.window.resolved(model.encoder.config.max_residues)
    options = {
        "config": asdict(replace(config, window=window)),
        "fasta": asdict(policy),
        "dtype": model.dtype_name,
        "engine": engine,
    }
    return JobSpec.for_files("embed", source, output, model_sha256=model.sha256, options=options)


def refuse_no_records(
    source: str | Path, records: int, skipped: dict[str, int], summary: JobSummary
) -> None:
    """Raise `no_records_error` (kept in `summary`) when `records`, the input's records that OUTPUT
    holds or this run can embed, is 0: OUTPUT is not written then, and a caller that went on as if
    it were (a pipeline's next step) would fail later on a missing file. `skipped` is
    `ReadStats.skipped_by`: which policy settings left the records out."""
    if records:
        return
    error = no_records_error(source, skipped)
    summary.skipped = max(summary.skipped, sum(skipped.values()))
    summary.errors, summary.error = 1, str(error)
    raise error


def _check_room(
    output: Path,
    checked: FastaCheck,
    model: LoadedModel,
    config: EmbedConfig,
    cache: EmbeddingCache | None,
) -> None:
    """Refuse a job whose OUTPUT cannot fit on its disk (per-residue vectors of a proteome take
    tens of GB), before any work; a file `--overwrite` replaces gives no space back, as it is kept
    until the new one is whole. A SQLite store whose disk cannot take the job's vectors is warned
    about: some may be cached already."""
    if not output.parent.is_dir():
        return  # the writer says so
    dim = model.encoder.config.embed_dim
    values = vector_values(config.pooling, dim, checked.records, checked.residues)
    need = output_bytes(checked.records, values, table=is_table(output))
    what = f"{str(output)!r} ({checked.records:,} {config.pooling} vectors, and its parts"
    check_room([(output.parent, need, f"{what} while they are merged)")])
    store = None if cache is None else cache.local_file
    if cache is None or store is None or not store.parent.is_dir():
        return
    kept = cache.stored_bytes(checked.records, values, checked.residues)
    free = shutil.disk_usage(store.parent).free
    if kept > free:
        log.warning(
            "the store %s has %s free on its disk, and this job's vectors take ~%s there where "
            "none is cached yet: a full store stops the job (what is written stays; --resume "
            "goes on once there is room); --no-cache leaves the store out",
            store,
            human_bytes(free),
            human_bytes(kept),
        )


def pending_records(
    records: Iterable[ProteinRecord],
    done: set[str],
    summary: JobSummary,
    bar: tqdm,
    positions: dict[str, int] | None = None,
    *,
    written: Container[str] = frozenset(),
) -> Iterator[ProteinRecord]:
    """The records OUTPUT still lacks: each one whose id is `done` is counted as resumed, moves the
    progress bar on and leaves `done`; those in `written` (by this run, when the input is read
    again after a lost connection) are passed over. With `positions`, each record's place in the
    input is kept there until its vector is written (so that OUTPUT follows the input)."""
    for position, record in enumerate(records):
        if record.id in written:
            continue
        if record.id in done:
            done.discard(record.id)
            summary.resumed += 1
            bar.update(len(record))
            continue
        if positions is not None:
            positions[record.id] = position
        yield record


def _until_error(
    records: Iterable[ProteinRecord], failure: list[ProtsslError]
) -> Iterator[ProteinRecord]:
    """Pass records through; on a reader error, remember it and end the stream cleanly."""
    try:
        yield from records
    except ProtsslError as exc:
        failure.append(exc)


def embed_fasta_file(
    source: str | Path,
    output: str | Path,
    model: LoadedModel,
    *,
    config: EmbedConfig | None = None,
    policy: FastaPolicy | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    summary: JobSummary | None = None,
    cache: EmbeddingCache | None = None,
    on_flush: Callable[[JobSummary], None] | None = None,
    checked: FastaCheck | None = None,
) -> JobSummary:
    """Embed every record of a FASTA file into OUTPUT (`.h5`, `.npz`, or a `.tsv`/`.csv` table).

    With `resume`, ids already in OUTPUT are skipped; with `cache`, vectors already in the store
    are read instead of computed, and computed ones are written back. A file is checked whole first
    (`validate_fasta`; `checked` when the caller has done so): a record that breaks the policy stops the
    job before any work. Stdin is read as it comes: its first FASTA error is raised after everything
    read before it is written. Pass `summary` to keep the counts when an error is raised.
    `on_flush(summary)` is called each time the output is made durable (to record progress).
    """
    config = config or EmbedConfig()
    summary = summary if summary is not None else JobSummary()
    summary.output = str(output)
    stats = ReadStats()
    start = time.perf_counter()
    failure: list[ProtsslError] = []
    try:
        check_pooling(output, config.pooling)
        checked = checked or validate_fasta(source, policy=policy)
        if checked is not None:
            refuse_no_records(source, checked.records, checked.skipped, summary)
        if checked is not None and not resume:
            _check_room(Path(output), checked, model, config, cache)
    except ProtsslError as exc:
        summary.errors, summary.error = 1, str(exc)
        raise
    try:  # the time and counts of what was done, also when a kill or a full disk stops it
        with open_writer(output, resume=resume, overwrite=overwrite) as writer:
            done = writer.existing_ids() if resume else set()
            writer.check_provenance(expected_provenance(model, config))

            # a table's rows and an HDF5 file's datasets follow the input; only records read and
            # not yet written are held here
            positions: dict[str, int] = {}

            bar = progress_bar(
                total=checked.residues if checked else None,
                unit="res",
                unit_scale=True,
                desc="embed",
                disable=not progress,
                smoothing=0.1,
            )
            release = MemoryReleaser()  # or the heap grows for as long as the job runs
            with bar:
                cache_stats = CacheStats()
                read = read_fasta(source, policy=policy, stats=stats)
                if config.window.mode == "refuse":
                    read = refusing_long(read, source, stats, model.encoder.config.max_residues)
                records = _until_error(
                    pending_records(read, done, summary, bar, positions), failure
                )
                for embedding in embed_records(
                    records, model, config, cache=cache, stats=cache_stats
                ):
                    writer.write(embedding, position=positions.pop(embedding.id, None))
                    bar.update(embedding.length)
                    summary.computed, summary.cached = cache_stats.computed, cache_stats.cached
                    if summary.written(embedding):
                        writer.flush()
                        summary.skipped = stats.skipped
                        if on_flush is not None:
                            on_flush(summary)
                        release()
            writer.flush()
    finally:
        summary.seconds = time.perf_counter() - start
        summary.skipped = stats.skipped
        summary.skipped_ids = list(stats.skipped_ids)
    if failure:
        summary.errors = 1
        summary.error = str(failure[0])
        raise failure[0]
    refuse_no_records(source, summary.done, stats.skipped_by(), summary)  # stdin, read as it came
    return summary
