"""The SQL store on a real SQLite file and the real PostgreSQL: cache, models, classifiers, jobs."""

from __future__ import annotations

import itertools
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event, text

from protssl.errors import ClassifierNotFoundError, InvalidInputError, NotFoundError
from protssl.fasta import read_fasta
from protssl.store import (
    EmbeddingItem,
    EmbeddingKey,
    PredictionItem,
    Store,
    StoreConfig,
    default_url,
    repository,
    sequence_sha256,
)

MODEL = "ab" * 32
DIM = 64


@pytest.fixture(scope="module")
def sequences(sample_fasta: Path) -> list[str]:
    """300 real, distinct protein sequences."""
    unique = dict.fromkeys(r.sequence for r in itertools.islice(read_fasta(sample_fasta), 310))
    return list(unique)[:300]


def _key(sequence: str, *, pooling: str = "mean", layer: int = 6) -> EmbeddingKey:
    return EmbeddingKey(
        MODEL, sequence_sha256(sequence), pooling, layer, "window:1022:256", "float32"
    )


def _items(sequences: list[str], seed: int = 0) -> list[EmbeddingItem]:
    rng = np.random.default_rng(seed)
    return [
        EmbeddingItem(_key(s), s, rng.standard_normal(DIM).astype(np.float32)) for s in sequences
    ]


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with Store(StoreConfig(url=store_url)) as opened:
        yield opened


def _count_statements(store: Store) -> list[str]:
    statements: list[str] = []

    @event.listens_for(store.engine, "before_cursor_execute")
    def _record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    return statements


def test_mean_vectors_round_trip_bit_identical(store: Store, sequences: list[str]) -> None:
    items = _items(sequences[:100])
    store.embeddings.put_many(items)
    got = store.embeddings.get_many(item.key for item in items)
    assert len(got) == 100
    for item in items:
        assert got[item.key].dtype == np.float32
        assert got[item.key].tobytes() == item.vector.tobytes()


def test_float16_storage_round_trips_the_float16_bits(store_url: str, sequences: list[str]) -> None:
    items = _items(sequences[:20])
    with Store(StoreConfig(url=store_url, vector_dtype="float16")) as store:
        store.embeddings.put_many(items)
        got = store.embeddings.get_many(item.key for item in items)
    for item in items:
        assert got[item.key].dtype == np.float16
        assert got[item.key].tobytes() == item.vector.astype(np.float16).tobytes()
    with Store(StoreConfig(url=store_url)) as store:  # float32 readers do not see float16 rows
        assert store.embeddings.get_many(item.key for item in items) == {}


def test_per_residue_vectors_keep_their_shape(store: Store, sequences: list[str]) -> None:
    rng = np.random.default_rng(1)
    items = [
        EmbeddingItem(
            _key(s, pooling="per-residue"), s, rng.standard_normal((len(s), DIM)).astype(np.float32)
        )
        for s in sequences[:5]
    ]
    store.embeddings.put_many(items)
    got = store.embeddings.get_many(item.key for item in items)
    for item in items:
        assert got[item.key].shape == (len(item.sequence), DIM)
        assert np.array_equal(got[item.key], item.vector)


def test_get_many_is_one_query_per_provenance_and_put_many_one_statement_per_table(
    store: Store, sequences: list[str]
) -> None:
    items = _items(sequences)
    statements = _count_statements(store)
    store.embeddings.put_many(items[:200])
    writes = [s for s in statements if not s.startswith(("BEGIN", "PRAGMA"))]
    assert len(writes) == 3, writes  # models placeholder, sequences, embeddings
    statements.clear()
    found = store.embeddings.get_many(item.key for item in items)  # 200 hits, 100 misses
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1
    assert set(found) == {item.key for item in items[:200]}
    layer_keys = [_key(s, layer=layer) for s, layer in zip(sequences, (1, 2, 3) * 100, strict=True)]
    statements.clear()
    found = store.embeddings.get_many(layer_keys + [i.key for i in items])
    assert set(found) == {item.key for item in items[:200]}
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 4  # layers


