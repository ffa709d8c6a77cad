"""Records → vectors: batched encoder forward, pooling by the padding mask, windows stitched back.

`embed_records` streams: it reads a bounded number of residues ahead, sorts them into token-budget
batches, and yields an `Embedding` per record as soon as all of its windows are done. `embed_batch`
runs one batch its caller packed (the service's model worker, with `batching.pack_around`). Every
vector carries its provenance. A vector does not depend on which other sequences shared its batch.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from protssl.alphabet import ALPHABET
from protssl.batching import TokenBatch, WindowPolicy, plan_windows, read_ahead, token_batches
from protssl.checkpoint import LoadedModel
from protssl.errors import InvalidInputError
from protssl.fasta import ProteinRecord
from protssl.pooling import POOLINGS, Pooling, segment_means
from protssl.store import EmbeddingCache, EmbeddingItem, EmbeddingKey, sequence_sha256

__all__ = [
    "POOLINGS",
    "BatchOutcome",
    "CacheStats",
    "EmbedConfig",
    "Embedding",
    "Provenance",
    "cached_embeddings",
    "check_layer",
    "embed_batch",
    "embed_records",
    "embed_records_layers",
    "expected_provenance",
    "mean_over_residues",
    "pool_rows",
]


def check_layer(layer: object) -> None:
    """A layer is a whole number or None (the model's recommended one): True, 2.0 or "2" would
    otherwise reach the model, or the wire, as something else."""
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)):
        raise InvalidInputError(f"layer must be a whole number or None, not {layer!r}")


@dataclass(frozen=True)
class EmbedConfig:
    """How records become vectors."""

    pooling: Pooling = "mean"
    """`mean` over residues (BOS/EOS/padding excluded), `bos` token, `segments` (the means of
    `SEGMENTS` equal stretches, N- to C-terminal, end to end: SEGMENTS * D values), or `per-residue`
    (L x D)."""
    layer: int | None = None
    """Which layer's hidden states: 0 = embeddings, n = last (layer-normed); negative counts back;
    None = the model's default (its card's recommended layer, else the last)."""
    max_tokens: int = 4096
    """Token budget per forward batch: rows x padded length."""
    window: WindowPolicy = field(default_factory=WindowPolicy)
    """What to do with sequences longer than the model's window."""
    read_ahead_residues: int = 500_000
    """Residues read and length-sorted together; bounds memory on whole proteomes."""

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise InvalidInputError(
                f"pooling must be one of {', '.join(POOLINGS)}, not {self.pooling!r}"
            )
        check_layer(self.layer)
        if self.max_tokens < 8:
            raise InvalidInputError(f"max_tokens must be at least 8, got {self.max_tokens}")
        if self.read_ahead_residues < 1:
            raise InvalidInputError("read_ahead_residues must be positive")


@dataclass(frozen=True)
class Provenance:
    """Where a vector came from: enough to recompute it or to refuse to mix it with another."""

    model_name: str
    model_sha256: str
    layer: int
    pooling: str
    dtype: str
    window_policy: str
    windowed: bool
    windows: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Embedding:
    """One record's vector: (D,) for mean/bos, (SEGMENTS * D,) for segments, (L, D) per residue;
    always float32."""

    id: str
    length: int
    vector: np.ndarray
    provenance: Provenance
    labels: tuple[str, ...] = ()


@dataclass
class CacheStats:
    """What an `embed_records` call did: vectors computed by the model and vectors read from the
    cache (records that share a sequence within a read-ahead group count as computed, each one,
    though the model ran it once)."""

    computed: int = 0
    cached: int = 0


@dataclass(frozen=True)
class BatchOutcome:
    """One record's embedding from `embed_batch` and whether it came from the cache."""

    embedding: Embedding
    cached: bool


@dataclass
class _Stitch:
    """Per-residue sums and counts over the windows of one long sequence."""

    total: np.ndarray
    count: np.ndarray
    bos: np.ndarray
    windows: int
    windows_left: int


def expected_provenance(model: LoadedModel, config: EmbedConfig) -> Provenance:
    """The provenance a vector made with this model and config carries (one window; see `_embedding`)."""
    encoder = model.encoder
    return Provenance(
        model_name=model.name,
        model_sha256=model.sha256,
        layer=model.resolve_layer(config.layer),
        pooling=config.pooling,
        dtype=model.dtype_name,
        window_policy=config.window.describe(encoder.config.max_residues),
        windowed=False,
        windows=1,
    )


