"""Classify latency by head over gRPC: the default head (auto, hybrid) beside the embedding heads.

One run: `python -m service` in a subprocess (SQLite store, API tokens on, as deployed), one
classifier per head fitted over `CreateClassifier` on the same labelled support (default
examples/labelled.fasta: 72 real IS transposases of 6 families), its queries (default
examples/labelled_query.fasta, 48) classified once by each so that every timed call reads cached
vectors (checked: the server computes none). While each head fits, another client embeds real
proteins one at a time (examples/proteins.fasta, none cached: each a forward), against the same
calls on the idle server: what a fit costs everyone else's `Embed`. Then per head: each query alone from one client
(`--rounds` passes; the latency a pipeline asking one at a time sees), the same single-query calls
from `--clients` clients at once (closed loop; p99 and queries/s when the server is busy), and all
queries in one call. The anchor is the prototype head in the same run, the default before `auto`.
Also each head's fit time and how many queries it answered and got right. The last line printed
is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from service_load import server_env, together, wait_for_port

import protssl
from protssl.analysis.config import EXAMPLES_DIR
from protssl.auth import TOKEN_ENV
from protssl.embedding import CacheStats
from protssl.fasta import ProteinRecord, read_fasta
from protssl.info import describe
from protssl.store import Store, StoreConfig

HEADS = ("prototype", "knn", "auto")
"""The heads timed: the two embedding heads a latency-bound caller would pick, and the default."""


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50 and p99 in ms."""
    ms = np.array(seconds) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


def one_at_a_time(
    client: protssl.Client,
    name: str,
    queries: list[ProteinRecord],
    rounds: int,
    stats: CacheStats,
) -> list[float]:
    """Seconds per single-query Classify call, every query `rounds` times from one client."""
    seconds = []
    for _ in range(rounds):
        for query in queries:
            start = time.perf_counter()
            client.classify(name, [query], stats=stats)
            seconds.append(time.perf_counter() - start)
    return seconds


def embed_one_at_a_time(
    address: str, records: Iterator[ProteinRecord], until: threading.Event | None = None
) -> list[float]:
    """Seconds per single-record Embed call (each record new to the server: a forward), from a
    client of its own: 16 calls, or until `until` is set (at least one), or the records end."""
    seconds: list[float] = []
    with protssl.Client(address, timeout=600) as client:
        client.list_models()
        for record in records:
            start = time.perf_counter()
            client.embed([record])
            seconds.append(time.perf_counter() - start)
            if (len(seconds) == 16) if until is None else until.is_set():
                break
    return seconds


