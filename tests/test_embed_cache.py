"""`embed_records` and `embed_batch` through the store's cache: what is cached runs no forward."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from protssl.batching import WindowPolicy
from protssl.checkpoint import LoadedModel, load_model
from protssl.embedding import CacheStats, EmbedConfig, Embedding, embed_batch, embed_records
from protssl.fasta import ProteinRecord, read_fasta
from protssl.store import Store, StoreConfig

WINDOW = WindowPolicy(overlap=16)


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> LoadedModel:
    """A small random-weight encoder loaded from a real model folder; 62-residue windows."""
    return load_model(tiny_model_dir, dtype="float32")


@pytest.fixture(scope="module")
def records(sample_fasta: Path) -> list[ProteinRecord]:
    """40 real proteins; those over 62 residues are embedded in windows."""
    return list(itertools.islice(read_fasta(sample_fasta), 40))


@pytest.fixture
def store(sqlite_url: str) -> Iterator[Store]:
    with Store(StoreConfig(url=sqlite_url)) as opened:
        yield opened


class _Forwards:
    """Counts encoder forward calls with a real forward hook."""

    def __init__(self, model: LoadedModel) -> None:
        self.calls = 0
        self._handle = model.encoder.register_forward_hook(self._hook)

    def _hook(self, *_args: object) -> None:
        self.calls += 1

    def close(self) -> None:
        self._handle.remove()


def _run(
    records: list[ProteinRecord], model: LoadedModel, store: Store | None, config: EmbedConfig
) -> tuple[dict[str, Embedding], CacheStats, int]:
    stats = CacheStats()
    forwards = _Forwards(model)
    try:
        cache = store.embeddings if store is not None else None
        out = {e.id: e for e in embed_records(records, model, config, cache=cache, stats=stats)}
    finally:
        forwards.close()
    return out, stats, forwards.calls


@pytest.mark.parametrize("pooling", ["mean", "per-residue"])
def test_second_run_computes_nothing_and_is_bit_identical(
    records: list[ProteinRecord], model: LoadedModel, store: Store, pooling: str
) -> None:
    config = EmbedConfig(pooling=pooling, window=WINDOW)  # type: ignore[arg-type]
    first, stats, calls = _run(records, model, store, config)
    assert (stats.computed, stats.cached) == (len(records), 0)
    assert calls > 0
    second, stats, calls = _run(records, model, store, config)
    assert (stats.computed, stats.cached, calls) == (0, len(records), 0)
    assert first.keys() == second.keys() == {r.id for r in records}
    for record_id, embedding in first.items():
        again = second[record_id]
        assert again.vector.dtype == np.float32
        assert again.vector.tobytes() == embedding.vector.tobytes()
        assert again.provenance == embedding.provenance
        assert (again.length, again.labels) == (embedding.length, embedding.labels)
    assert any(e.provenance.windowed for e in second.values())


def test_a_partly_cached_run_computes_only_the_rest(
    records: list[ProteinRecord], model: LoadedModel, store: Store
) -> None:
    config = EmbedConfig(window=WINDOW)
    uncached, _, _ = _run(records[:30], model, None, config)
    _run(records[:10], model, store, config)
    mixed, stats, _ = _run(records[:30], model, store, config)
    assert (stats.computed, stats.cached) == (20, 10)
    for record_id, embedding in uncached.items():
        np.testing.assert_allclose(mixed[record_id].vector, embedding.vector, rtol=1e-5, atol=1e-6)


def test_vectors_are_written_back_batch_by_batch(
    records: list[ProteinRecord], model: LoadedModel, store: Store
) -> None:
    """An interrupted run keeps every finished batch in the cache, and every vector it handed out:
    a batch is stored before its first vector is yielded."""
    batches = 0

    def count_batch(_residues: int) -> None:
        nonlocal batches
        batches += 1

    config = EmbedConfig(max_tokens=1024, window=WINDOW)
    stream = embed_records(
        records[:40], model, config, cache=store.embeddings, on_batch=count_batch
    )
    seen = 0
    while batches < 2:
        next(stream)
        seen += 1
    stream.close()
    assert 0 < seen <= store.embeddings.count() < 40
    _, stats, _ = _run(records[:40], model, store, config)
    assert stats.cached == store.embeddings.count() - stats.computed


def test_float16_cache_gives_the_same_bits_on_both_runs(
    records: list[ProteinRecord], model: LoadedModel, sqlite_url: str
) -> None:
    config = EmbedConfig(window=WINDOW)
    with Store(StoreConfig(url=sqlite_url, vector_dtype="float16")) as store:
        first, _, _ = _run(records[:8], model, store, config)
        second, stats, _ = _run(records[:8], model, store, config)
    assert stats.computed == 0
    for record_id, embedding in first.items():
        assert embedding.vector.tobytes() == second[record_id].vector.tobytes()
        assert np.array_equal(embedding.vector, embedding.vector.astype(np.float16))


def test_embed_batch_runs_the_given_batch_and_says_which_came_from_the_cache(
    records: list[ProteinRecord], model: LoadedModel, store: Store
) -> None:
    """Results by position, so repeated ids are fine; one forward for a batch within budget."""
    chosen = records[:6]  # some windowed: still one forward, 64 rows of 64 tokens at most
    batch = [*chosen, ProteinRecord(chosen[0].id, chosen[1].sequence)]  # an id seen twice
    config = EmbedConfig(window=WINDOW)
    forwards = _Forwards(model)
    try:
        first = dict(embed_batch(batch[:3], model, config, cache=store.embeddings))
        assert forwards.calls == 1
        outcomes = dict(embed_batch(batch, model, config, cache=store.embeddings))
    finally:
        forwards.close()
    assert sorted(outcomes) == list(range(len(batch)))
    cached = [outcomes[i].cached for i in range(len(batch))]
    assert cached == [True, True, True, False, False, False, True]
    for index, record in enumerate(batch):
        embedding = outcomes[index].embedding
        assert (embedding.id, embedding.length) == (record.id, len(record))
    for index in range(3):
        assert outcomes[index].embedding.vector.tobytes() == first[index].embedding.vector.tobytes()
    assert outcomes[6].embedding.vector.tobytes() == first[1].embedding.vector.tobytes()
    alone = {e.id: e.vector for e in embed_records(chosen, model, config)}
    for index, record in enumerate(chosen):
        np.testing.assert_allclose(outcomes[index].embedding.vector, alone[record.id], atol=1e-6)
