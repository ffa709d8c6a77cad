"""The one-call API behind `protssl.embed`: records or plain sequences in, vectors in input order out."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protssl.batching import WindowPolicy
from protssl.checkpoint import LoadedModel, load_model
from protssl.embedding import EmbedConfig, Embedding, Provenance, embed_records
from protssl.fasta import FastaPolicy, SequenceItem, records_from_sequences
from protssl.pooling import pooled_width

__all__ = ["EmbedResult", "embed"]


@dataclass(frozen=True)
class EmbedResult:
    """Vectors in input order: `vectors` is (N, D) for mean/bos pooling, (N, 4 * D) for segments, a
    list of (L, D) per residue; `lengths` are the sequences' residues, `labels` the records'
    (`label=` in a FASTA header; none for plain sequences)."""

    ids: list[str]
    vectors: np.ndarray | list[np.ndarray]
    provenance: list[Provenance]
    lengths: list[int] = field(default_factory=list)
    labels: list[tuple[str, ...]] = field(default_factory=list)

    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Write these vectors to `path` as `protssl embed -o` does, labels included: `.h5`,
        `.npz`, or a `.tsv`/`.csv` table (rows in input order; pooled vectors only)."""
        from protssl.output import write_vectors

        labels = self.labels or [()] * len(self.ids)
        embeddings = [
            Embedding(i, n, v, p, tuple(ls))
            for i, n, v, p, ls in zip(
                self.ids, self.lengths, self.vectors, self.provenance, labels, strict=True
            )
        ]
        write_vectors(path, embeddings, overwrite=overwrite)


def _loaded(spec: str | Path | None) -> LoadedModel:
    """The model `spec` names, loaded once while its files stay as they were: a notebook calling
    `embed` in a loop paid a model load a call (~60 ms for the shipped model, seconds for a big
    one) against ~4 ms for a short sequence's work. A model folder saved again is read again."""
    return _load_once(None if spec is None else str(spec), _files_signature(spec))


@functools.lru_cache(maxsize=2)
def _load_once(spec: str | None, signature: tuple[tuple[str, int, int, int], ...]) -> LoadedModel:
    return load_model(spec)


def _files_signature(spec: str | Path | None) -> tuple[tuple[str, int, int, int], ...]:
    """Name, inode, size and mtime of a model path's files (a folder's own files; a preset or the
    shipped model: none), so that a model written again gets a new cache key."""
    if spec is None or not Path(spec).exists():
        return ()
    path = Path(spec).resolve()
    if path.is_file():
        stats = [(str(path), path.stat())]
    else:  # one stat a file: scandir knows which entries are files without one
        stats = sorted((e.path, e.stat()) for e in os.scandir(path) if e.is_file())
    return tuple((name, st.st_ino, st.st_size, st.st_mtime_ns) for name, st in stats)


def embed(
    records_or_sequences: Iterable[SequenceItem] | Mapping[str, str],
    *,
    model: LoadedModel | str | Path | None = None,
    ids: Sequence[str] | None = None,
    pooling: str = "mean",
    layer: int | None = None,
    max_tokens: int = 4096,
    window: WindowPolicy | None = None,
    policy: FastaPolicy | None = None,
) -> EmbedResult:
    """Embed records (protssl's or Biopython's) or plain sequences; returns ids and float32
    vectors in input order.

    `model` is a loaded model, a path or preset name, or None for the shipped default; what it
    names is loaded once and kept (the last two), and read again when its files change. Plain
    strings get ids `seq0`, `seq1`, ... unless `ids` is given (a mapping's keys are its ids); they
    follow the FASTA policy. No records give an empty (0, D) float32 array.
    """
    loaded = model if isinstance(model, LoadedModel) else _loaded(model)
    records = records_from_sequences(records_or_sequences, ids=ids, policy=policy)
    config = EmbedConfig(
        pooling=pooling,  # type: ignore[arg-type]
        layer=layer,
        max_tokens=max_tokens,
        window=window or WindowPolicy(),
    )
    by_id = {e.id: e for e in embed_records(records, loaded, config)}
    order = [r.id for r in records]
    vectors = [by_id[i].vector for i in order]
    width = pooled_width(pooling, loaded.encoder.config.embed_dim)
    stacked: np.ndarray | list[np.ndarray] = (
        vectors
        if pooling == "per-residue"
        else np.stack(vectors)
        if vectors
        else np.zeros((0, width), np.float32)
    )
    return EmbedResult(
        ids=order,
        vectors=stacked,
        provenance=[by_id[i].provenance for i in order],
        lengths=[by_id[i].length for i in order],
        labels=[by_id[i].labels for i in order],
    )
