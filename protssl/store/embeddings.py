"""The embedding cache: content-addressed vectors, read and written in batches.

A vector's key is everything it depends on (`EmbeddingKey`); `get_many` runs one SELECT per
provenance among its keys, `put_many` one INSERT per table, and an optional in-memory LRU answers
recently used vectors without SQL. Vectors never change once stored.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Mapping
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, Engine, bindparam, func, select
from sqlalchemy.exc import SQLAlchemyError

import protssl.store.common as common
import protssl.store.engine as engines
from protssl.errors import InvalidInputError, StoreError
from protssl.store.config import VECTOR_DTYPES
from protssl.store.schema import Base

log = logging.getLogger(__name__)

__all__ = [
    "MAX_KEYS_PER_QUERY",
    "SHA256_PREFIX_MIN",
    "CacheGroup",
    "EmbeddingCache",
    "EmbeddingItem",
    "EmbeddingKey",
]

MAX_KEYS_PER_QUERY = 5000
"""Cache keys looked up by one SELECT; a batch larger than this takes one query per chunk."""
SHA256_PREFIX_MIN = 6
"""The fewest hex digits of a model's sha256 that name it (`models_named`, `db prune --model`)."""

_EMBEDDINGS = Base.metadata.tables["embeddings"]
_MODELS = Base.metadata.tables["models"]
_VECTOR_BYTES = func.sum(func.length(_EMBEDDINGS.c.vector))
"""Bytes of the vectors a query selects (what `db stats` shows and `db prune` frees)."""
_LITTLE_ENDIAN = {"float32": "<f4", "float16": "<f2"}


@dataclass(frozen=True)
class EmbeddingKey:
    """Everything a cached vector depends on."""

    model_sha256: str
    """sha256 of the model's weights."""
    sequence_sha256: str
    """`sequence_sha256()` of the normalised sequence."""
    pooling: str
    """`mean`, `bos`, `segments` or `per-residue`."""
    layer: int
    """The resolved (non-negative) layer index."""
    window_policy: str
    """`WindowPolicy.describe()` for the model's window, e.g. `window:1022:256`."""
    dtype: str
    """The dtype the model computed in, e.g. `float32` or `bfloat16`."""


@dataclass(frozen=True)
class EmbeddingItem:
    """A vector to cache: its key, the sequence it belongs to, and the vector (D,) or (L, D)."""

    key: EmbeddingKey
    sequence: str
    vector: np.ndarray


_KEY_COLUMNS = ("model_sha256", "sequence_sha256", "pooling", "layer", "window_policy", "dtype")


def _key_of(row: Any) -> EmbeddingKey:
    """The cache key of a result row that has the key columns."""
    return EmbeddingKey(*(getattr(row, name) for name in _KEY_COLUMNS))


_SELECT_VECTORS = select(
    _EMBEDDINGS.c.sequence_sha256, _EMBEDDINGS.c.dim, _EMBEDDINGS.c.rows, _EMBEDDINGS.c.vector
).where(
    _EMBEDDINGS.c.vector_dtype == bindparam("vector_dtype"),
    *(_EMBEDDINGS.c[name] == bindparam(name) for name in _KEY_COLUMNS if name != "sequence_sha256"),
    _EMBEDDINGS.c.sequence_sha256.in_(bindparam("sequence_sha256", expanding=True)),
)
"""Vectors of one (model, pooling, layer, window policy, dtype) for a list of sequences.

Built once: constructing the expression on every lookup cost more than running it on SQLite.
"""