def concurrent(
    address: str, name: str, queries: list[ProteinRecord], clients: int, rounds: int
) -> tuple[list[float], float]:
    """Single-query calls from `clients` clients at once, each sending every query `rounds` times
    (its own order); per-call seconds and the wall time of the whole."""
    sdk = [protssl.Client(address, timeout=600) for _ in range(clients)]
    for client in sdk:
        client.list_models()  # connected before the clock starts
    seconds: list[float] = []
    lock = threading.Lock()

    def loop(index: int, client: protssl.Client) -> None:
        order = np.random.default_rng(index).permutation(len(queries)).tolist()
        mine = []
        for _ in range(rounds):
            for i in order:
                start = time.perf_counter()
                client.classify(name, [queries[i]])
                mine.append(time.perf_counter() - start)
        with lock:
            seconds.extend(mine)

    wall = together(sdk, loop)
    for client in sdk:
        client.close()
    return seconds, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--support", type=Path, default=EXAMPLES_DIR / "labelled.fasta")
    parser.add_argument("--queries", type=Path, default=EXAMPLES_DIR / "labelled_query.fasta")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="passes over the queries per phase")
    parser.add_argument("--proteins", type=Path, default=EXAMPLES_DIR / "proteins.fasta")
    args = parser.parse_args()
    proteins = iter(read_fasta(args.proteins))

    support = list(read_fasta(args.support))
    queries = list(read_fasta(args.queries))
    truth = {q.id: set(q.labels) for q in queries}
    result: dict[str, Any] = {
        "support": len(support),
        "queries": len(queries),
        "clients": args.clients,
        "rounds": args.rounds,
        "heads": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'store.sqlite3'}"
        with Store(StoreConfig(url=url)) as store:
            _, os.environ[TOKEN_ENV] = store.tokens.create("write", name="classify_latency")
        command = [sys.executable, "-m", "service", "--port", "0", "--metrics-port", "off"]
        command += ["--database-url", url, "--log-level", "INFO"]
        command += ["--model", args.model] if args.model else []
        log_path = Path(tmp) / "server.log"
        process = subprocess.Popen(command, stderr=log_path.open("w"), env=server_env())
        try:
            port = wait_for_port(process, log_path, r"serving protssl.v1 on [^:]+:(\d+)")
            address = f"127.0.0.1:{port}"
            with protssl.Client(address, timeout=600) as client:
                result["model"] = client.list_models()[0].name
                result["embed_idle"] = percentiles(embed_one_at_a_time(address, proteins))
                for head in HEADS:
                    result["heads"][head] = run_head(
                        client, address, head, support, queries, truth, args, proteins
                    )
        finally:
            process.terminate()
            process.wait(timeout=60)
    anchor = result["heads"]["prototype"]
    for figures in result["heads"].values():
        figures["one_client_p50_over_prototype"] = round(
            figures["one_client"]["p50_ms"] / anchor["one_client"]["p50_ms"], 2
        )
        figures["busy_qps_over_prototype"] = round(figures["busy_qps"] / anchor["busy_qps"], 3)
        figures["embed_during_fit"]["p50_over_idle"] = round(
            figures["embed_during_fit"]["p50_ms"] / result["embed_idle"]["p50_ms"], 2
        )
    result["machine"] = describe()
    print(json.dumps(result))


def run_head(
    client: protssl.Client,
    address: str,
    head: str,
    support: list[ProteinRecord],
    queries: list[ProteinRecord],
    truth: dict[str, set[str]],
    args: argparse.Namespace,
    proteins: Iterator[ProteinRecord],
) -> dict[str, Any]:
    """Fit `head` over gRPC (Embed calls from another client meanwhile), warm the queries'
    vectors, time the three phases."""
    name = f"bench-{head}"
    fitted = threading.Event()
    during: list[float] = []
    probe = threading.Thread(
        target=lambda: during.extend(embed_one_at_a_time(address, proteins, fitted))
    )
    probe.start()
    start = time.perf_counter()
    try:
        info = client.create_classifier(name, support, method=head)
    finally:
        fit_s = time.perf_counter() - start
        fitted.set()
        probe.join()
    answers = client.classify(name, queries)  # the queries' vectors now in the cache
    stats = CacheStats()
    whole = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        client.classify(name, queries, stats=stats)
        whole.append(time.perf_counter() - start)
    alone = one_at_a_time(client, name, queries, args.rounds, stats)
    busy, wall = concurrent(address, name, queries, args.clients, args.rounds)
    if stats.computed:
        raise SystemExit(f"{head}: {stats.computed} query vectors computed in a timed call")
    answered = [p for p in answers if not p.abstained]
    figures = {
        "method": info.method,
        "fit_s": round(fit_s, 2),
        "embed_during_fit": {
            "calls": len(during),
            **percentiles(during),
            "max_ms": round(max(during) * 1000, 1),
        },
        "answered": len(answered),
        "right": sum(p.label in truth[p.id] for p in answered),
        "one_client": percentiles(alone),
        "busy": percentiles(busy),
        "busy_qps": round(len(busy) / wall, 1),
        "all_in_one_call_ms": round(statistics.median(whole) * 1000, 1),
    }
    print(f"{head}: {json.dumps(figures)}", file=sys.stderr, flush=True)
    return figures


if __name__ == "__main__":
    main()
