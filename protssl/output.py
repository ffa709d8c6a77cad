"""Vectors on disk: HDF5 (one dataset per record id, provenance in attributes), `.npz`, or a
TSV/CSV table of pooled vectors (one row per record).

HDF5 layout (`h5py`): file attributes hold the shared provenance (model name and sha256, layer,
pooling, dtype, window policy, protssl version); each record is a root dataset named by its id,
with `/` and `%` percent-escaped (`sp|P1/2` → `sp|P1%2F2`) and the ids `.` and `__provenance__`
escaped whole (`%2E`, `%5F_provenance__`), holding float32 `(D,)` or `(L, D)`,
and attributes `id`, `length`, `windows`, `windowed` and `labels`; the file tracks creation order,
which lists the datasets in input order. `.npz` keeps the same names as
keys and the provenance as JSON under `__provenance__`. A table (`.tsv`, `.csv`) has a header
row and one row per record: `id`, `length`, `windows`, `windowed`, `labels`, the provenance
(`model_name` … `window_policy`, the same in every row, so a row taken out of the file still says
what made it), then the vector as `v0` … `v{D-1}`, each float32 written with 9 significant digits
(read back bit-exact). It holds one vector per record: per-residue vectors are refused.

Crash safety, the same for both formats: OUTPUT itself is only ever replaced whole (a temp file,
fsync, rename). While a job runs, each `flush()` writes the vectors since the last one as a chunk
file in the journal folder `OUTPUT.partial/` (temp, fsync, rename), so a process killed at any
moment (SIGKILL included) leaves OUTPUT as it was plus complete chunks; `close()` (also on Ctrl-C
or SIGTERM) merges the chunks into OUTPUT and removes the journal. `--resume` merges a journal a
killed run left and skips every id in OUTPUT or its journal. An `--overwrite` of an existing
OUTPUT marks its journal as replacing it: OUTPUT is kept as it was until the run completes, a run
stopped midway (Ctrl-C, SIGTERM, an error) leaves it so with the new chunks in the journal, and
`--resume` finishes the replacement from them (OUTPUT's old records are not kept).

A sharded output (the Ray engine's) is a folder of such HDF5 files, `part-00000.h5`, one per
shard of the input, each renamed into place only when complete; `read_vectors` reads the folder
as one.
"""

from __future__ import annotations

import csv
import errno
import json
import logging
import re
import shutil
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from protssl import __version__
from protssl.durable import (
    ExclusiveLock,
    check_can_create,
    os_error_in,
    refuse_existing,
    writing_durably,
)
from protssl.embedding import Embedding, Provenance
from protssl.errors import InvalidInputError, OutputError, first_line
from protssl.fasta import long_id_problem, shortened_id

__all__ = [
    "FORMATS",
    "VectorWriter",
    "check_not_being_written",
    "check_output",
    "check_parts_folder",
    "check_parts_output",
    "check_pooling",
    "check_resume_or_overwrite",
    "check_writable",
    "dataset_name",
    "is_table",
    "journal_path",
    "open_writer",
    "part_name",
    "read_vectors",
    "record_id",
    "write_vectors",
    "writer_lock",
]

log = logging.getLogger(__name__)

FORMATS = (".h5", ".hdf5", ".npz", ".tsv", ".csv")
_DELIMITERS = {".tsv": "\t", ".csv": ","}
_ROW_FIELDS = ("id", "length", "windows", "windowed", "labels")
_SHARED = ("model_name", "model_sha256", "layer", "pooling", "dtype", "window_policy")
_TABLE_FIXED = (*_ROW_FIELDS, *_SHARED)
"""A table's columns before the vector's `v0`, `v1`, ..."""
_NPZ_META = "__provenance__"
_UNREADABLE = (OSError, ValueError, KeyError, RuntimeError, EOFError, zipfile.BadZipFile, csv.Error)
"""What h5py, np.load and the table reader raise for a file that is not theirs or is truncated."""
_REPLACES = "replaces-output"
"""The journal's mark that its chunks replace OUTPUT (`--overwrite`) rather than add to it: OUTPUT
stays as it was until they are merged, so a run stopped midway loses nothing."""
_CHUNK_BYTES = 64 << 20
"""Buffered vectors past this size are written as a chunk without waiting for `flush()`."""