def embed_records(
    records: Iterable[ProteinRecord],
    model: LoadedModel,
    config: EmbedConfig | None = None,
    *,
    on_batch: Callable[[int], None] | None = None,
    cache: EmbeddingCache | None = None,
    stats: CacheStats | None = None,
) -> Iterator[Embedding]:
    """Embed records in token-budget batches; yields in completion order, not input order.

    `on_batch(residues)` is called after each forward, for progress bars. With `cache` (a store's
    embedding cache), records already cached skip the model and computed vectors are written back
    after each forward batch. `stats`, if given, counts computed and cached vectors.
    """
    config = config or EmbedConfig()
    stats = stats if stats is not None else CacheStats()
    for group in read_ahead(records, config.read_ahead_residues):
        for _, outcome in _embed_cached(group, model, config, on_batch, cache):
            if outcome.cached:
                stats.cached += 1
            else:
                stats.computed += 1
            yield outcome.embedding


def embed_batch(
    records: Sequence[ProteinRecord],
    model: LoadedModel,
    config: EmbedConfig,
    *,
    on_batch: Callable[[int], None] | None = None,
    cache: EmbeddingCache | None = None,
) -> Iterator[tuple[int, BatchOutcome]]:
    """Embed records a caller has packed into one batch (`batching.pack_around`), as they finish.

    Yields (index into `records`, outcome): cache hits first, then the misses from one forward (more
    only when a lone record's windows exceed `config.max_tokens`). Nothing is read ahead or merged
    with other records, so ids need not be unique; each outcome says whether it was a cache hit.
    """
    return _embed_cached(records, model, config, on_batch, cache)


def _embed_cached(
    records: Sequence[ProteinRecord],
    model: LoadedModel,
    config: EmbedConfig,
    on_batch: Callable[[int], None] | None,
    cache: EmbeddingCache | None,
) -> Iterator[tuple[int, BatchOutcome]]:
    """`_embed_group` behind the cache: one lookup for the group, one write per forward batch."""
    if cache is None:
        for index, embedding in _embed_group(records, model, config, on_batch):
            yield index, BatchOutcome(embedding, cached=False)
        return
    hits, keys = _lookup(records, model, config, cache)
    misses: list[int] = []
    for index, hit in enumerate(hits):
        if hit is None:
            misses.append(index)
        else:
            yield index, BatchOutcome(hit, cached=True)
    if not misses:
        return
    wanted = [records[i] for i in misses]
    for finished, residues in _embed_batches(wanted, model, config):
        pending: list[EmbeddingItem] = []
        outcomes: list[tuple[int, BatchOutcome]] = []
        for position, embedding in finished:
            index = misses[position]
            item, stored = _as_stored(embedding, keys[index], records[index].sequence, cache)
            pending.append(item)
            outcomes.append((index, BatchOutcome(stored, cached=False)))
        if pending:
            # before they are yielded: what a caller holds, the store holds
            cache.put_many(pending, {model.sha256: model.name})
        yield from outcomes
        if on_batch is not None:
            on_batch(residues)


def _as_stored(
    embedding: Embedding, key: EmbeddingKey, sequence: str, cache: EmbeddingCache
) -> tuple[EmbeddingItem, Embedding]:
    """A computed embedding as the cache stores it (float16 when asked) and as the caller gets it
    back: what a cache hit would give, bit for bit."""
    vector = np.asarray(embedding.vector, dtype=cache.vector_dtype)
    stored = replace(embedding, vector=vector.astype(np.float32))
    return EmbeddingItem(key, sequence, vector), stored


def cached_embeddings(
    records: Sequence[ProteinRecord],
    model: LoadedModel,
    config: EmbedConfig,
    cache: EmbeddingCache,
) -> list[Embedding | None]:
    """One cache lookup, no model run: each record's cached embedding (input order), None on a miss."""
    return _lookup(records, model, config, cache)[0]


def _lookup(
    records: Sequence[ProteinRecord],
    model: LoadedModel,
    config: EmbedConfig,
    cache: EmbeddingCache,
) -> tuple[list[Embedding | None], list[EmbeddingKey]]:
    """Each record's cached embedding (None on a miss) and its cache key, from one lookup."""
    provenance = expected_provenance(model, config)
    keys = _cache_keys(records, provenance)
    found = cache.get_many(keys)
    hits = [
        None
        if (vector := found.get(key)) is None
        else _cached_embedding(record, vector, model, config, provenance)
        for record, key in zip(records, keys, strict=True)
    ]
    return hits, keys


