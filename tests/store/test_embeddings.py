"""The embedding cache: bit-exact round trips, one statement per batch, the memory layer, races."""

from __future__ import annotations

import datetime as dt
import multiprocessing
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import bindparam, event, text

from protssl.errors import InvalidInputError, StoreError
from protssl.store import (
    EmbeddingItem,
    EmbeddingKey,
    Store,
    StoreConfig,
    embeddings,
    sequence_sha256,
)
from protssl.store import engine as engines

MODEL = "ab" * 32
DIM = 64


def _key(sequence: str, *, pooling: str = "mean", layer: int = 6) -> EmbeddingKey:
    return EmbeddingKey(
        MODEL, sequence_sha256(sequence), pooling, layer, "window:1022:256", "float32"
    )


def _items(sequences: list[str], seed: int = 0) -> list[EmbeddingItem]:
    rng = np.random.default_rng(seed)
    return [
        EmbeddingItem(_key(s), s, rng.standard_normal(DIM).astype(np.float32)) for s in sequences
    ]


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
    monkeypatch.setattr(embeddings, "MAX_KEYS_PER_QUERY", 7)
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


def test_a_full_sqlite_store_says_it_is_full(tmp_path: Path, sequences: list[str]) -> None:
    """SQLite's own limit on the file (max_page_count) gives the SQLITE_FULL a full disk gives."""
    with Store(StoreConfig(url=f"sqlite:///{tmp_path / 'small.sqlite3'}")) as store:
        pages = store.engine.connect().exec_driver_sql("PRAGMA page_count").scalar()
        store.engine.dispose()  # the next connections take the limit
        event.listen(
            store.engine,
            "connect",
            lambda connection, _: connection.execute(f"PRAGMA max_page_count = {pages + 4}"),
        )
        with pytest.raises(StoreError) as full:
            store.embeddings.put_many(_items(sequences[:200]))
    assert str(full.value) == (
        "the store is full (no space left on its disk, or a quota): writing 200 vectors to the "
        "cache failed; free space, or give another store (--db) or none (--no-cache)"
    )


def test_summary_and_prune_by_model_pooling_and_age(store: Store, sequences: list[str]) -> None:
    """What `protssl db stats` and `db prune` stand on, on SQLite and PostgreSQL."""
    other = "cd" * 32
    rng = np.random.default_rng(1)
    per_residue = [
        EmbeddingItem(_key(s, pooling="per-residue"), s, rng.standard_normal((len(s), DIM)))
        for s in sequences[:20]
    ]
    elsewhere = [
        EmbeddingItem(replace(_key(s), model_sha256=other), s, rng.standard_normal(DIM))
        for s in sequences[:50]
    ]
    store.embeddings.put_many([*_items(sequences[:100]), *per_residue, *elsewhere])
    groups = {(g.model_sha256, g.pooling): g for g in store.embeddings.summary()}
    assert {k: g.vectors for k, g in groups.items()} == {
        (MODEL, "mean"): 100,
        (MODEL, "per-residue"): 20,
        (other, "mean"): 50,
    }
    residues = sum(len(s) for s in sequences[:20])
    assert groups[(MODEL, "per-residue")].bytes == residues * DIM * 4
    assert groups[(MODEL, "mean")].bytes == 100 * DIM * 4
    assert store.embeddings.models_named(other[:10]) == [(other, f"sha256:{other[:12]}")]
    assert store.embeddings.models_named("ef") == []
    assert store.embeddings.models_named("") == store.embeddings.models_named(other[:5]) == []
    with store.engine.begin() as connection:  # a month ago: the first ten mean vectors of MODEL
        connection.execute(
            text(
                "UPDATE embeddings SET created_at = :then WHERE model_sha256 = :model AND "
                "pooling = 'mean' AND sequence_sha256 IN :shas"
            ).bindparams(bindparam("shas", expanding=True)),
            {
                "then": dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30),
                "model": MODEL,
                "shas": [sequence_sha256(s) for s in sequences[:10]],
            },
        )
    week_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=7)
    assert store.embeddings.prune(older_than=week_ago, dry_run=True) == (10, 10 * DIM * 4)
    assert store.embeddings.count() == 170
    assert store.embeddings.prune(older_than=week_ago) == (10, 10 * DIM * 4)
    assert store.embeddings.prune(models=[MODEL], pooling="per-residue") == (20, residues * DIM * 4)
    left = store.embeddings.get_many([_key(s) for s in sequences[:100]])
    assert set(left) == {_key(s) for s in sequences[10:100]}
    assert store.embeddings.prune(models=[other]) == (50, 50 * DIM * 4)
    assert store.embeddings.prune() == (90, 90 * DIM * 4)
    assert store.embeddings.summary() == []