_RECORD_OVERHEAD = 700
"""Bytes an HDF5 dataset's header and attributes (or a .npz entry and its JSON row) take beside
its vector: 20,000 pooled 320-wide records made a 38.5 MB file (25.6 MB of vectors)."""
_TEXT_VALUE_BYTES = 14
"""Bytes of one value in a table: 9 significant digits, a sign, the point or an exponent, the
delimiter (measured: 12.6 a value for the shipped model's vectors of examples/proteins.fasta,
13.5 for normal values of scale 0.1, whose leading zeros take room)."""


def output_bytes(records: int, values: int, *, table: bool = False) -> int:
    """Disk an OUTPUT of `records` float32 vectors holding `values` values in all
    (`pooling.vector_values`) needs at its peak: the parts in OUTPUT.partial/ and the file merged
    from them lie side by side until the parts are removed (`table`: the file is text)."""
    parts = values * 4 + records * _RECORD_OVERHEAD
    return parts + (values * _TEXT_VALUE_BYTES + records * _RECORD_OVERHEAD if table else parts)


def is_table(path: str | Path) -> bool:
    """Whether OUTPUT is a TSV/CSV table (one pooled vector per row)."""
    return Path(path).suffix.lower() in _DELIMITERS


def check_parts_folder(path: str | Path) -> None:
    """Refuse a table's name for a sharded output, a folder of `part-NNNNN.h5` files."""
    if is_table(path):
        raise InvalidInputError(
            f"output {str(path)!r}: --engine ray writes a folder of part-NNNNN.h5 files, not a "
            "table: give a folder name (protssl.output.read_vectors reads the folder as one)"
        )


def check_parts_output(path: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse a sharded OUTPUT that is a file, or a folder that holds parts unless told to continue
    them (`resume`) or replace them. A folder without parts is no output yet (one a run killed
    before its first part left, or made by hand): refusing it would block the command that fills
    it, however the run that made it ended."""
    folder = Path(path)
    check_parts_folder(folder)
    if folder.exists() and not folder.is_dir():
        raise InvalidInputError(f"output {str(folder)!r}: --engine ray writes a folder of parts")
    if not (resume or overwrite) and folder.is_dir() and any(folder.glob("part-*.h5")):
        raise InvalidInputError(
            f"output {str(folder)!r} holds parts: pass --resume to continue it or "
            "--overwrite to replace it"
        )


def check_pooling(path: str | Path, pooling: str) -> None:
    """Refuse per-residue vectors for a table output before any work: a row holds one vector."""
    if pooling == "per-residue" and is_table(path):
        raise InvalidInputError(
            f"output {str(path)!r}: a {Path(path).suffix.lower()} table holds one vector per "
            "record; per-residue vectors go to .h5 or .npz"
        )


_RESERVED_NAMES = {".": "%2E", _NPZ_META: "%5F_provenance__"}
"""Ids that cannot be names as they are: HDF5's name for the group a name is in, and the key of
a .npz's (and every chunk's) provenance. Escaped whole, as `%` and `/` are."""
_ESCAPED = re.compile("%(25|2F|2E|5F)")


def dataset_name(record_id: str) -> str:
    """The dataset/key name for a record id: `%` and `/` escaped so ids never make groups, and
    the reserved names (`.`, `__provenance__`) escaped so a record never clashes with them."""
    name = record_id.replace("%", "%25").replace("/", "%2F")
    return _RESERVED_NAMES.get(name, name)


def record_id(name: str) -> str:
    """Inverse of `dataset_name` (in one pass: an escaped `%` never starts another escape)."""
    return _ESCAPED.sub(lambda match: chr(int(match.group(1), 16)), name)


def part_name(index: int) -> str:
    """The file name of shard `index` in a sharded output folder."""
    return f"part-{index:05d}.h5"


def journal_path(path: str | Path) -> Path:
    """The folder of chunks a running (or killed) job keeps beside OUTPUT: `OUTPUT.partial`."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def writer_lock(path: Path) -> ExclusiveLock | None:
    """OUTPUT's one-writer lock (a file, or the Ray engine's folder): `.OUTPUT.lock` beside it. A
    second `protssl embed` to the same OUTPUT (the same command started twice, an array job's
    copies) would otherwise continue the first's journal and overwrite its chunks."""
    return ExclusiveLock.acquire(
        path.with_name(f".{path.name}.lock"),
        busy=f"output {str(path)!r} is being written",
        advice="wait for it to end, or write to another file",
    )