def _cache_keys(records: Sequence[ProteinRecord], provenance: Provenance) -> list[EmbeddingKey]:
    return [
        EmbeddingKey(
            model_sha256=provenance.model_sha256,
            sequence_sha256=sequence_sha256(record.sequence),
            pooling=provenance.pooling,
            layer=provenance.layer,
            window_policy=provenance.window_policy,
            dtype=provenance.dtype,
        )
        for record in records
    ]


def _cached_embedding(
    record: ProteinRecord,
    vector: np.ndarray,
    model: LoadedModel,
    config: EmbedConfig,
    provenance: Provenance,
) -> Embedding:
    window_residues = model.encoder.config.max_residues
    overlap = config.window.overlap_in(window_residues)
    windows = len(plan_windows(len(record.sequence), window_residues, overlap))
    return _embedding(record, vector, provenance, windows=windows)


def embed_records_layers(
    records: Iterable[ProteinRecord],
    model: LoadedModel,
    layers: Sequence[int],
    config: EmbedConfig | None = None,
    *,
    on_batch: Callable[[int], None] | None = None,
    cache: EmbeddingCache | None = None,
    stats: CacheStats | None = None,
) -> Generator[dict[int, Embedding], None, None]:
    """Like `embed_records` with one forward for several layers: yields {layer: Embedding} per record.

    `config.layer` is ignored; `layers` are resolved (negative counts back) and deduplicated.
    With `cache`, a record cached at every layer skips the model and the others' vectors are
    written back per layer (completion order: cache hits of a read-ahead group first); `stats`
    counts records computed and read from the cache.
    """
    config = config or EmbedConfig()
    stats = stats if stats is not None else CacheStats()
    resolved = tuple(sorted({model.encoder.resolve_layer(layer) for layer in layers}))
    if not resolved:
        raise InvalidInputError("embed_records_layers needs at least one layer")
    for group in read_ahead(records, config.read_ahead_residues):
        if cache is None:
            stacked = (e for _, e in _embed_group(group, model, config, on_batch, resolved))
            stats.computed += len(group)
            yield from _split_layers(stacked, resolved)
            continue
        yield from _layers_cached(group, model, config, on_batch, resolved, cache, stats)


def _layers_cached(
    group: Sequence[ProteinRecord],
    model: LoadedModel,
    config: EmbedConfig,
    on_batch: Callable[[int], None] | None,
    layers: tuple[int, ...],
    cache: EmbeddingCache,
    stats: CacheStats,
) -> Iterator[dict[int, Embedding]]:
    """One read-ahead group of `embed_records_layers` behind the cache."""
    found = {layer: _lookup(group, model, replace(config, layer=layer), cache) for layer in layers}
    misses: list[int] = []
    for index in range(len(group)):
        hits = {layer: found[layer][0][index] for layer in layers}
        if any(hit is None for hit in hits.values()):
            misses.append(index)
            continue
        stats.cached += 1
        yield {layer: hit for layer, hit in hits.items() if hit is not None}
    if not misses:
        return
    for finished, residues in _embed_batches([group[i] for i in misses], model, config, layers):
        pending: list[EmbeddingItem] = []
        outs = []
        for position, stacked in finished:
            index = misses[position]
            out = {}
            for layer, embedding in next(_split_layers([stacked], layers)).items():
                key = found[layer][1][index]
                item, out[layer] = _as_stored(embedding, key, group[index].sequence, cache)
                pending.append(item)
            outs.append(out)
        if pending:
            # each forward's, before they are yielded: a run stopped part way keeps what it did
            cache.put_many(pending, {model.sha256: model.name})
        for out in outs:
            stats.computed += 1
            yield out
        if on_batch is not None:
            on_batch(residues)


def _split_layers(
    stacked: Iterable[Embedding], layers: tuple[int, ...]
) -> Iterator[dict[int, Embedding]]:
    for embedding in stacked:
        parts = np.split(embedding.vector, len(layers), axis=-1)
        yield {
            layer: replace(
                embedding,
                vector=np.ascontiguousarray(part),
                provenance=replace(embedding.provenance, layer=layer),
            )
            for layer, part in zip(layers, parts, strict=True)
        }


