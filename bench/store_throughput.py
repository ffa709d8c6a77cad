"""Store throughput: put and get of mean embeddings on SQLite and PostgreSQL, and cache hit vs compute.

One run, real records (pretrain_corpus_sample2k.fasta by default):
1. compute the mean embeddings with the model (the shipped default, else random-weight esm2-8m);
2. for each backend (a fresh SQLite file; a fresh schema in PostgreSQL when a URL is given):
   `put_many` in batches, then `get_many` in batches (vectors/s each, bit-identical check), then
   one vector per `get_many` (latency p50/p99: a service hit that misses the memory layer);
3. `embed_records` over the same records through that cache: no forward runs (computed = 0), and
   its time divided by the compute time of step 1 is the cache-hit ratio.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import create_engine, make_url, text
from tqdm import tqdm

from protssl.checkpoint import LoadedModel, load_model
from protssl.embedding import CacheStats, EmbedConfig, Embedding, embed_records
from protssl.errors import ModelNotFoundError, ProtsslError
from protssl.fasta import ProteinRecord, read_fasta
from protssl.info import describe
from protssl.store import EmbeddingItem, EmbeddingKey, Store, StoreConfig, sequence_sha256

DEFAULT_FASTA = (
    Path(__file__).resolve().parents[2] / "shared/data/pretrain/pretrain_corpus_sample2k.fasta"
)
log = logging.getLogger("bench.store_throughput")
ONE_KEY_LOOKUPS = 1000


def pick_model(spec: str | None) -> LoadedModel:
    """The named model, else the shipped default, else random-weight esm2-8m."""
    if spec is not None:
        return load_model(spec)
    try:
        return load_model(None)
    except ModelNotFoundError:
        log.warning("no shipped default model yet: using random-weight esm2-8m")
        return load_model("esm2-8m")


def compute(records: list[ProteinRecord], model: LoadedModel) -> tuple[dict[str, Embedding], float]:
    bar = tqdm(unit="res", desc="compute", leave=False)  # counts window overlaps too
    start = time.perf_counter()
    out = {e.id: e for e in embed_records(records, model, EmbedConfig(), on_batch=bar.update)}
    seconds = time.perf_counter() - start
    bar.close()
    return out, seconds


def cache_items(
    records: list[ProteinRecord], embeddings: dict[str, Embedding]
) -> list[EmbeddingItem]:
    """The items `embed_records` itself would write, keyed from each vector's provenance."""
    items = []
    for record in records:
        p = embeddings[record.id].provenance
        key = EmbeddingKey(
            p.model_sha256,
            sequence_sha256(record.sequence),
            p.pooling,
            p.layer,
            p.window_policy,
            p.dtype,
        )
        items.append(EmbeddingItem(key, record.sequence, embeddings[record.id].vector))
    return items


@contextmanager
def postgres_schema(base_url: str) -> Iterator[str]:
    """A URL whose search_path is a fresh schema, dropped afterwards."""
    schema = f"protssl_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base_url)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def measure_backend(
    name: str,
    url: str,
    records: list[ProteinRecord],
    items: list[EmbeddingItem],
    model: LoadedModel,
    compute_s: float,
    batch: int,
) -> dict[str, Any]:
    with Store(StoreConfig(url=url)) as store:
        start = time.perf_counter()
        for begin in tqdm(range(0, len(items), batch), desc=f"{name} put", leave=False):
            store.embeddings.put_many(items[begin : begin + batch])
        put_s = time.perf_counter() - start
        got: dict[EmbeddingKey, np.ndarray] = {}
        start = time.perf_counter()
        for begin in tqdm(range(0, len(items), batch), desc=f"{name} get", leave=False):
            got.update(store.embeddings.get_many(i.key for i in items[begin : begin + batch]))
        get_s = time.perf_counter() - start
        identical = all(got[i.key].tobytes() == i.vector.tobytes() for i in items)
        one_ms = []  # one vector per lookup: the service's hit path when its memory layer misses
        for item in items[:ONE_KEY_LOOKUPS]:
            start = time.perf_counter()
            store.embeddings.get_many([item.key])
            one_ms.append((time.perf_counter() - start) * 1000)
        stats = CacheStats()
        start = time.perf_counter()
        hits = list(
            embed_records(records, model, EmbedConfig(), cache=store.embeddings, stats=stats)
        )
        hit_s = time.perf_counter() - start
    if stats.computed or len(hits) != len(records):
        raise SystemExit(f"{name}: the cached run computed {stats.computed} vectors")
    return {
        "put_vectors_per_s": round(len(items) / put_s, 1),
        "get_vectors_per_s": round(len(items) / get_s, 1),
        "put_s": round(put_s, 3),
        "get_s": round(get_s, 3),
        "get_one_p50_ms": round(float(np.percentile(one_ms, 50)), 3),
        "get_one_p99_ms": round(float(np.percentile(one_ms, 99)), 3),
        "cache_hit_embed_s": round(hit_s, 3),
        "hit_to_compute_ratio": round(hit_s / compute_s, 4),
        "computed_on_hit_run": stats.computed,
        "cached_on_hit_run": stats.cached,
        "bit_identical": identical,
    }


def _positive(text: str) -> int:
    """A count of 1 or more (`--limit -5` read all records but the last 5; 0 crashed)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fasta", type=Path, default=DEFAULT_FASTA)
    parser.add_argument("--model", default=None, help="model folder or preset (default: shipped)")
    parser.add_argument("--limit", type=_positive, default=None, help="first N records only")
    parser.add_argument(
        "--batch", type=_positive, default=256, help="vectors per put_many/get_many"
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("PROTSSL_TEST_POSTGRES_URL"),
        help="PostgreSQL server (a throwaway schema is used); default $PROTSSL_TEST_POSTGRES_URL",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    try:
        records = list(read_fasta(args.fasta))[: args.limit]
    except ProtsslError as exc:
        parser.error(str(exc))
    model = pick_model(args.model)
    embeddings, compute_s = compute(records, model)
    items = cache_items(records, embeddings)
    residues = sum(len(r) for r in records)
    result: dict[str, Any] = {
        "bench": "store_throughput",
        "fasta": args.fasta.name,
        "records": len(records),
        "residues": residues,
        "model": model.name,
        "dtype": model.dtype_name,
        "dim": int(items[0].vector.shape[0]),
        "batch": args.batch,
        "compute_s": round(compute_s, 3),
        "compute_vectors_per_s": round(len(records) / compute_s, 1),
    }
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'bench.sqlite3'}"
        result["sqlite"] = measure_backend(
            "sqlite", url, records, items, model, compute_s, args.batch
        )
    if args.postgres_url:
        with postgres_schema(args.postgres_url) as url:
            result["postgresql"] = measure_backend(
                "postgresql", url, records, items, model, compute_s, args.batch
            )
    else:
        result["postgresql"] = None
    for name in ("sqlite", "postgresql"):
        if result[name]:
            print(
                f"{name}: put {result[name]['put_vectors_per_s']:.0f} vec/s, "
                f"get {result[name]['get_vectors_per_s']:.0f} vec/s, one-vector lookup p50 "
                f"{result[name]['get_one_p50_ms']:.3f} ms, cache-hit embed "
                f"{result[name]['cache_hit_embed_s']:.2f}s = "
                f"{100 * result[name]['hit_to_compute_ratio']:.2f}% of compute {compute_s:.1f}s",
                file=sys.stderr,
            )
    result["machine"] = describe()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