class _VectorLRU:
    """Recently used vectors in memory, bounded in bytes, least recently used dropped first.

    Vectors are content-addressed and never change once stored, so nothing here goes stale. Callers
    get copies: a caller editing its vector in place cannot change what the next caller reads.
    """

    _ENTRY_OVERHEAD = 256
    """Bytes counted per entry beside the vector (key, dict slot, array header)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[EmbeddingKey, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get_many(self, keys: Seq[EmbeddingKey]) -> dict[EmbeddingKey, np.ndarray]:
        if not self.max_bytes:
            return {}
        found: dict[EmbeddingKey, np.ndarray] = {}
        with self._lock:
            entries = self._entries
            for key in keys:
                vector = entries.get(key)
                if vector is not None:
                    entries.move_to_end(key)
                    found[key] = vector.copy()
        return found

    def put_many(self, vectors: Mapping[EmbeddingKey, np.ndarray]) -> None:
        if not self.max_bytes:
            return
        with self._lock:
            for key, vector in vectors.items():
                size = vector.nbytes + self._ENTRY_OVERHEAD
                if key in self._entries or size > self.max_bytes:
                    continue
                self._entries[key] = vector.copy()
                self._bytes += size
            while self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= dropped.nbytes + self._ENTRY_OVERHEAD

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


_ROW_OVERHEAD = 990
"""Bytes of a cached vector's row and index entries beside its values (`stored_bytes`)."""