def _embed_group(
    records: Sequence[ProteinRecord],
    model: LoadedModel,
    config: EmbedConfig,
    on_batch: Callable[[int], None] | None,
    layers: tuple[int, ...] = (),
) -> Iterator[tuple[int, Embedding]]:
    """Embed one read-ahead group at `config.layer`, or at several `layers` in one forward,
    concatenated along channels (pooling and stitching act per channel, so each layer's slice
    of the vector is that layer's vector; the caller sets each slice's provenance layer).
    Yields (index into `records`, embedding) as each record's last window is done."""
    for finished, residues in _embed_batches(records, model, config, layers):
        yield from finished
        if on_batch is not None:
            on_batch(residues)


def _embed_batches(
    records: Sequence[ProteinRecord],
    model: LoadedModel,
    config: EmbedConfig,
    layers: tuple[int, ...] = (),
) -> Iterator[tuple[list[tuple[int, Embedding]], int]]:
    """`_embed_group` one forward at a time: the (index, embedding) pairs each forward finished,
    and the residues it ran. A sequence that several records share (the same protein in several
    genomes) runs once, and each of those records gets its vector."""
    encoder = model.encoder
    layers = layers or (model.resolve_layer(config.layer),)
    window_residues = encoder.config.max_residues
    provenance = expected_provenance(model, config)
    firsts, copies = _distinct_sequences(records)
    stitches: dict[int, _Stitch] = {}
    batches = token_batches(
        [records[i].sequence for i in firsts],
        max_tokens=config.max_tokens,
        window_residues=window_residues,
        policy=config.window,
        ids=[records[i].id for i in firsts],
    )
    for batch, hidden in _forwards(model, batches, layers):  # hidden: (B, T, len(layers) * C)
        finished: list[tuple[int, Embedding]] = []
        pooled = (
            pool_rows(hidden, batch.tokens, config.pooling, groups=len(layers))
            if config.pooling != "per-residue"
            else None
        )
        for row, window in enumerate(batch.windows):
            item = firsts[window.item]
            record = records[item]
            length = len(record.sequence)
            if window.length == length:
                if pooled is not None:
                    vector = pooled[row]
                else:
                    vector = hidden[row, 1 : length + 1].numpy().copy()
                embedding = _embedding(record, vector, provenance, windows=1)
                finished += _with_copies(item, embedding, copies, records)
                continue
            stitch = stitches.get(item)
            if stitch is None:
                overlap = config.window.overlap_in(window_residues)
                count = len(plan_windows(length, window_residues, overlap))
                width = hidden.shape[-1]
                stitch = _Stitch(
                    total=np.zeros((length, width), dtype=np.float64),
                    count=np.zeros(length, dtype=np.int32),
                    bos=np.zeros(width, dtype=np.float64),
                    windows=count,
                    windows_left=count,
                )
                stitches[item] = stitch
            stitch.total[window.start : window.end] += hidden[row, 1 : window.length + 1].numpy()
            stitch.count[window.start : window.end] += 1
            stitch.bos += hidden[row, 0].numpy()
            stitch.windows_left -= 1
            if stitch.windows_left == 0:
                del stitches[item]
                vector = _finish_stitch(stitch, config.pooling, groups=len(layers))
                embedding = _embedding(record, vector, provenance, windows=stitch.windows)
                finished += _with_copies(item, embedding, copies, records)
        yield finished, batch.residues


def _distinct_sequences(
    records: Sequence[ProteinRecord],
) -> tuple[list[int], dict[int, list[int]]]:
    """The index of each distinct sequence's first record, and for each of those the later
    records with the same sequence."""
    first_of: dict[str, int] = {}
    firsts: list[int] = []
    copies: dict[int, list[int]] = {}
    for index, record in enumerate(records):
        first = first_of.setdefault(record.sequence, index)
        if first == index:
            firsts.append(index)
        else:
            copies.setdefault(first, []).append(index)
    return firsts, copies


def _with_copies(
    item: int,
    embedding: Embedding,
    copies: dict[int, list[int]],
    records: Sequence[ProteinRecord],
) -> list[tuple[int, Embedding]]:
    """A finished record's (index, embedding), then one for each record that shares its sequence."""
    out = [(item, embedding)]
    for other in copies.get(item, ()):
        twin = records[other]
        out.append(
            (
                other,
                replace(embedding, id=twin.id, labels=twin.labels, vector=embedding.vector.copy()),
            )
        )
    return out