def test_get_many_splits_long_key_lists_into_chunks(
    store: Store, sequences: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    items = _items(sequences[:50])
    store.embeddings.put_many(items[:40])
    monkeypatch.setattr(repository, "MAX_KEYS_PER_QUERY", 7)
    statements = _count_statements(store)
    found = store.embeddings.get_many(item.key for item in items)
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 8  # 50 / 7
    assert set(found) == {item.key for item in items[:40]}
    assert all(found[i.key].tobytes() == i.vector.tobytes() for i in items[:40])


def test_put_is_idempotent_and_keeps_the_first_vector(store: Store, sequences: list[str]) -> None:
    first = _items(sequences[:30], seed=0)
    second = _items(sequences[:30], seed=1)
    store.embeddings.put_many(first)
    store.embeddings.put_many(first)
    store.embeddings.put_many(second + second)
    assert store.embeddings.count() == 30
    got = store.embeddings.get_many(item.key for item in first)
    assert all(np.array_equal(got[item.key], item.vector) for item in first)


def test_memory_layer_answers_recent_vectors_without_sql(
    store_url: str, sequences: list[str]
) -> None:
    items = _items(sequences[:50])
    with Store(StoreConfig(url=store_url, memory_cache_mb=1)) as store:
        store.embeddings.put_many(items[:25])  # written: held in memory
        store.embeddings.get_many(item.key for item in items[25:])  # misses: nothing held
        statements = _count_statements(store)
        got = store.embeddings.get_many(item.key for item in items[:25])
        assert statements == []
        assert all(got[i.key].tobytes() == i.vector.tobytes() for i in items[:25])
        got[items[0].key][:] = 0  # a caller's edit does not reach the next caller
        again = store.embeddings.get_many([items[0].key])[items[0].key]
        assert again.tobytes() == items[0].vector.tobytes()
        with Store(StoreConfig(url=store_url)) as other:  # another process fills the rest
            other.embeddings.put_many(items[25:])
        got = store.embeddings.get_many(item.key for item in items)  # read through, then held
        assert len(got) == 50 and len([s for s in statements if "SELECT" in s.upper()]) == 1
        statements.clear()
        assert len(store.embeddings.get_many(item.key for item in items)) == 50
        assert statements == []


def test_memory_layer_is_bounded_and_drops_the_least_recent(
    store_url: str, sequences: list[str]
) -> None:
    rng = np.random.default_rng(2)
    long = [s for s in sequences if len(s) >= 400][:3]
    items = [  # 400 x 320 float32 = 512,000 bytes each: two fit in 1 MiB, three do not
        EmbeddingItem(
            _key(s, pooling="per-residue"), s, rng.standard_normal((400, 320)).astype(np.float32)
        )
        for s in long
    ]
    with Store(StoreConfig(url=store_url, memory_cache_mb=1)) as store:
        for item in items:
            store.embeddings.put_many([item])
        statements = _count_statements(store)
        got = store.embeddings.get_many(item.key for item in items)
        assert len(got) == 3
        selected = [s for s in statements if "SELECT" in s.upper()]
        assert len(selected) == 1  # the first (least recent) was dropped and read back from SQL


def test_memory_layer_holds_the_winning_writers_bits(store_url: str, sequences: list[str]) -> None:
    first = _items(sequences[:10], seed=0)
    second = _items(sequences[:10], seed=1)  # same keys, other bits (another machine's compute)
    with Store(StoreConfig(url=store_url)) as other:
        other.embeddings.put_many(first)
    with Store(StoreConfig(url=store_url, memory_cache_mb=1)) as store:
        store.embeddings.put_many(second)  # loses: the rows exist
        got = store.embeddings.get_many(item.key for item in second)
    assert all(got[i.key].tobytes() == i.vector.tobytes() for i in first)


def test_put_refuses_a_key_that_is_not_the_sequences(store: Store, sequences: list[str]) -> None:
    item = _items(sequences[:2])[0]
    with pytest.raises(InvalidInputError, match="not the sequence"):
        store.embeddings.put_many([EmbeddingItem(item.key, sequences[1], item.vector)])


def _write_worker(url: str, sequences: list[str], reverse: bool, barrier: Any) -> None:
    items = _items(sequences)
    if reverse:
        items.reverse()
    barrier.wait(timeout=60)  # both processes open (and migrate) the same fresh store at once
    with Store(StoreConfig(url=url)) as store:
        for start in range(0, len(items), 25):
            store.embeddings.put_many(items[start : start + 25])


@pytest.mark.slow
def test_two_processes_writing_the_same_vectors(store_url: str, sequences: list[str]) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [
        context.Process(target=_write_worker, args=(store_url, sequences, reverse, barrier))
        for reverse in (False, True)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0]
    with Store(StoreConfig(url=store_url)) as store:
        assert store.embeddings.count() == len(sequences)
        with store.engine.connect() as connection:
            rows = connection.execute(text("SELECT count(*) FROM sequences")).scalar_one()
        assert rows == len(sequences)
        got = store.embeddings.get_many(item.key for item in _items(sequences))
        assert all(np.array_equal(got[i.key], i.vector) for i in _items(sequences))


def test_classifier_versions(store: Store, sequences: list[str]) -> None:
    examples = [("P1", sequences[0], ("1.1.1.1",)), ("P2", sequences[1], ("2.7.11.1", "3.1.3.16"))]
    first = store.classifiers.save(
        "ec",
        model_sha256=MODEL,
        method="knn",
        params={"k": 3},
        blob=b"\x00v1",
        examples=examples,
        metrics={"accuracy": 0.5},
    )
    second = store.classifiers.save(
        "ec",
        model_sha256=MODEL,
        method="logistic",
        params={"c": 1.0},
        blob=b"\x00v2",
        examples=examples[::-1],
        metrics={"accuracy": np.float32(0.75), "per_class": np.array([0.5, 1.0])},
    )
    store.classifiers.save(
        "amr", model_sha256=MODEL, method="prototype", params={}, blob=b"", examples=[], metrics={}
    )
    assert (first.version, second.version) == (1, 2)
    assert second.metrics == {"accuracy": 0.75, "per_class": [0.5, 1.0]}
    with pytest.raises(InvalidInputError, match="params must be JSON"):
        store.classifiers.save(
            "ec",
            model_sha256=MODEL,
            method="knn",
            params={"f": len},
            blob=b"",
            examples=[],
            metrics={},
        )
    latest = store.classifiers.get("ec")
    assert latest == second
    old = store.classifiers.get("ec", 1)
    assert old.blob == b"\x00v1"
    assert old.examples == tuple(examples)
    assert old.params == {"k": 3}
    assert [(c.name, c.version) for c in store.classifiers.list()] == [("amr", 1), ("ec", 2)]
    store.predictions.put_many(
        second.id, [PredictionItem(sequences[2], "1.1.1.1", {"1.1.1.1": 0.9, "2.7.11.1": 0.1})]
    )
    assert store.predictions.get_many(second.id, [sequences[2]])[sequence_sha256(sequences[2])]
    store.classifiers.delete("ec")
    with pytest.raises(ClassifierNotFoundError, match="'ec'"):
        store.classifiers.get("ec", 1)
    with pytest.raises(ClassifierNotFoundError):
        store.classifiers.delete("ec")
    assert store.predictions.get_many(second.id, [sequences[2]]) == {}  # cascaded
    assert [c.name for c in store.classifiers.list()] == ["amr"]


def test_concurrent_saves_of_one_name_get_distinct_versions(store: Store) -> None:
    """Two threads racing on one name: each version number is taken once (PostgreSQL retries)."""

    def save_four(tag: str) -> list[int]:
        return [
            store.classifiers.save(
                "race", model_sha256=MODEL, method=tag, params={}, blob=b"", examples=[], metrics={}
            ).version
            for _ in range(4)
        ]

    with ThreadPoolExecutor(max_workers=2) as pool:
        versions = [v for result in pool.map(save_four, ["a", "b"]) for v in result]
    assert sorted(versions) == list(range(1, 9))
    assert store.classifiers.get("race").version == 8


def test_predictions_put_and_get(store: Store, sequences: list[str]) -> None:
    saved = store.classifiers.save(
        "c", model_sha256=MODEL, method="knn", params={}, blob=b"b", examples=[], metrics={}
    )
    items = [
        PredictionItem(s, None if i % 2 else "A", {"A": 0.5}) for i, s in enumerate(sequences[:10])
    ]
    store.predictions.put_many(saved.id, items)
    got = store.predictions.get_many(saved.id, sequences[:12])
    assert len(got) == 10
    assert got[sequence_sha256(sequences[1])].label is None
    assert got[sequence_sha256(sequences[0])].scores == {"A": 0.5}
    with pytest.raises(NotFoundError):
        store.predictions.put_many(saved.id + 1000, items)


def test_models_register_fills_the_placeholder(store: Store, sequences: list[str]) -> None:
    store.embeddings.put_many(_items(sequences[:1]))
    assert store.models.get(MODEL).architecture is None
    store.models.register("esm2-8m", MODEL, architecture={"num_layers": 6}, card={"name": "x"})
    stored = store.models.get(MODEL)
    assert (stored.name, stored.architecture) == ("esm2-8m", {"num_layers": 6})
    assert [m.sha256 for m in store.models.list()] == [MODEL]
    with pytest.raises(NotFoundError):
        store.models.get("cd" * 32)


def test_jobs_progress_and_finish(store: Store) -> None:
    job = store.jobs.create("embed", total=10, params={"fasta": "x.fasta"})
    assert job.status == "pending"
    running = store.jobs.update(job.id, status="running", done=4)
    assert (running.status, running.done, running.finished_at) == ("running", 4, None)
    assert [j.id for j in store.jobs.list(status="running")] == [job.id]
    done = store.jobs.update(job.id, status="succeeded", done=10)
    assert done.finished_at is not None and done.finished_at >= done.created_at
    assert store.jobs.get(job.id).params == {"fasta": "x.fasta"}
    with pytest.raises(InvalidInputError):
        store.jobs.update(job.id, status="exploded")
    with pytest.raises(NotFoundError):
        store.jobs.get("nope")


def test_sqlite_runs_in_wal_mode_with_foreign_keys(sqlite_url: str) -> None:
    with Store(StoreConfig(url=sqlite_url)) as store, store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


def test_config_checks_and_defaults(tmp_path: Path) -> None:
    assert default_url().startswith("sqlite:///") and "protssl" in default_url()
    with pytest.raises(InvalidInputError, match="sqlite"):
        StoreConfig(url="mysql://x")
    with pytest.raises(InvalidInputError, match="psycopg"):
        StoreConfig(url="postgresql://x/db")
    with pytest.raises(InvalidInputError, match="float16"):
        StoreConfig(url="sqlite://", vector_dtype="int8")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="memory_cache_mb"):
        StoreConfig(url="sqlite://", memory_cache_mb=-1)
    url = f"sqlite:///{tmp_path}/env.sqlite3"
    assert StoreConfig.from_environ({"PROTSSL_DATABASE_URL": url}).url == url
    assert StoreConfig.from_environ({"PROTSSL_DATABASE_URL": url}, url="sqlite:///a").url == (
        "sqlite:///a"
    )
    assert StoreConfig.from_environ({}).url == default_url()
    nested = tmp_path / "new" / "folder" / "s.sqlite3"
    with Store(StoreConfig(url=f"sqlite:///{nested}")):
        assert nested.is_file()