def _check_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise InvalidInputError(
            f"output {str(path)!r}: unknown format {suffix or '(none)'}; use {', '.join(FORMATS)}"
        )
    if suffix in _DELIMITERS:
        return "table"
    return "npz" if suffix == ".npz" else "h5"


def check_output(path: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse an output that exists unless told to continue it (`resume`) or replace it."""
    path = Path(path)
    if journal_path(path).is_dir() and not (resume or overwrite):
        raise InvalidInputError(
            f"output {str(path)!r} has the vectors of an interrupted run in "
            f"{str(journal_path(path))!r}: pass --resume to continue it or --overwrite to start over"
        )
    if not (resume or overwrite):
        refuse_existing(path, advice="pass --resume to continue it or --overwrite to replace it")


def check_resume_or_overwrite(*, resume: bool, overwrite: bool) -> None:
    """Refuse being told both to continue OUTPUT and to replace it (one of them used to win
    silently); the CLI and the SDK's `embed_file` ask this of what their caller passed."""
    if resume and overwrite:
        raise InvalidInputError(
            "--resume and --overwrite contradict each other (--resume continues OUTPUT, "
            "--overwrite replaces it): pass one"
        )


def check_writable(path: str | Path) -> None:
    """Fail before any work on an output of unknown format, a folder, one whose folder is missing
    or read-only, or one another process is writing."""
    path = Path(path)
    _check_creatable(path)
    check_not_being_written(path)


def _check_creatable(path: Path) -> str:
    """`check_writable` but for the lock: the format ("h5" or "npz") of an OUTPUT that can be
    created (a writer takes the lock itself, rather than trying it first)."""
    kind = _check_format(path)
    check_can_create(path, hint=f"give a file name ending in {', '.join(FORMATS)}")
    return kind


def check_not_being_written(path: str | Path) -> None:
    """Fail before any work on an OUTPUT (file or folder) another process is writing."""
    lock = writer_lock(Path(path))
    if lock is not None:
        lock.release()


class VectorWriter:
    """Appends embeddings to one output file; refuses to mix vectors of different provenance."""

    def __init__(self, path: Path, *, resume: bool, overwrite: bool) -> None:
        self.path = path
        self.kind = _check_creatable(path)
        self.journal = journal_path(path)
        self._lock = writer_lock(path)
        try:
            check_output(path, resume=resume, overwrite=overwrite)
            if overwrite and not resume:
                shutil.rmtree(self.journal, ignore_errors=True)
            self._replacing = (overwrite and not resume and path.exists()) or (
                self.journal / _REPLACES
            ).is_file()
            """The chunks replace OUTPUT, which is kept as it was until they are merged."""
            self._shared: dict[str, Any] | None = None
            self._ids: set[str] = set()
            self._buffer: dict[str, np.ndarray] = {}
            self._rows: dict[str, dict[str, Any]] = {}
            self._buffered = 0
            self._chunks = 0
            if self._keeps_output():
                self._shared, names = _read_index(path, self.kind)
                self._ids.update(names)
            self._open_journal()
            if self._replacing:
                with writing_durably(self.journal / _REPLACES) as mark:
                    mark.write_text(f"these chunks replace {path.name}, which is kept until then\n")
        except BaseException:
            self._unlock()
            raise
        self._closed = False

    def _open_journal(self) -> None:
        """Create the journal folder, or take up the chunks a killed run left in it."""
        try:
            self.journal.mkdir(exist_ok=True)
        except OSError as exc:
            raise InvalidInputError(
                f"output {str(self.path)!r}: cannot create {str(self.journal)!r} ({exc.strerror})"
            ) from None
        for stale in self.journal.glob(".*.tmp"):
            stale.unlink()
        for chunk in _chunks(self.journal):
            try:
                meta, names = _read_chunk_index(chunk)
            except _UNREADABLE as exc:
                raise InvalidInputError(
                    f"output {str(self.path)!r}: chunk {str(chunk)!r} cannot be read ({exc}); "
                    "delete it to compute its records again"
                ) from None
            if self._shared is None:
                self._shared = meta["shared"]
            self._ids.update(names)
            self._chunks = max(self._chunks, int(chunk.stem.removeprefix("chunk-")))

    def _keeps_output(self) -> bool:
        """Whether OUTPUT's records stay in it (it exists, and the journal does not replace it)."""
        return self.path.exists() and not self._replacing

    def existing_ids(self) -> set[str]:
        """Record ids already in the file or its journal (for `--resume`)."""
        return {record_id(n) for n in self._ids | set(self._buffer)}

    def check_provenance(self, provenance: Provenance) -> None:
        """Fail before any work when resuming a file made with another model, layer or pooling."""
        shared = {k: getattr(provenance, k) for k in _SHARED}
        if self._shared is None:
            return
        diff = [k for k in _SHARED if self._shared.get(k) != shared[k]]
        if diff:
            what = ", ".join(f"{k} {self._shared.get(k)!r} vs {shared[k]!r}" for k in diff)
            raise InvalidInputError(
                f"output {str(self.path)!r} holds vectors of another provenance ({what}); "
                "write to a new file"
            )

    def write(self, embedding: Embedding, *, position: int | None = None) -> None:
        """Add one record's vector with its provenance (durable at the next `flush()`).

        `position`, the record's place in the input, orders OUTPUT's records (vectors come in
        the order they were computed, batches sorted by length). An id too long for the .npz
        chunks is refused by name (records made in code skip the FASTA check that refuses it).
        """
        if problem := long_id_problem(embedding.id):
            raise InvalidInputError(
                f"output {str(self.path)!r}: record {shortened_id(embedding.id)!r}: {problem}"
            )
        if self._shared is None:
            self._shared = {k: getattr(embedding.provenance, k) for k in _SHARED}
        else:
            self.check_provenance(embedding.provenance)
        name = dataset_name(embedding.id)
        vector = np.ascontiguousarray(embedding.vector, dtype=np.float32)
        if self.kind == "table" and vector.ndim != 1:
            raise InvalidInputError(
                f"output {str(self.path)!r}: record {embedding.id!r} has a {vector.shape} vector; "
                "a table holds one vector per record (per-residue vectors go to .h5 or .npz)"
            )
        self._buffer[name] = vector
        self._rows[name] = {
            "id": embedding.id,
            "length": embedding.length,
            "windows": embedding.provenance.windows,
            "windowed": embedding.provenance.windowed,
            "labels": ";".join(embedding.labels),
        }
        if position is not None:
            self._rows[name]["position"] = position
        self._buffered += vector.nbytes
        if self._buffered > _CHUNK_BYTES:
            self.flush()

    def flush(self) -> None:
        """Make everything written so far durable: one chunk file in the journal."""
        if not self._buffer:
            return
        meta = json.dumps({"shared": self._shared, "records": self._rows})
        chunk = self.journal / f"chunk-{self._chunks + 1:06d}.npz"
        try:
            _write_atomic(chunk, {**self._buffer, _NPZ_META: meta})
        except OutputError as exc:
            raise self._failed(exc) from exc
        self._chunks += 1
        self._ids.update(self._buffer)
        self._buffer, self._rows, self._buffered = {}, {}, 0

    def close(self) -> None:
        """Flush, merge the journal into OUTPUT (a temp file renamed into place), drop the journal."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
            chunks = _chunks(self.journal)
            if chunks:
                try:
                    if self.kind == "h5":
                        self._merge_h5(chunks)
                    elif self.kind == "table":
                        self._merge_table(chunks)
                    else:
                        self._merge_npz(chunks)
                except OutputError as exc:
                    raise self._failed(exc) from exc
            shutil.rmtree(self.journal, ignore_errors=True)
        finally:
            self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def _failed(self, exc: OutputError) -> OutputError:
        """A write failure told with what survives it and how to go on from there."""
        kept = [str(self.path)] if self._keeps_output() else []
        kept += [str(self.journal)] if _chunks(self.journal) else []
        if not self._ids or not kept:
            return OutputError(f"output {str(self.path)!r}: {exc}; no record was written before it")
        cause = os_error_in(exc)
        space = cause is not None and cause.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        return OutputError(
            f"output {str(self.path)!r}: {exc}; the {len(self._ids)} record(s) written before it "
            f"are kept in {' and '.join(map(repr, kept))}: "
            f"{'free space' if space else 'once that is mended'}, then run the same command "
            "with --resume (it skips them)"
        )

    def _merge_h5(self, chunks: list[Path]) -> None:
        """OUTPUT's datasets (less those the chunks replace), then the chunks' in input order where
        their writer gave it, else in the order written. A new file tracks its datasets' creation
        order, which h5py lists them in (a file without it lists them by name)."""
        with _ChunkVectors(chunks) as vectors, writing_durably(self.path) as tmp:
            if self._keeps_output():
                shutil.copyfile(self.path, tmp)
            new = not tmp.exists()
            # through a Python file: HDF5's own writer, failing (a full disk), leaves objects it
            # cannot close and the process dies at exit; Python's raises an OSError and is done
            with (
                tmp.open("w+b" if new else "r+b") as raw,
                h5py.File(raw, "w" if new else "a", track_order=True) as handle,
            ):
                if "model_sha256" not in handle.attrs and self._shared is not None:
                    handle.attrs.update(self._shared)
                    handle.attrs["protssl_version"] = __version__
                for name, (index, attrs) in _in_input_order(chunks):
                    if name in handle:
                        del handle[name]
                    dataset = handle.create_dataset(name, data=vectors.get(index, name))
                    dataset.attrs.update(_stored(attrs))

    def _merge_npz(self, chunks: list[Path]) -> None:
        """OUTPUT's records (less those the chunks replace), then the chunks' in input order where
        their writer gave it, else in the order written: the order np.load lists them in."""
        arrays: dict[str, np.ndarray] = {}
        rows: dict[str, dict[str, Any]] = {}
        if self._keeps_output():
            with _load_npz(self.path) as data:
                meta, names = _npz_index(data, required=False)
                arrays = {k: data[k] for k in names}
            rows = meta.get("records", {})
        with _ChunkVectors(chunks) as vectors:
            for name, (index, attrs) in _in_input_order(chunks):
                arrays.pop(name, None)
                arrays[name], rows[name] = vectors.get(index, name), _stored(attrs)
        meta_text = json.dumps({"shared": self._shared, "records": rows})
        _write_atomic(self.path, {**arrays, _NPZ_META: meta_text})

    def _merge_table(self, chunks: list[Path]) -> None:
        """OUTPUT's rows (less those the chunks replace), then the chunks' rows in input order
        where their writer gave it, else in the order written. Only the rows' attributes are held
        at once: each vector is read from its chunk as its row is written."""
        order = _in_input_order(chunks)
        latest = dict(order)
        delimiter = _DELIMITERS[self.path.suffix.lower()]
        shared = [self._shared[k] if self._shared else "" for k in _SHARED]
        with (
            _ChunkVectors(chunks) as vectors,
            writing_durably(self.path) as tmp,
            tmp.open("w", newline="") as handle,
        ):
            out = csv.writer(handle, delimiter=delimiter, lineterminator="\n")
            first, (index, _) = order[0]
            width = vectors.get(index, first).shape[0]  # one provenance, one width
            out.writerow([*_TABLE_FIXED, *(f"v{i}" for i in range(width))])
            if self._keeps_output():
                for row in _table_rows(self.path):
                    if dataset_name(row[0]) not in latest:
                        out.writerow(row)
            for name, (index, attrs) in order:
                vector = vectors.get(index, name)
                windowed = "true" if attrs["windowed"] else "false"
                fields = (attrs["id"], attrs["length"], attrs["windows"], windowed, attrs["labels"])
                out.writerow([*fields, *shared, *(f"{x:.9g}" for x in vector.tolist())])

    def __enter__(self) -> VectorWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, OutputError):
            # writing more would fail as that did; the journal keeps what was durable, if anything
            if not _chunks(self.journal):
                shutil.rmtree(self.journal, ignore_errors=True)
            self._closed = True
            self._unlock()
            return
        if exc is not None and self._replacing:
            self._keep_output(exc)
            return
        try:
            self.close()
        except OutputError as closing:
            if exc is None:
                raise
            log.warning("%s", closing)  # the error in flight is the one to raise

    def _keep_output(self, exc: BaseException) -> None:
        """A replacing run stopped midway: OUTPUT stays as it was, the new records stay in the
        journal for `--resume` (none: the journal goes); an interruption says so."""
        self._closed = True
        try:
            self.flush()
        except OutputError as failed:
            log.warning("%s", failed)
        finally:
            self._unlock()
        new = len(self._ids)
        if not new:
            shutil.rmtree(self.journal, ignore_errors=True)
        if isinstance(exc, KeyboardInterrupt):
            raise type(exc)(
                f"output {str(self.path)!r} is as it was; the {new} new record(s) are in "
                f"{str(self.journal)!r}: run the command with --resume in place of --overwrite to "
                "finish replacing it"
                if new
                else f"output {str(self.path)!r} is as it was (nothing was replaced)"
            ) from exc


def open_writer(path: str | Path, *, resume: bool = False, overwrite: bool = False) -> VectorWriter:
    """Open an output file for appending vectors (`.h5`/`.hdf5` or `.npz`)."""
    return VectorWriter(Path(path), resume=resume, overwrite=overwrite)


def write_vectors(
    path: str | Path, embeddings: Sequence[Embedding], *, overwrite: bool = False
) -> None:
    """Write `embeddings` to a new OUTPUT (any of `FORMATS`; a table's rows in the order given)
    as `protssl embed` writes them: what the SDK's and `protssl.embed`'s results `.save()` do."""
    if not embeddings:
        raise InvalidInputError(f"nothing to save to {str(path)!r}: the result holds no vectors")
    check_pooling(path, embeddings[0].provenance.pooling)
    if Path(path).exists() and not overwrite:
        raise InvalidInputError(f"{str(path)!r} exists: save(..., overwrite=True) replaces it")
    with open_writer(path, overwrite=overwrite) as writer:
        for position, embedding in enumerate(embeddings):
            writer.write(embedding, position=position)


def read_vectors(path: str | Path) -> Iterator[tuple[str, np.ndarray, Mapping[str, Any]]]:
    """Yield `(record id, vector, attributes)` from a file written by `VectorWriter`, or from every
    part of a sharded output folder in shard order."""
    path = Path(path)
    if path.is_dir():
        for part in sorted(path.glob("part-*.h5")):
            yield from read_vectors(part)
        return
    kind = _check_format(path)
    if kind == "table":
        for row in _table_rows(path):
            record, attrs = _table_row(row)
            yield record, np.array(row[len(_TABLE_FIXED) :], dtype=np.float32), attrs
        return
    if kind == "h5":
        with h5py.File(path, "r") as handle:
            shared = {k: _plain(v) for k, v in handle.attrs.items()}
            for name in handle:
                dataset = handle[name]
                attrs = {**shared, **{k: _plain(v) for k, v in dataset.attrs.items()}}
                yield record_id(name), dataset[()], attrs
        return
    with _load_npz(path) as data:
        meta, names = _npz_index(data)
        for name in names:
            yield record_id(name), data[name], {**meta["shared"], **meta["records"][name]}


def _read_index(path: Path, kind: str) -> tuple[dict[str, Any] | None, list[str]]:
    """An existing OUTPUT's shared provenance and dataset names; one clear error if unreadable."""
    what = {"h5": "an HDF5", "npz": "a .npz", "table": f"a {path.suffix.lower()}"}[kind]
    try:
        if kind == "table":
            names, shared = [], None
            for row in _table_rows(path):
                record, attrs = _table_row(row)
                names.append(dataset_name(record))
                shared = shared or {k: attrs[k] for k in _SHARED}
            return shared, names
        if kind == "h5":
            with h5py.File(path, "r") as handle:
                shared = (
                    {k: _plain(handle.attrs[k]) for k in _SHARED}
                    if "model_sha256" in handle.attrs
                    else None
                )
                return shared, list(handle.keys())
        with _load_npz(path) as data:
            meta, names = _npz_index(data, required=False)
            return meta.get("shared"), names
    except _UNREADABLE as exc:
        raise InvalidInputError(
            f"output {str(path)!r} is not {what} file protssl can read ({first_line(exc)}): "
            "move it away, or pass --overwrite to replace it"
        ) from None


def _table_rows(path: Path) -> Iterator[list[str]]:
    """A table's data rows as strings, after checking its header is protssl's."""
    with path.open(newline="") as handle:
        rows = csv.reader(handle, delimiter=_DELIMITERS[path.suffix.lower()])
        header = next(rows, None)
        if header is None or tuple(header[: len(_TABLE_FIXED)]) != _TABLE_FIXED:
            raise ValueError(
                f"its header is not protssl's ({', '.join(_TABLE_FIXED)}, v0, v1, ...)"
            )
        yield from rows


def _table_row(row: list[str]) -> tuple[str, dict[str, Any]]:
    """A table row's record id and its attributes, typed as HDF5 gives them."""
    record, length, windows, windowed, labels, *rest = row[: len(_TABLE_FIXED)]
    attrs: dict[str, Any] = dict(zip(_SHARED, rest, strict=True))
    attrs["layer"] = int(attrs["layer"])
    attrs.update(id=record, length=int(length), windows=int(windows), windowed=windowed == "true")
    attrs["labels"] = labels
    return record, attrs


def _in_input_order(chunks: list[Path]) -> list[tuple[str, tuple[int, dict[str, Any]]]]:
    """The chunks' records as (name, (chunk index, attributes)), the last chunk to hold a record
    winning: by input position where the writer gave one, the rest after them in the order
    written."""
    latest: dict[str, tuple[int, dict[str, Any]]] = {}
    for index, chunk in enumerate(chunks):
        meta, names = _read_chunk_index(chunk)
        latest.update((name, (index, meta["records"][name])) for name in names)
    return sorted(latest.items(), key=lambda item: _position_key(item[1][1]))


def _position_key(attrs: dict[str, Any]) -> tuple[bool, int]:
    """Sorts records by input position, those without one after them (a stable sort keeps their
    order)."""
    position = attrs.get("position")
    return (position is None, position or 0)


def _stored(attrs: dict[str, Any]) -> dict[str, Any]:
    """A record's attributes as OUTPUT keeps them: its input position only orders it."""
    return {k: v for k, v in attrs.items() if k != "position"}


def _chunks(journal: Path) -> list[Path]:
    return sorted(journal.glob("chunk-*.npz")) if journal.is_dir() else []


def _read_chunk_index(chunk: Path) -> tuple[dict[str, Any], list[str]]:
    with _load_npz(chunk) as data:
        return _npz_index(data)


class _ChunkVectors:
    """Vectors read one at a time from a journal's chunks, the last `keep` chunks left open: a
    table's rows come in input order, which visits the chunks nearly in the order written."""

    def __init__(self, chunks: list[Path], keep: int = 32) -> None:
        self._chunks, self._keep = chunks, keep
        self._open: OrderedDict[int, tuple[Any, Any]] = OrderedDict()

    def get(self, index: int, name: str) -> np.ndarray:
        if index in self._open:
            self._open.move_to_end(index)
        else:
            if len(self._open) == self._keep:
                self._close(*self._open.popitem(last=False)[1])
            handle = self._chunks[index].open("rb")
            self._open[index] = (handle, np.load(handle, allow_pickle=False))
        return np.asarray(self._open[index][1][name])

    @staticmethod
    def _close(handle: Any, data: Any) -> None:
        data.close()
        handle.close()

    def __enter__(self) -> _ChunkVectors:
        return self

    def __exit__(self, *exc: object) -> None:
        for handle, data in self._open.values():
            self._close(handle, data)
        self._open.clear()


def _npz_index(data: Any, *, required: bool = True) -> tuple[dict[str, Any], list[str]]:
    """A loaded .npz's provenance JSON and the names of its vectors; without the JSON, KeyError
    (or {} where it is not `required`)."""
    meta = json.loads(str(data[_NPZ_META])) if required or _NPZ_META in data else {}
    return meta, [k for k in data.files if k != _NPZ_META]


@contextmanager
def _load_npz(path: Path) -> Iterator[Any]:
    """`np.load` of a .npz through a handle closed here (np.load leaks its own on a bad zip)."""
    with path.open("rb") as handle, np.load(handle, allow_pickle=False) as data:
        yield data


def _write_atomic(path: Path, arrays: Mapping[str, Any]) -> None:
    """A .npz of `arrays` at `path`, whole or not at all (`writing_durably`). Written entry by
    entry as `np.savez` writes it, not through it: its keyword parameters (`file`,
    `allow_pickle`) are record ids too."""
    with (
        writing_durably(path) as tmp,
        tmp.open("wb") as handle,
        zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED, allowZip64=True) as archive,
    ):
        for key, value in arrays.items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, np.asarray(value), allow_pickle=False)


def _plain(value: Any) -> Any:
    """h5py attributes come back as numpy scalars; make them plain Python values."""
    return value.item() if isinstance(value, np.generic) else value
