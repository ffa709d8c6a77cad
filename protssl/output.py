"""Vectors on disk: HDF5 (one dataset per record id, provenance in attributes) or `.npz`.

HDF5 layout (`h5py`): file attributes hold the shared provenance (model name and sha256, layer,
pooling, dtype, window policy, protssl version); each record is a root dataset named by its id,
with `/` and `%` percent-escaped (`sp|P1/2` → `sp|P1%2F2`), holding float32 `(D,)` or `(L, D)`,
and attributes `id`, `length`, `windows`, `windowed` and `labels`. The file is flushed after every
batch, so an interrupted job keeps what it computed and `--resume` skips those ids.

`.npz` keeps the same names as keys and the provenance as JSON under `__provenance__`; it is
written once (atomically) when the job ends or is interrupted.

A sharded output (the Ray engine's) is a folder of such HDF5 files, `part-00000.h5`, one per
shard of the input, each renamed into place only when complete; `read_vectors` reads the folder
as one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from protssl import __version__
from protssl.embedding import Embedding, Provenance
from protssl.errors import InvalidInputError

__all__ = [
    "FORMATS",
    "VectorWriter",
    "check_output",
    "dataset_name",
    "open_writer",
    "part_name",
    "read_vectors",
    "record_id",
]

FORMATS = (".h5", ".hdf5", ".npz")
_SHARED = ("model_name", "model_sha256", "layer", "pooling", "dtype", "window_policy")
_NPZ_META = "__provenance__"


def dataset_name(record_id: str) -> str:
    """The dataset/key name for a record id: `%` and `/` escaped so ids never make groups."""
    return record_id.replace("%", "%25").replace("/", "%2F")


def record_id(name: str) -> str:
    """Inverse of `dataset_name`."""
    return name.replace("%2F", "/").replace("%25", "%")


def part_name(index: int) -> str:
    """The file name of shard `index` in a sharded output folder."""
    return f"part-{index:05d}.h5"


def _check_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise InvalidInputError(
            f"output {str(path)!r}: unknown format {suffix or '(none)'}; use {', '.join(FORMATS)}"
        )
    return "npz" if suffix == ".npz" else "h5"


def check_output(path: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse an output that exists unless told to continue it (`resume`) or replace it."""
    path = Path(path)
    if path.exists() and not (resume or overwrite):
        raise InvalidInputError(
            f"output {str(path)!r} exists: pass --resume to continue it or --overwrite to replace it"
        )


class VectorWriter:
    """Appends embeddings to one output file; refuses to mix vectors of different provenance."""

    def __init__(self, path: Path, *, resume: bool, overwrite: bool) -> None:
        self.path = path
        self.kind = _check_format(path)
        self._shared: dict[str, Any] | None = None
        self._npz: dict[str, np.ndarray] = {}
        self._npz_rows: dict[str, dict[str, Any]] = {}
        check_output(path, resume=resume, overwrite=overwrite)
        if path.exists() and overwrite and not resume:
            path.unlink()
        if self.kind == "h5":
            self._h5: h5py.File | None = h5py.File(path, "a")
            if "model_sha256" in self._h5.attrs:
                self._shared = {k: _plain(self._h5.attrs[k]) for k in _SHARED}
        else:
            self._h5 = None
            if path.exists():
                self._load_npz()

    def _load_npz(self) -> None:
        with np.load(self.path, allow_pickle=False) as data:
            meta = json.loads(str(data[_NPZ_META])) if _NPZ_META in data else {}
            self._npz = {k: data[k] for k in data.files if k != _NPZ_META}
        self._shared = meta.get("shared")
        self._npz_rows = meta.get("records", {})

    def existing_ids(self) -> set[str]:
        """Record ids already in the file (for `--resume`)."""
        names = list(self._h5.keys()) if self._h5 is not None else list(self._npz)
        return {record_id(n) for n in names}

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

    def write(self, embedding: Embedding) -> None:
        """Add one record's vector with its provenance."""
        shared = {k: getattr(embedding.provenance, k) for k in _SHARED}
        if self._shared is None:
            self._shared = shared
            if self._h5 is not None:
                self._h5.attrs.update(shared)
                self._h5.attrs["protssl_version"] = __version__
        else:
            self.check_provenance(embedding.provenance)
        name = dataset_name(embedding.id)
        attrs = {
            "id": embedding.id,
            "length": embedding.length,
            "windows": embedding.provenance.windows,
            "windowed": embedding.provenance.windowed,
            "labels": ";".join(embedding.labels),
        }
        vector = np.ascontiguousarray(embedding.vector, dtype=np.float32)
        if self._h5 is not None:
            if name in self._h5:
                del self._h5[name]
            dataset = self._h5.create_dataset(name, data=vector)
            dataset.attrs.update(attrs)
        else:
            self._npz[name] = vector
            self._npz_rows[name] = attrs

    def flush(self) -> None:
        """Make everything written so far durable (HDF5); `.npz` is written on close."""
        if self._h5 is not None:
            self._h5.flush()

    def close(self) -> None:
        """Flush and close; `.npz` is written to a temp file and renamed into place."""
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
            return
        if not self._npz and not self.path.exists():
            return
        meta = json.dumps({"shared": self._shared, "records": self._npz_rows})
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        arrays: dict[str, Any] = {**self._npz, _NPZ_META: np.array(meta)}
        np.savez(tmp, **arrays)
        os.replace(tmp, self.path)

    def __enter__(self) -> VectorWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_writer(path: str | Path, *, resume: bool = False, overwrite: bool = False) -> VectorWriter:
    """Open an output file for appending vectors (`.h5`/`.hdf5` or `.npz`)."""
    return VectorWriter(Path(path), resume=resume, overwrite=overwrite)


def read_vectors(path: str | Path) -> Iterator[tuple[str, np.ndarray, Mapping[str, Any]]]:
    """Yield `(record id, vector, attributes)` from a file written by `VectorWriter`, or from every
    part of a sharded output folder in shard order."""
    path = Path(path)
    if path.is_dir():
        for part in sorted(path.glob("part-*.h5")):
            yield from read_vectors(part)
        return
    if _check_format(path) == "h5":
        with h5py.File(path, "r") as handle:
            shared = {k: _plain(v) for k, v in handle.attrs.items()}
            for name in handle:
                dataset = handle[name]
                attrs = {**shared, **{k: _plain(v) for k, v in dataset.attrs.items()}}
                yield record_id(name), dataset[()], attrs
        return
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data[_NPZ_META]))
        for name in data.files:
            if name != _NPZ_META:
                yield record_id(name), data[name], {**meta["shared"], **meta["records"][name]}


def _plain(value: Any) -> Any:
    """h5py attributes come back as numpy scalars; make them plain Python values."""
    return value.item() if isinstance(value, np.generic) else value
