"""The store's API: the embedding cache, models, classifiers, predictions and jobs.

No SQL lives outside `protssl.store`. Every call is one short transaction; a batch is one
statement per table (never one per sequence). Writes that may race (the cache, sequences,
predictions) are `INSERT … ON CONFLICT DO NOTHING`, in key order so concurrent PostgreSQL
writers cannot deadlock; on SQLite writers take the lock up front and wait the busy timeout.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import threading
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Mapping
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, Table, and_, bindparam, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from protssl.errors import ClassifierNotFoundError, InvalidInputError, NotFoundError, StoreError
from protssl.store import engine as engines
from protssl.store.config import VECTOR_DTYPES, StoreConfig
from protssl.store.schema import JOB_STATUSES, Base

__all__ = [
    "EmbeddingCache",
    "EmbeddingItem",
    "EmbeddingKey",
    "PredictionItem",
    "Store",
    "StoredClassifier",
    "StoredJob",
    "StoredModel",
    "StoredPrediction",
    "sequence_sha256",
]

log = logging.getLogger(__name__)

MAX_KEYS_PER_QUERY = 5000
"""Cache keys looked up by one SELECT; a batch larger than this takes one query per chunk."""

_MODELS = Base.metadata.tables["models"]
_SEQUENCES = Base.metadata.tables["sequences"]
_EMBEDDINGS = Base.metadata.tables["embeddings"]
_CLASSIFIERS = Base.metadata.tables["classifiers"]
_EXAMPLES = Base.metadata.tables["classifier_examples"]
_PREDICTIONS = Base.metadata.tables["predictions"]
_JOBS = Base.metadata.tables["jobs"]
_LITTLE_ENDIAN = {"float32": "<f4", "float16": "<f2"}
_FINISHED = ("succeeded", "failed", "cancelled")


def sequence_sha256(sequence: str) -> str:
    """The content address of a normalised sequence: hex sha256 of its ASCII residues."""
    try:
        return hashlib.sha256(sequence.encode("ascii")).hexdigest()
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"sequence has a non-ASCII character at position {exc.start + 1}; normalise it first"
        ) from None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _utc(value: dt.datetime) -> dt.datetime:
    """SQLite hands timestamps back naive; they were written in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)


def _json_object(value: Mapping[str, Any], what: str) -> dict[str, Any]:
    """A plain JSON copy of `value` (numpy scalars and arrays become numbers and lists)."""
    try:
        return dict(json.loads(json.dumps(dict(value), default=_numpy_to_json)))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{what} must be JSON-serialisable: {exc}") from None


