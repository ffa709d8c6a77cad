"""Hybrid classifier speed: one query's latency and 1,000 queries' throughput against the
7,757-sequence CLEAN split10 support, beside MMseqs2 `easy-search` on the same sequences.

The support is fitted once as a `hybrid` classifier (its vectors go through the store's embedding
cache, `--db`, so a rerun embeds nothing); the queries are `--queries` support sequences drawn with
seed `--seed`, each with every `--substitute-every`-th residue substituted (close homologues, not
copies). Timed: embedding the queries (the model) and the head (retrieval + phmmer + decision)
apart, one query at a time (`--latency-repeats` times, median) and all queries in one call. MMseqs2
searches the same queries against the same support (`--threads`), one query alone and all at once;
its row is missing, with a NOTE, when `mmseqs` is not on PATH (this script installs nothing:
`apt-get install mmseqs2`). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from protssl.checkpoint import DEFAULT_MODEL_DIR, load_model
from protssl.embedding import CacheStats
from protssl.fasta import ProteinRecord, read_fasta
from protssl.fewshot import (
    FewShotClassifier,
    FewShotConfig,
    candidate_layers,
    embed_for_fewshot,
)
from protssl.info import describe
from protssl.store import Store, StoreConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
_SWAP = {"A": "S", "S": "T", "T": "A", "L": "I", "I": "V", "V": "L", "K": "R", "R": "K"}


def homologue(sequence: str, every: int) -> str:
    """`sequence` with every `every`-th residue substituted."""
    return "".join(_SWAP.get(c, "A") if i % every == 0 else c for i, c in enumerate(sequence))


def mmseqs_search(
    queries: list[ProteinRecord], support: list[ProteinRecord], threads: int
) -> float:
    """Seconds `mmseqs easy-search` takes for these queries against the support (e-value 1e-3)."""
    with tempfile.TemporaryDirectory(prefix="hybrid_speed_") as tmp:
        work = Path(tmp)
        for name, records in (("q.fasta", queries), ("t.fasta", support)):
            (work / name).write_text(
                "".join(f">{i}\n{r.sequence}\n" for i, r in enumerate(records))
            )
        t0 = time.perf_counter()
        subprocess.run(
            [
                "mmseqs", "easy-search", str(work / "q.fasta"), str(work / "t.fasta"),
                str(work / "hits.m8"), str(work / "tmp"), "-e", "1e-3",
                "--threads", str(threads), "-v", "1",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help=f"model folder (default {DEFAULT_MODEL_DIR})")
    parser.add_argument("--support", default=str(DATA / "ec" / "clean_split10.fasta"))
    parser.add_argument("--support-limit", type=int, default=None, help="first N (quick runs)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--substitute-every", type=int, default=8)
    parser.add_argument("--latency-repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="mmseqs threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--db", default=None, help="store URL whose embedding cache to use")
    args = parser.parse_args()

    model = load_model(args.model)
    support = list(read_fasta(args.support))[: args.support_limit]
    rng = np.random.default_rng(args.seed)
    picked = rng.choice(len(support), size=min(args.queries, len(support)), replace=False)
    queries = [
        ProteinRecord(f"q{i}", homologue(support[j].sequence, args.substitute_every))
        for i, j in enumerate(picked)
    ]
    layers = candidate_layers(model.encoder.config.num_layers)
    config = FewShotConfig(method="hybrid")
    store = Store(StoreConfig(url=args.db) if args.db else StoreConfig())
    try:
        stats = CacheStats()
        t0 = time.perf_counter()
        vectors = embed_for_fewshot(support, model, layers, cache=store.embeddings, stats=stats)
        support_embed = time.perf_counter() - t0
    finally:
        store.close()
    t0 = time.perf_counter()
    classifier = FewShotClassifier.fit(
        vectors, [r.labels for r in support], config, sequences=[r.sequence for r in support]
    )
    fit_seconds = time.perf_counter() - t0

    def classify(batch: list[ProteinRecord]) -> tuple[float, float, list[Any]]:
        t0 = time.perf_counter()
        x = embed_for_fewshot(batch, model, (classifier.layer,))[classifier.layer]
        t1 = time.perf_counter()
        answers = classifier.predict(x, sequences=[r.sequence for r in batch])
        return t1 - t0, time.perf_counter() - t1, answers

    one = [classify([queries[i % len(queries)]]) for i in range(args.latency_repeats)]
    embed_all, head_all, answers = classify(queries)
    have_mmseqs = shutil.which("mmseqs") is not None
    mmseqs: dict[str, Any] | None = None
    if have_mmseqs:
        single = [mmseqs_search([queries[i]], support, args.threads) for i in range(3)]
        every = mmseqs_search(queries, support, args.threads)
        mmseqs = {
            "latency_ms": round(1000 * statistics.median(single), 1),
            "throughput_queries_per_s": round(len(queries) / every, 1),
            "seconds_all": round(every, 2),
            "threads": args.threads,
        }
    else:
        print(
            "NOTE: mmseqs not found on PATH: NO MMseqs2 row in this run "
            "(this bench installs nothing; `apt-get install mmseqs2`)",
            file=sys.stderr,
        )
    latency_embed = statistics.median(e for e, _, _ in one)
    latency_head = statistics.median(h for _, h, _ in one)
    hybrid = {
        "latency_ms": round(1000 * (latency_embed + latency_head), 1),
        "latency_embed_ms": round(1000 * latency_embed, 1),
        "latency_head_ms": round(1000 * latency_head, 1),
        "throughput_queries_per_s": round(len(queries) / (embed_all + head_all), 1),
        "throughput_head_only_queries_per_s": round(len(queries) / head_all, 1),
        "seconds_all_embed": round(embed_all, 2),
        "seconds_all_head": round(head_all, 2),
        "alignment_evidence_rate": round(
            float(np.mean([a.evidence == "alignment" for a in answers])), 3
        ),
        "fit_seconds": round(fit_seconds, 1),
        "support_embed_seconds": round(support_embed, 1),
        "support_computed": stats.computed,
        "support_cached": stats.cached,
        "layer": classifier.layer,
    }
    print(f"support {len(support)} sequences, {len(queries)} queries, model {model.name}")
    print(f"hybrid: {json.dumps(hybrid)}")
    print(f"mmseqs2 easy-search: {json.dumps(mmseqs) if mmseqs else 'not installed'}")
    summary = {
        "bench": "hybrid_speed",
        "model": model.name,
        "model_sha256": model.sha256,
        "support": len(support),
        "queries": len(queries),
        "candidates": config.candidates,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "hybrid": hybrid,
        "mmseqs": mmseqs,
        "machine": describe(),
    }
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