class EmbeddingCache:
    """Content-addressed vectors, read and written in batches.

    `get_many` runs one SELECT per provenance (model, pooling, layer, …) among its keys, `put_many`
    one INSERT per table.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        vector_dtype: str = "float32",
        memory_bytes: int = 0,
        optional: bool = False,
    ) -> None:
        if vector_dtype not in VECTOR_DTYPES:
            raise InvalidInputError(
                f"vector_dtype must be float32 or float16, not {vector_dtype!r}"
            )
        self._engine = engine
        self.vector_dtype = vector_dtype
        """How vectors are stored and returned: `float32` or `float16`."""
        self.optional = optional
        """While the database is unreachable, reads miss and writes are dropped (not StoreError)."""
        self._known_models: set[tuple[str, str | None]] = set()
        """(sha256, name) of the models this cache has written: their rows exist, named so."""
        self._memory = _VectorLRU(memory_bytes)

    def get_many(self, keys: Iterable[EmbeddingKey]) -> dict[EmbeddingKey, np.ndarray]:
        """The cached vectors among `keys` (misses are absent), in `vector_dtype`, bit-exact.

        Keys held in memory (recently read or written, when `memory_bytes` > 0) skip the database.
        """
        unique = list(dict.fromkeys(keys))
        found = self._memory.get_many(unique)
        unique = [key for key in unique if key not in found]
        if not unique:
            return found
        groups: dict[tuple[str, str, int, str, str], list[str]] = defaultdict(list)
        for key in unique:
            groups[(key.model_sha256, key.pooling, key.layer, key.window_policy, key.dtype)].append(
                key.sequence_sha256
            )
        read: dict[EmbeddingKey, np.ndarray] = {}
        try:
            with self._engine.connect() as connection:
                for (model, pooling, layer, policy, dtype), shas in groups.items():
                    for start in range(0, len(shas), MAX_KEYS_PER_QUERY):
                        params = {
                            "vector_dtype": self.vector_dtype,
                            "model_sha256": model,
                            "pooling": pooling,
                            "layer": layer,
                            "window_policy": policy,
                            "dtype": dtype,
                            "sequence_sha256": shas[start : start + MAX_KEYS_PER_QUERY],
                        }
                        for row in connection.execute(_SELECT_VECTORS, params):
                            key = EmbeddingKey(
                                model, row.sequence_sha256, pooling, layer, policy, dtype
                            )
                            read[key] = self._decode(row.vector, row.dim, row.rows)
        except SQLAlchemyError as exc:
            if not self.optional:
                raise common.unavailable("reading the embedding cache", exc) from None
            log.warning(
                "embedding cache unreachable: computing without it (%s)", type(exc).__name__
            )
            return found
        self._memory.put_many(read)
        found.update(read)
        return found

    def _decode(self, data: bytes, dim: int, rows: int | None) -> np.ndarray:
        flat = np.frombuffer(data, dtype=_LITTLE_ENDIAN[self.vector_dtype])
        expected = dim * (rows if rows is not None else 1)
        if flat.size != expected:
            raise StoreError(f"a cached vector has {flat.size} values, its row says {expected}")
        shape = (rows, dim) if rows is not None else (dim,)
        return flat.astype(self.vector_dtype).reshape(shape)

    def put_many(
        self, items: Iterable[EmbeddingItem], model_names: Mapping[str, str] | None = None
    ) -> None:
        """Store vectors, (D,) or per residue (L, D); keys already present are left as they are.

        `model_names` maps a model's sha256 to its card name, which the store records for `db
        stats` and `db prune --model` (`common.ensure_models`); a model not in it is named by its
        sha256 until a write names it.
        """
        rows: dict[EmbeddingKey, dict[str, Any]] = {}
        sequences: dict[str, str] = {}
        now = common.now()
        for item in items:
            vector = np.asarray(item.vector)
            if vector.ndim not in (1, 2):
                raise InvalidInputError(
                    f"vector for sequence {item.key.sequence_sha256[:12]} has shape {vector.shape}"
                )
            if common.sequence_sha256(item.sequence) != item.key.sequence_sha256:
                raise InvalidInputError(
                    f"key sequence_sha256 {item.key.sequence_sha256[:12]}… is not the sequence's"
                )
            sequences[item.key.sequence_sha256] = item.sequence
            data = np.ascontiguousarray(vector, dtype=_LITTLE_ENDIAN[self.vector_dtype])
            rows[item.key] = {
                "model_sha256": item.key.model_sha256,
                "sequence_sha256": item.key.sequence_sha256,
                "pooling": item.key.pooling,
                "layer": item.key.layer,
                "window_policy": item.key.window_policy,
                "dtype": item.key.dtype,
                "vector_dtype": self.vector_dtype,
                "dim": int(vector.shape[-1]),
                "rows": int(vector.shape[0]) if vector.ndim == 2 else None,
                "vector": data.tobytes(),
                "created_at": now,
            }
        if not rows:
            return
        ordered = [rows[key] for key in sorted(rows, key=_sort_key)]
        names = model_names or {}
        models = {(key.model_sha256, names.get(key.model_sha256)) for key in rows}
        models -= self._known_models
        try:
            with engines.write_transaction(self._engine) as connection:
                common.ensure_models(connection, dict(models))
                common.ensure_sequences(connection, sequences.values())
                inserted = connection.execute(
                    common.insert(connection, _EMBEDDINGS)
                    .on_conflict_do_nothing()
                    .returning(*(_EMBEDDINGS.c[name] for name in _KEY_COLUMNS)),
                    ordered,
                ).all()
        except SQLAlchemyError as exc:
            if not self.optional:
                raise common.unavailable(f"writing {len(rows)} vectors to the cache", exc) from None
            log.warning("embedding cache unreachable: %d vectors not kept", len(rows))
            return
        self._known_models |= models
        if self._memory.max_bytes:
            # only rows this call inserted (where another writer won, its bits are the cached
            # ones), decoded as a read decodes them
            won = {key: rows[key] for key in map(_key_of, inserted)}
            self._memory.put_many(
                {key: self._decode(r["vector"], r["dim"], r["rows"]) for key, r in won.items()}
            )

    @property
    def local_file(self) -> Path | None:
        """The SQLite file the vectors go to; None for a server database or memory."""
        database = self._engine.url.database
        if self._engine.dialect.name != "sqlite" or not database or database == ":memory:":
            return None
        return Path(database)

    def stored_bytes(self, vectors: int, values: int, residues: int) -> int:
        """About what `vectors` new vectors of `values` values in all, of sequences of `residues`
        residues, take in the store: the values, ~1 kB of row and index beside each, and the
        sequences' text (measured on the whole corpus: 75,731 mean vectors of 320 float32 values
        took 171.6 MB of rows and index, their 32.9 M residues 49.7 MB)."""
        itemsize = np.dtype(self.vector_dtype).itemsize
        return values * itemsize + vectors * _ROW_OVERHEAD + residues * 3 // 2

    def count(self) -> int:
        """How many vectors are cached (all dtypes)."""
        with self._engine.connect() as connection:
            return int(
                connection.execute(select(func.count()).select_from(_EMBEDDINGS)).scalar_one()
            )

    def summary(self) -> list[CacheGroup]:
        """What the cache holds, per model, pooling, layer and dtype: vectors, bytes, their ages."""
        group = (
            _EMBEDDINGS.c.model_sha256,
            _MODELS.c.name,
            _EMBEDDINGS.c.pooling,
            _EMBEDDINGS.c.layer,
            _EMBEDDINGS.c.dtype,
            _EMBEDDINGS.c.vector_dtype,
        )
        query = (
            select(
                *group,
                func.count(),
                _VECTOR_BYTES,
                func.min(_EMBEDDINGS.c.created_at),
                func.max(_EMBEDDINGS.c.created_at),
            )
            .join(_MODELS, _MODELS.c.sha256 == _EMBEDDINGS.c.model_sha256)
            .group_by(*group)
            .order_by(_VECTOR_BYTES.desc())
        )
        with common.store_errors("reading the cache's summary"), self._engine.connect() as db:
            rows = db.execute(query).all()
        return [
            CacheGroup(
                model_sha256=sha,
                model_name=name,
                pooling=pooling,
                layer=layer,
                dtype=dtype,
                vector_dtype=vector_dtype,
                vectors=count,
                bytes=int(nbytes or 0),
                oldest=common.utc(oldest),
                newest=common.utc(newest),
            )
            for sha, name, pooling, layer, dtype, vector_dtype, count, nbytes, oldest, newest in rows
        ]

    def models_named(self, model: str) -> list[tuple[str, str]]:
        """(sha256, name) of the models whose name is `model` or whose sha256 starts with it (six
        characters at least: an empty or short prefix would name every model)."""
        named = _MODELS.c.name == model
        if len(model) >= SHA256_PREFIX_MIN:
            named |= _MODELS.c.sha256.startswith(model.lower(), autoescape=True)
        query = select(_MODELS.c.sha256, _MODELS.c.name).where(named)
        with common.store_errors("reading the store's models"), self._engine.connect() as db:
            return [(sha, name) for sha, name in db.execute(query)]

    def prune(
        self,
        *,
        models: Seq[str] | None = None,
        pooling: str | None = None,
        older_than: dt.datetime | None = None,
        dry_run: bool = False,
    ) -> tuple[int, int]:
        """Delete the cached vectors of `models` (sha256s), `pooling`, created before `older_than`
        (None: any); (vectors, bytes) deleted, or that would be with `dry_run`. The sequences stay
        (a few hundred bytes each, and a concurrent writer may be about to refer to one)."""
        where: list[ColumnElement[bool]] = []
        if models is not None:
            where.append(_EMBEDDINGS.c.model_sha256.in_(list(models)))
        if pooling is not None:
            where.append(_EMBEDDINGS.c.pooling == pooling)
        if older_than is not None:
            where.append(_EMBEDDINGS.c.created_at < older_than)
        measure = select(func.count(), _VECTOR_BYTES).where(*where)
        with (
            common.store_errors("pruning the cache"),
            engines.write_transaction(self._engine) as connection,
        ):
            count, nbytes = connection.execute(measure).one()
            if not dry_run and count:
                connection.execute(_EMBEDDINGS.delete().where(*where))
        self._memory.clear()
        return int(count), int(nbytes or 0)


@dataclass(frozen=True)
class CacheGroup:
    """The cached vectors of one model, pooling, layer and dtype."""

    model_sha256: str
    model_name: str
    pooling: str
    layer: int
    dtype: str
    vector_dtype: str
    vectors: int
    bytes: int
    oldest: dt.datetime
    newest: dt.datetime


def _sort_key(key: EmbeddingKey) -> tuple[str, str, str, int, str, str]:
    return (
        key.model_sha256,
        key.sequence_sha256,
        key.pooling,
        key.layer,
        key.window_policy,
        key.dtype,
    )