def _numpy_to_json(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _insert(connection: Connection, table: Table) -> Any:
    """The dialect's INSERT, which has `on_conflict_do_nothing` on both SQLite and PostgreSQL."""
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _ensure_sequences(connection: Connection, sequences: Iterable[str]) -> None:
    rows = {sequence_sha256(s): s for s in sequences}
    if rows:
        connection.execute(
            _insert(connection, _SEQUENCES).on_conflict_do_nothing(),
            [{"sha256": k, "length": len(s), "sequence": s} for k, s in sorted(rows.items())],
        )


def _ensure_models(connection: Connection, shas: Iterable[str]) -> None:
    """Placeholder rows for models not registered yet, so foreign keys hold; `register` fills them."""
    rows = [
        {"sha256": sha, "name": f"sha256:{sha[:12]}", "created_at": _now()}
        for sha in sorted(set(shas))
    ]
    if rows:
        connection.execute(_insert(connection, _MODELS).on_conflict_do_nothing(), rows)


# ---------------------------------------------------------------------------------------------
# embeddings


@dataclass(frozen=True)
class EmbeddingKey:
    """Everything a cached vector depends on."""

    model_sha256: str
    """sha256 of the model's weights."""
    sequence_sha256: str
    """`sequence_sha256()` of the normalised sequence."""
    pooling: str
    """`mean`, `bos` or `per-residue`."""
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


class EmbeddingCache:
    """Content-addressed vectors, read and written in batches.

    `get_many` runs one SELECT per provenance (model, pooling, layer, …) among its keys, `put_many`
    one INSERT per table.
    """

    def __init__(
        self, engine: Engine, *, vector_dtype: str = "float32", memory_bytes: int = 0
    ) -> None:
        if vector_dtype not in VECTOR_DTYPES:
            raise InvalidInputError(
                f"vector_dtype must be float32 or float16, not {vector_dtype!r}"
            )
        self._engine = engine
        self.vector_dtype = vector_dtype
        """How vectors are stored and returned: `float32` or `float16`."""
        self._known_models: set[str] = set()
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
            raise StoreError(f"reading the embedding cache failed: {exc}") from exc
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

    def put_many(self, items: Iterable[EmbeddingItem]) -> None:
        """Store vectors, (D,) or per residue (L, D); keys already present are left as they are."""
        rows: dict[EmbeddingKey, dict[str, Any]] = {}
        sequences: dict[str, str] = {}
        now = _now()
        for item in items:
            vector = np.asarray(item.vector)
            if vector.ndim not in (1, 2):
                raise InvalidInputError(
                    f"vector for sequence {item.key.sequence_sha256[:12]} has shape {vector.shape}"
                )
            if sequence_sha256(item.sequence) != item.key.sequence_sha256:
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
        models = {key.model_sha256 for key in rows} - self._known_models
        try:
            with engines.write_transaction(self._engine) as connection:
                _ensure_models(connection, models)
                _ensure_sequences(connection, sequences.values())
                inserted = connection.execute(
                    _insert(connection, _EMBEDDINGS)
                    .on_conflict_do_nothing()
                    .returning(*(_EMBEDDINGS.c[name] for name in _KEY_COLUMNS)),
                    ordered,
                ).all()
        except SQLAlchemyError as exc:
            raise StoreError(f"writing {len(rows)} vectors to the cache failed: {exc}") from exc
        self._known_models |= models
        if self._memory.max_bytes:
            # only rows this call inserted (where another writer won, its bits are the cached
            # ones), decoded as a read decodes them
            won = {key: rows[key] for key in map(_key_of, inserted)}
            self._memory.put_many(
                {key: self._decode(r["vector"], r["dim"], r["rows"]) for key, r in won.items()}
            )

    def count(self) -> int:
        """How many vectors are cached (all dtypes)."""
        with self._engine.connect() as connection:
            return int(
                connection.execute(select(func.count()).select_from(_EMBEDDINGS)).scalar_one()
            )


def _sort_key(key: EmbeddingKey) -> tuple[str, str, str, int, str, str]:
    return (
        key.model_sha256,
        key.sequence_sha256,
        key.pooling,
        key.layer,
        key.window_policy,
        key.dtype,
    )


# ---------------------------------------------------------------------------------------------
# models


@dataclass(frozen=True)
class StoredModel:
    """A model the store knows: its weights' sha256, name, architecture and card (None if unknown)."""

    sha256: str
    name: str
    architecture: dict[str, Any] | None
    card: dict[str, Any] | None
    created_at: dt.datetime


class ModelRepository:
    """Models by weights sha256; registering again updates the name, architecture and card."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def register(
        self,
        name: str,
        sha256: str,
        *,
        architecture: Mapping[str, Any] | None = None,
        card: Mapping[str, Any] | None = None,
    ) -> StoredModel:
        """Insert the model or update what is known about it; returns the stored row."""
        if not name or len(sha256) != 64:
            raise InvalidInputError(f"a model needs a name and a 64-hex sha256, got {sha256!r}")
        values = {
            "sha256": sha256,
            "name": name,
            "architecture": _json_object(architecture, "architecture") if architecture else None,
            "card": _json_object(card, "card") if card else None,
            "created_at": _now(),
        }
        with engines.write_transaction(self._engine) as connection:
            statement = _insert(connection, _MODELS)
            connection.execute(
                statement.on_conflict_do_update(
                    index_elements=["sha256"],
                    set_={
                        "name": statement.excluded.name,
                        "architecture": statement.excluded.architecture,
                        "card": statement.excluded.card,
                    },
                ),
                values,
            )
        return self.get(sha256)

    def get(self, sha256: str) -> StoredModel:
        """The model with this sha256, or NotFoundError."""
        with self._engine.connect() as connection:
            row = connection.execute(select(_MODELS).where(_MODELS.c.sha256 == sha256)).first()
        if row is None:
            raise NotFoundError(f"no model with sha256 {sha256} in the store")
        return StoredModel(row.sha256, row.name, row.architecture, row.card, _utc(row.created_at))

    def list(self) -> list[StoredModel]:
        """All models, by name."""
        with self._engine.connect() as connection:
            rows = connection.execute(select(_MODELS).order_by(_MODELS.c.name, _MODELS.c.sha256))
            return [
                StoredModel(r.sha256, r.name, r.architecture, r.card, _utc(r.created_at))
                for r in rows
            ]


# ---------------------------------------------------------------------------------------------
# classifiers

Example = tuple[str, str, tuple[str, ...]]


@dataclass(frozen=True)
class StoredClassifier:
    """One version of a named classifier, with the examples it was fitted on."""

    id: int
    name: str
    version: int
    model_sha256: str
    method: str
    params: dict[str, Any]
    blob: bytes
    examples: tuple[Example, ...]
    """(record id, normalised sequence, labels) in the order they were saved."""
    metrics: dict[str, Any]
    created_at: dt.datetime


def _one_version(name: str, version: int | None, *columns: Any) -> Any:
    """SELECT `columns` of version `version` of classifier `name` (the latest if None)."""
    statement = select(*columns).where(_CLASSIFIERS.c.name == name)
    if version is None:
        return statement.order_by(_CLASSIFIERS.c.version.desc()).limit(1)
    return statement.where(_CLASSIFIERS.c.version == version)


def _not_found(name: str, version: int | None) -> str:
    which = f"version {version} of " if version is not None else ""
    return f"no classifier {which}{name!r} in the store"


class ClassifierRepository:
    """Named, versioned classifiers: saving a name again adds a version; old versions stay."""

    _SAVE_ATTEMPTS = 5

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def save(
        self,
        name: str,
        *,
        model_sha256: str,
        method: str,
        params: dict[str, Any],
        blob: bytes,
        examples: Seq[Example],
        metrics: dict[str, Any],
    ) -> StoredClassifier:
        """Store a new version of `name` (1 if new) and return it."""
        if not name or len(name) > 200:
            raise InvalidInputError(f"classifier name must be 1-200 characters, got {name!r}")
        params = _json_object(params, "params")
        metrics = _json_object(metrics, "metrics")
        examples = tuple(
            (str(i), str(s), tuple(str(x) for x in labels)) for i, s, labels in examples
        )
        attempt = 1
        while True:
            try:
                return self._insert_version(
                    name, model_sha256, method, params, bytes(blob), examples, metrics
                )
            except IntegrityError as exc:
                # another writer took this version number first (PostgreSQL); try the next one
                if attempt == self._SAVE_ATTEMPTS:
                    raise StoreError(f"saving classifier {name!r} failed: {exc}") from exc
                log.info("classifier %s: version taken by a concurrent save, retrying", name)
                attempt += 1

    def _insert_version(
        self,
        name: str,
        model_sha256: str,
        method: str,
        params: dict[str, Any],
        blob: bytes,
        examples: tuple[Example, ...],
        metrics: dict[str, Any],
    ) -> StoredClassifier:
        created = _now()
        with engines.write_transaction(self._engine) as connection:
            _ensure_models(connection, [model_sha256])
            _ensure_sequences(connection, (sequence for _, sequence, _ in examples))
            latest = connection.execute(
                select(func.max(_CLASSIFIERS.c.version)).where(_CLASSIFIERS.c.name == name)
            ).scalar_one()
            version = (latest or 0) + 1
            classifier_id = connection.execute(
                _CLASSIFIERS.insert()
                .values(
                    name=name,
                    version=version,
                    model_sha256=model_sha256,
                    method=method,
                    params=params,
                    blob=blob,
                    metrics=metrics,
                    created_at=created,
                )
                .returning(_CLASSIFIERS.c.id)
            ).scalar_one()
            if examples:
                connection.execute(
                    _EXAMPLES.insert(),
                    [
                        {
                            "classifier_id": classifier_id,
                            "position": position,
                            "record_id": record_id,
                            "sequence_sha256": sequence_sha256(sequence),
                            "labels": list(labels),
                        }
                        for position, (record_id, sequence, labels) in enumerate(examples)
                    ],
                )
        return StoredClassifier(
            id=classifier_id,
            name=name,
            version=version,
            model_sha256=model_sha256,
            method=method,
            params=params,
            blob=blob,
            examples=examples,
            metrics=metrics,
            created_at=created,
        )

    def get(self, name: str, version: int | None = None) -> StoredClassifier:
        """Version `version` of `name` (the latest if None), or ClassifierNotFoundError."""
        with self._engine.connect() as connection:
            row = connection.execute(_one_version(name, version, _CLASSIFIERS)).first()
            if row is None:
                raise ClassifierNotFoundError(_not_found(name, version))
            examples = self._examples(connection, [row.id])
        return self._from_row(row, examples.get(row.id, ()))

    def identity(self, name: str, version: int | None = None) -> tuple[int, int, dt.datetime]:
        """(id, version, created_at) of `get(name, version)` without its blob or examples.

        A saved version never changes, so this triple names its content: what memos key on.
        """
        columns = (_CLASSIFIERS.c.id, _CLASSIFIERS.c.version, _CLASSIFIERS.c.created_at)
        with self._engine.connect() as connection:
            row = connection.execute(_one_version(name, version, *columns)).first()
        if row is None:
            raise ClassifierNotFoundError(_not_found(name, version))
        return row.id, row.version, _utc(row.created_at)

    def list(self) -> list[StoredClassifier]:
        """The latest version of every classifier, by name."""
        latest = (
            select(_CLASSIFIERS.c.name, func.max(_CLASSIFIERS.c.version).label("version"))
            .group_by(_CLASSIFIERS.c.name)
            .subquery()
        )
        statement = (
            select(_CLASSIFIERS)
            .join(
                latest,
                and_(
                    _CLASSIFIERS.c.name == latest.c.name,
                    _CLASSIFIERS.c.version == latest.c.version,
                ),
            )
            .order_by(_CLASSIFIERS.c.name)
        )
        with self._engine.connect() as connection:
            rows = connection.execute(statement).all()
            examples = self._examples(connection, [row.id for row in rows])
        return [self._from_row(row, examples.get(row.id, ())) for row in rows]

    def delete(self, name: str) -> None:
        """Delete every version of `name` with its examples and predictions."""
        with engines.write_transaction(self._engine) as connection:
            result = connection.execute(_CLASSIFIERS.delete().where(_CLASSIFIERS.c.name == name))
        if result.rowcount == 0:
            raise ClassifierNotFoundError(f"no classifier {name!r} in the store")

    @staticmethod
    def _examples(connection: Connection, ids: Seq[int]) -> dict[int, tuple[Example, ...]]:
        if not ids:
            return {}
        rows = connection.execute(
            select(
                _EXAMPLES.c.classifier_id,
                _EXAMPLES.c.record_id,
                _SEQUENCES.c.sequence,
                _EXAMPLES.c.labels,
            )
            .join(_SEQUENCES, _SEQUENCES.c.sha256 == _EXAMPLES.c.sequence_sha256)
            .where(_EXAMPLES.c.classifier_id.in_(ids))
            .order_by(_EXAMPLES.c.classifier_id, _EXAMPLES.c.position)
        )
        grouped: dict[int, list[Example]] = defaultdict(list)
        for row in rows:
            grouped[row.classifier_id].append((row.record_id, row.sequence, tuple(row.labels)))
        return {key: tuple(value) for key, value in grouped.items()}

    @staticmethod
    def _from_row(row: Any, examples: tuple[Example, ...]) -> StoredClassifier:
        return StoredClassifier(
            id=row.id,
            name=row.name,
            version=row.version,
            model_sha256=row.model_sha256,
            method=row.method,
            params=dict(row.params),
            blob=bytes(row.blob),
            examples=examples,
            metrics=dict(row.metrics),
            created_at=_utc(row.created_at),
        )


# ---------------------------------------------------------------------------------------------
# predictions


@dataclass(frozen=True)
class PredictionItem:
    """A classifier's answer for one sequence: the label (None: it abstained) and per-label scores."""

    sequence: str
    label: str | None
    scores: Mapping[str, float]


@dataclass(frozen=True)
class StoredPrediction:
    """A stored prediction of one classifier version for one sequence."""

    classifier_id: int
    sequence_sha256: str
    label: str | None
    scores: dict[str, float]
    created_at: dt.datetime


class PredictionRepository:
    """Predictions by (classifier version, sequence); a repeated put keeps the first."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def put_many(self, classifier_id: int, items: Iterable[PredictionItem]) -> None:
        """Store predictions of classifier version `classifier_id` in one statement."""
        now = _now()
        rows: dict[str, dict[str, Any]] = {}
        sequences = []
        for item in items:
            sha = sequence_sha256(item.sequence)
            sequences.append(item.sequence)
            rows[sha] = {
                "classifier_id": classifier_id,
                "sequence_sha256": sha,
                "label": item.label,
                "scores": {str(k): float(v) for k, v in item.scores.items()},
                "created_at": now,
            }
        if not rows:
            return
        try:
            with engines.write_transaction(self._engine) as connection:
                _ensure_sequences(connection, sequences)
                connection.execute(
                    _insert(connection, _PREDICTIONS).on_conflict_do_nothing(),
                    [rows[sha] for sha in sorted(rows)],
                )
        except IntegrityError as exc:
            raise NotFoundError(f"no classifier version with id {classifier_id}") from exc

    def get_many(self, classifier_id: int, sequences: Iterable[str]) -> dict[str, StoredPrediction]:
        """Stored predictions for these sequences, keyed by `sequence_sha256`; misses are absent."""
        shas = sorted({sequence_sha256(s) for s in sequences})
        found: dict[str, StoredPrediction] = {}
        with self._engine.connect() as connection:
            for start in range(0, len(shas), MAX_KEYS_PER_QUERY):
                rows = connection.execute(
                    select(_PREDICTIONS).where(
                        _PREDICTIONS.c.classifier_id == classifier_id,
                        _PREDICTIONS.c.sequence_sha256.in_(
                            shas[start : start + MAX_KEYS_PER_QUERY]
                        ),
                    )
                )
                for row in rows:
                    found[row.sequence_sha256] = StoredPrediction(
                        row.classifier_id,
                        row.sequence_sha256,
                        row.label,
                        dict(row.scores),
                        _utc(row.created_at),
                    )
        return found


# ---------------------------------------------------------------------------------------------
# jobs


@dataclass(frozen=True)
class StoredJob:
    """A batch job's state: enough to report progress and to resume it."""

    id: str
    kind: str
    status: str
    total: int | None
    done: int
    failed: int
    params: dict[str, Any]
    error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None


class JobRepository:
    """Batch jobs: created `pending`, updated as they run, finished with a final status."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def create(
        self, kind: str, *, total: int | None = None, params: Mapping[str, Any] | None = None
    ) -> StoredJob:
        """A new pending job with a random id."""
        now = _now()
        values = {
            "id": uuid.uuid4().hex,
            "kind": kind,
            "status": "pending",
            "total": total,
            "done": 0,
            "failed": 0,
            "params": _json_object(params or {}, "job params"),
            "error": None,
            "created_at": now,
            "updated_at": now,
            "finished_at": None,
        }
        with engines.write_transaction(self._engine) as connection:
            connection.execute(_JOBS.insert(), values)
        return StoredJob(**values)  # type: ignore[arg-type]

    def update(
        self,
        job_id: str,
        *,
        status: str | None = None,
        total: int | None = None,
        done: int | None = None,
        failed: int | None = None,
        error: str | None = None,
    ) -> StoredJob:
        """Set the given fields; a final status (succeeded, failed, cancelled) stamps finished_at."""
        if status is not None and status not in JOB_STATUSES:
            raise InvalidInputError(f"job status must be one of {', '.join(JOB_STATUSES)}")
        now = _now()
        changes: dict[str, Any] = {"updated_at": now}
        for field_name, value in (
            ("status", status),
            ("total", total),
            ("done", done),
            ("failed", failed),
            ("error", error),
        ):
            if value is not None:
                changes[field_name] = value
        if status in _FINISHED:
            changes["finished_at"] = now
        with engines.write_transaction(self._engine) as connection:
            result = connection.execute(_JOBS.update().where(_JOBS.c.id == job_id).values(changes))
        if result.rowcount == 0:
            raise NotFoundError(f"no job {job_id!r} in the store")
        return self.get(job_id)

    def get(self, job_id: str) -> StoredJob:
        """The job with this id, or NotFoundError."""
        with self._engine.connect() as connection:
            row = connection.execute(select(_JOBS).where(_JOBS.c.id == job_id)).first()
        if row is None:
            raise NotFoundError(f"no job {job_id!r} in the store")
        return self._from_row(row)

    def list(self, *, status: str | None = None) -> list[StoredJob]:
        """Jobs, newest first; only those with `status` if given (e.g. `running`, to resume)."""
        statement = select(_JOBS).order_by(_JOBS.c.created_at.desc())
        if status is not None:
            statement = statement.where(_JOBS.c.status == status)
        with self._engine.connect() as connection:
            return [self._from_row(row) for row in connection.execute(statement)]

    @staticmethod
    def _from_row(row: Any) -> StoredJob:
        return StoredJob(
            id=row.id,
            kind=row.kind,
            status=row.status,
            total=row.total,
            done=row.done,
            failed=row.failed,
            params=dict(row.params),
            error=row.error,
            created_at=_utc(row.created_at),
            updated_at=_utc(row.updated_at),
            finished_at=_utc(row.finished_at) if row.finished_at is not None else None,
        )


# ---------------------------------------------------------------------------------------------
# the store


class Store:
    """The SQL store: open it from a `StoreConfig` (migrated on open), use it, close it.

    >>> with Store(StoreConfig(url="sqlite:///cache.sqlite3")) as store:  # doctest: +SKIP
    ...     vectors = store.embeddings.get_many(keys)
    """

    def __init__(self, config: StoreConfig | None = None) -> None:
        self.config = config or StoreConfig()
        self.engine = engines.create_store_engine(self.config)
        try:
            if self.config.migrate:
                engines.upgrade(self.engine)
        except BaseException:
            self.engine.dispose()
            raise
        self.embeddings = EmbeddingCache(
            self.engine,
            vector_dtype=self.config.vector_dtype,
            memory_bytes=self.config.memory_cache_mb * 1024 * 1024,
        )
        self.models = ModelRepository(self.engine)
        self.classifiers = ClassifierRepository(self.engine)
        self.predictions = PredictionRepository(self.engine)
        self.jobs = JobRepository(self.engine)

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