def _forwards(
    model: LoadedModel, batches: Iterable[TokenBatch], layers: tuple[int, ...]
) -> Iterator[tuple[TokenBatch, torch.Tensor]]:
    """Each batch with its hidden states, in order. An int8 model on a CPU with n torch threads runs
    n single-threaded forwards side by side: PyTorch's flash attention, half of int8's time, gains
    only 1.2-1.5x from a second thread on sequences up to 400 tokens (the README's Benchmarks).
    int8 vectors do not depend on the thread count (integer GEMMs; per-row float ops)."""
    threads = torch.get_num_threads()
    iterator = iter(batches)
    head = list(itertools.islice(iterator, 2))  # one forward (a service call) keeps every thread
    batches = itertools.chain(head, iterator)
    if len(head) < 2 or not (model.int8 and model.device.type == "cpu" and threads > 1):
        for batch in batches:
            yield batch, _forward(model, batch, layers)
        return
    in_flight: deque[tuple[TokenBatch, Future[torch.Tensor]]] = deque()
    # torch.set_num_threads sets the calling thread's OpenMP team size and the default for threads
    # that start later; each worker takes one thread, and the default is put back afterwards.
    pool = ThreadPoolExecutor(threads, initializer=torch.set_num_threads, initargs=(1,))
    try:
        for batch in batches:
            in_flight.append((batch, pool.submit(_forward, model, batch, layers)))
            if len(in_flight) == threads:
                done, future = in_flight.popleft()
                yield done, future.result()
        while in_flight:
            done, future = in_flight.popleft()
            yield done, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)


def _forward(model: LoadedModel, batch: TokenBatch, layers: tuple[int, ...]) -> torch.Tensor:
    with torch.inference_mode():
        tokens = batch.tokens.to(model.device, non_blocking=True)
        out = model.encoder(tokens, layers, return_logits=False)
        hidden = [out.representations[layer].float() for layer in layers]
        return (hidden[0] if len(layers) == 1 else torch.cat(hidden, dim=-1)).cpu()


def pool_rows(
    hidden: torch.Tensor, tokens: torch.Tensor, pooling: str, *, groups: int = 1
) -> np.ndarray:
    """Mean or max over residue positions (by mask, never by slicing), segment means, or the BOS
    row, per row. `groups`: layers concatenated along channels (see `segment_means`).

    `max` is not served (windows are stitched by averaging); `protssl analyze` compares it.
    """
    if pooling == "bos":
        return hidden[:, 0].numpy().copy()
    if pooling == "segments":
        mask = _residue_mask(tokens).numpy()
        rows = hidden.numpy()
        return np.stack([segment_means(rows[i][mask[i]], groups=groups) for i in range(len(rows))])
    if pooling == "max":
        masked = hidden.masked_fill(~_residue_mask(tokens).unsqueeze(-1), float("-inf"))
        return masked.amax(1).numpy()
    return mean_over_residues(hidden, tokens).numpy()


def _residue_mask(tokens: torch.Tensor) -> torch.Tensor:
    """(B, T) True at residue positions: not BOS, EOS or padding."""
    return (
        tokens.ne(ALPHABET.padding_idx) & tokens.ne(ALPHABET.cls_idx) & tokens.ne(ALPHABET.eos_idx)
    )


def mean_over_residues(hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(B, C) mean of (B, T, C) `hidden` over residue positions (not BOS, EOS or pads); differentiable."""
    weights = _residue_mask(tokens).to(hidden.dtype)  # (B, T)
    sums = torch.einsum("bt,btc->bc", weights, hidden)
    return sums / weights.sum(1, keepdim=True)


def _finish_stitch(stitch: _Stitch, pooling: str, *, groups: int = 1) -> np.ndarray:
    """Average overlapping windows per residue, then pool; BOS is the mean of the windows' BOS."""
    per_residue = stitch.total / stitch.count[:, None]
    if pooling == "per-residue":
        return per_residue.astype(np.float32)
    if pooling == "bos":
        return (stitch.bos / stitch.windows).astype(np.float32)
    if pooling == "segments":
        return segment_means(per_residue, groups=groups)
    return per_residue.mean(0).astype(np.float32)


def _embedding(
    record: ProteinRecord, vector: np.ndarray, provenance: Provenance, *, windows: int
) -> Embedding:
    """`provenance`: the group's, from `expected_provenance` (one window); windows set here."""
    if windows != provenance.windows:
        provenance = replace(provenance, windowed=windows > 1, windows=windows)
    return Embedding(
        id=record.id,
        length=len(record.sequence),
        vector=np.ascontiguousarray(vector, dtype=np.float32),
        provenance=provenance,
        labels=record.labels,
    )