def test_writes_record_the_model_name_and_name_a_placeholder_row(
    store_url: str, sequences: list[str]
) -> None:
    """A store written before names were kept holds `sha256:<12 hex>`; the next write that names
    the model names its row, and a name, once real, stays. On SQLite and PostgreSQL."""
    with Store(StoreConfig(url=store_url)) as old:
        old.embeddings.put_many(_items(sequences[:5]))  # no name: what every write used to store
        assert old.embeddings.models_named(MODEL) == [(MODEL, f"sha256:{MODEL[:12]}")]
        old.embeddings.put_many(_items(sequences[:10]), {MODEL: "tiny-test"})  # this cache too
        assert old.embeddings.models_named("tiny-test") == [(MODEL, "tiny-test")]
    with Store(StoreConfig(url=store_url)) as store:
        store.embeddings.put_many(_items(sequences[10:15]), {MODEL: "renamed"})
        store.embeddings.put_many(_items(sequences[15:20]))
        assert store.embeddings.models_named(MODEL) == [(MODEL, "tiny-test")]
        assert {g.model_name for g in store.embeddings.summary()} == {"tiny-test"}
        twin = "cd" * 32  # another model of the same name: the sha256 tells them apart
        store.embeddings.put_many(
            [
                EmbeddingItem(
                    replace(_key(sequences[0]), model_sha256=twin), sequences[0], np.ones(4)
                )
            ],
            {twin: "tiny-test"},
        )
        assert sorted(store.embeddings.models_named("tiny-test")) == [
            (MODEL, "tiny-test"),
            (twin, "tiny-test"),
        ]


@pytest.mark.parametrize("name", ["x" * 201, "nul\x00name", ""])
def test_a_name_the_store_cannot_hold_keeps_the_placeholder(
    store: Store, sequences: list[str], name: str
) -> None:
    """A card's name is free text; its vectors are kept under the sha256 rather than refused."""
    store.embeddings.put_many(_items(sequences[:3]), {MODEL: name})
    assert store.embeddings.count() == 3
    assert store.embeddings.models_named(MODEL) == [(MODEL, f"sha256:{MODEL[:12]}")]


def test_prune_empties_the_memory_layer_too(tmp_path: Path, sequences: list[str]) -> None:
    config = StoreConfig(url=f"sqlite:///{tmp_path / 'c.db'}", memory_cache_mb=8)
    with Store(config) as store:
        store.embeddings.put_many(_items(sequences[:5]))
        assert len(store.embeddings.get_many([_key(s) for s in sequences[:5]])) == 5
        store.embeddings.prune(pooling="mean")
        assert store.embeddings.get_many([_key(s) for s in sequences[:5]]) == {}


def test_a_damaged_sqlite_store_says_so_and_what_to_do(
    tmp_path: Path, sequences: list[str]
) -> None:
    """What a SQLite file written by several hosts over NFS turns into: 'file is not a database'
    at open, 'database disk image is malformed' on a read; both were 'unavailable' (retry)."""
    not_a_database = tmp_path / "notes.db"
    not_a_database.write_text("my notes, not a database\n")
    with pytest.raises(
        StoreError,
        match=r"damaged, or is not a SQLite database \(file is not a database\); move the file away",
    ):
        Store(StoreConfig(url=f"sqlite:///{not_a_database}"))
    path = tmp_path / "cache.db"
    url = f"sqlite:///{path}"
    with Store(StoreConfig(url=url)) as store:
        store.embeddings.put_many(_items(sequences[:200]))
        assert engines.reclaim_space(store.engine)
    size = path.stat().st_size
    with path.open("r+b") as damaged:  # every page after the schema's
        damaged.seek(4096)
        damaged.write(b"\xff" * (size - 4096))
    with (
        pytest.raises(StoreError, match=r"the SQLite store is damaged, .*; move the file away"),
        Store(StoreConfig(url=url)) as store,
    ):
        store.embeddings.get_many([_key(s) for s in sequences[:200]])
