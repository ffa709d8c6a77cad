"""Service load: C concurrent SDK clients against `python -m service`, beside in-process embedding.

One run, same records, same model: `embed_records` in this process (what `protssl embed` does;
timed before and after the service run, the mean is the anchor, since this machine is shared), the server in a subprocess and C client threads (each its own channel) sending
1-sequence and 8-sequence `Embed` requests drawn from the FASTA, closed loop, until every request
is answered (cache misses); then the same requests again (cache hits, when the server has a store),
by the C clients (`--hit-passes` times; the p99 is over all passes) and then by one client alone
(the hit path without queueing for the CPU). Last the same clients send the same requests to the
floor: a bare grpcio server of the service's kind (synchronous, thread pool) that answers `Embed`
with ready-made messages of the same size and does nothing else (no auth, limits, cache, logging):
what gRPC, protobuf and the SDK cost on this machine, the anchor for the hit latencies.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
from tqdm import tqdm

import protssl
from protssl._proto import protssl_pb2 as pb
from protssl.auth import TOKEN_ENV
from protssl.checkpoint import DEFAULT_MODEL_DIR, LoadedModel, load_model
from protssl.embedding import EmbedConfig, Embedding, embed_records, expected_provenance
from protssl.fasta import ProteinRecord, read_fasta
from protssl.info import describe
from protssl.store import Store, StoreConfig
from protssl.wire import embedding_to_proto
from service.batcher import release_freed_memory
from service.config import ServiceConfig

DEFAULT_FASTA = (
    Path(__file__).resolve().parents[2] / "shared/data/pretrain/pretrain_corpus_sample2k.fasta"
)


def start_server(
    args: argparse.Namespace, log_path: Path, db_path: Path
) -> tuple[subprocess.Popen, int]:
    """`python -m service` on a free port; returns the process and its port once it serves."""
    command = [
        sys.executable,
        "-m",
        "service",
        "--port",
        "0",
        "--metrics-port",
        "off",
        "--max-batch-tokens",
        str(args.max_batch_tokens),
        "--max-group-tokens",
        str(args.max_group_tokens),
        "--min-batch-fill",
        str(args.min_batch_fill),
        "--max-queue-delay-ms",
        str(args.max_queue_delay_ms),
        "--processes",
        str(args.processes),
        "--log-level",
        "INFO",
    ]
    if args.model:
        command += ["--model", args.model]
    if args.store:
        url = args.database_url or f"sqlite:///{db_path}"
        command += ["--database-url", url, "--memory-cache-mb", str(args.memory_cache_mb)]
        # authentication on, as deployed: the clients (this process's SDK) carry a read token
        with Store(StoreConfig(url=url)) as store:
            _, os.environ[TOKEN_ENV] = store.tokens.create("read", name="service_load")
    else:
        command += ["--store", "false", "--insecure-no-auth"]  # tokens live in the store
    process = subprocess.Popen(command, stderr=log_path.open("w"), env=server_env())
    return process, wait_for_port(process, log_path, r"serving protssl.v1 on [^:]+:(\d+)")


def server_env() -> dict[str, str]:
    """A server subprocess's environment: idle OpenMP threads sleep instead of spinning."""
    return dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))


def wait_for_port(process: subprocess.Popen, log_path: Path, pattern: str) -> int:
    """The port a server process logs (the first group of `pattern`) once it serves."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        match = re.search(pattern, log_path.read_text())
        if match:
            return int(match.group(1))
        if process.poll() is not None:
            raise SystemExit(f"server exited early:\n{log_path.read_text()}")
        time.sleep(0.1)
    process.kill()
    raise SystemExit("server did not start within 300 s")


def serve_floor(template_path: Path) -> None:
    """The floor server: `Embed` answered with the template embedding, one per sequence asked for."""
    template = pb.Embedding.FromString(template_path.read_bytes())

    def embed(request: pb.EmbedRequest, context: grpc.ServicerContext) -> pb.EmbedResponse:
        response = pb.EmbedResponse()
        for sequence in request.sequences:
            embedding = response.embeddings.add()
            embedding.CopyFrom(template)
            embedding.id = sequence.id
        return response

    handler = grpc.method_handlers_generic_handler(
        pb.DESCRIPTOR.services_by_name["EmbeddingService"].full_name,
        {
            "Embed": grpc.unary_unary_rpc_method_handler(
                embed,
                request_deserializer=pb.EmbedRequest.FromString,
                response_serializer=pb.EmbedResponse.SerializeToString,
            ),
            "ListModels": grpc.unary_unary_rpc_method_handler(  # the clients' connection check
                lambda request, context: pb.ListModelsResponse(),
                request_deserializer=pb.ListModelsRequest.FromString,
                response_serializer=pb.ListModelsResponse.SerializeToString,
            ),
        },
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=ServiceConfig().workers))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"floor serving on port {port}", file=sys.stderr, flush=True)
    server.wait_for_termination()


def start_floor(model: LoadedModel, tmp: Path, log_path: Path) -> tuple[subprocess.Popen, int]:
    """The floor server in a subprocess, its vectors the model's width; returns it and its port."""
    width = model.encoder.config.embed_dim
    template = Embedding(
        "floor", 1, np.zeros(width, np.float32), expected_provenance(model, EmbedConfig())
    )
    template_path = tmp / "floor-template.pb"
    template_path.write_bytes(
        embedding_to_proto(template, cached=True, dtype="float32").SerializeToString()
    )
    command = [sys.executable, str(Path(__file__).resolve()), "--serve-floor", str(template_path)]
    process = subprocess.Popen(command, stderr=log_path.open("w"), env=server_env())
    return process, wait_for_port(process, log_path, r"floor serving on port (\d+)")


class Latencies(list[tuple[int, float]]):
    """(request size in sequences, seconds) per request."""

    def ms(self, size: int | None = None) -> np.ndarray:
        """Latencies in ms, of requests of `size` sequences only when given."""
        return np.array([s for n, s in self if size is None or n == size]) * 1000

    def percentile(self, q: float, size: int | None = None, digits: int = 2) -> float | None:
        """The q-th percentile in ms, rounded (of `size`-sequence requests when given); None if none."""
        ms = self.ms(size)
        return round(float(np.percentile(ms, q)), digits) if len(ms) else None

    def p99_by_size(self) -> dict[str, float | None]:
        """p99 (ms) per request size: which requests make the tail."""
        return {str(n): self.percentile(99, n) for n in sorted({n for n, _ in self})}


def together(clients: list[protssl.Client], loop: Callable[[int, protssl.Client], None]) -> float:
    """`loop(index, client)` on a thread per client, all started at once; wall seconds to the last."""
    threads = [threading.Thread(target=loop, args=(i, c)) for i, c in enumerate(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def run_clients(
    address: str, requests: list[list[ProteinRecord]], clients: int, desc: str
) -> tuple[float, Latencies, dict[str, np.ndarray], int]:
    """Closed loop: each client sends its next request when the last one returns.

    Returns wall seconds, per-request latencies, vectors by id, and how many were cached.
    """
    work: queue.Queue[list[ProteinRecord]] = queue.Queue()
    for request in requests:
        work.put(request)
    latencies = Latencies()
    vectors: dict[str, np.ndarray] = {}
    cached = 0
    lock = threading.Lock()
    bar = tqdm(
        total=sum(len(r) for req in requests for r in req), desc=desc, unit="res", unit_scale=True
    )
    sdk = [protssl.Client(address, timeout=600) for _ in range(clients)]
    for client in sdk:
        client.list_models()  # connect before the clock starts

    def loop(_: int, client: protssl.Client) -> None:
        nonlocal cached
        while True:
            try:
                request = work.get_nowait()
            except queue.Empty:
                return
            start = time.perf_counter()
            result = client.embed(request)
            seconds = time.perf_counter() - start
            with lock:
                latencies.append((len(request), seconds))
                vectors.update(zip(result.ids, result.vectors, strict=True))
                cached += sum(result.cached)
                bar.update(sum(len(r) for r in request))

    wall = together(sdk, loop)
    bar.close()
    for client in sdk:
        client.close()
    return wall, latencies, vectors, cached


def embed_in_process(
    records: list[ProteinRecord], model: LoadedModel
) -> tuple[dict[str, np.ndarray], float]:
    """What `protssl embed` does with these records: vectors by id and the seconds it took."""
    start = time.perf_counter()
    vectors = {e.id: e.vector for e in embed_records(records, model, EmbedConfig())}
    return vectors, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fasta", type=Path, default=DEFAULT_FASTA)
    parser.add_argument("--records", type=int, default=384, help="records drawn from the FASTA")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--model",
        default=None if (DEFAULT_MODEL_DIR / "model.json").is_file() else "esm2-8m",
        help="model spec for both sides (default: the shipped model, else the esm2-8m preset)",
    )
    defaults = ServiceConfig()
    parser.add_argument("--max-batch-tokens", type=int, default=defaults.max_batch_tokens)
    parser.add_argument("--max-group-tokens", type=int, default=defaults.max_group_tokens)
    parser.add_argument("--min-batch-fill", type=float, default=defaults.min_batch_fill)
    parser.add_argument("--max-queue-delay-ms", type=float, default=defaults.max_queue_delay_ms)
    parser.add_argument(
        "--processes", type=int, default=defaults.processes, help="server processes on the port"
    )
    parser.add_argument(
        "--no-store", dest="store", action="store_false", help="no cache (no hit phase)"
    )
    parser.add_argument(
        "--database-url",
        help="the server's store (default: a fresh SQLite file); a PostgreSQL one must start empty",
    )
    parser.add_argument(
        "--memory-cache-mb",
        type=int,
        default=defaults.memory_cache_mb,
        help="the server's memory layer; 0 sends every hit to SQL",
    )
    parser.add_argument(
        "--hit-passes",
        type=int,
        default=1,
        help="times the C clients send every request again as hits (p99 over all of them)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve-floor", type=Path, help=argparse.SUPPRESS)  # the floor's process
    args = parser.parse_args(argv)
    if args.serve_floor:
        serve_floor(args.serve_floor)
        return 0
    logging.basicConfig(level=logging.WARNING)

    rng = np.random.default_rng(args.seed)
    pool = list(read_fasta(args.fasta))
    records = [pool[i] for i in sorted(rng.choice(len(pool), args.records, replace=False))]
    half = len(records) // 2
    requests = [[r] for r in records[:half]]
    requests += [records[i : i + 8] for i in range(half, len(records), 8)]
    order = rng.permutation(len(requests))
    requests = [requests[i] for i in order]
    residues = sum(len(r) for r in records)
    print(
        f"{len(records)} records, {residues} residues, {len(requests)} requests "
        f"({half} of 1 sequence, the rest of 8); {args.clients} clients",
        file=sys.stderr,
    )

    model = load_model(args.model)
    model.encoder.warm_up(EmbedConfig().max_tokens)  # as the server does before it serves
    list(embed_records(records[:8], model))  # warm-up
    inproc, before = embed_in_process(records, model)
    # The clients stand in for pipelines that run no model: hand the anchor's freed tensors back,
    # or protobuf's periodic malloc_trim in this process walks them mid-pass (~9 ms, all clients).
    release_freed_memory()

    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "server.log"
        process, port = start_server(args, log_path, Path(tmp) / "cache.db")
        address = f"127.0.0.1:{port}"
        try:
            with protssl.Client(address) as client:  # warm-up: the server's first forwards
                client.embed([r.sequence for r in pool[-8:]])
            miss_wall, miss_lat, served, miss_cached = run_clients(
                address, requests, args.clients, "misses"
            )
            hit_lat = Latencies()
            pass_p99: list[float | None] = []
            single_lat = Latencies()
            hit_cached = 0
            identical = None
            if args.store:
                for hit_pass in range(args.hit_passes):
                    _, lat, hit_vectors, hit_cached = run_clients(
                        address, requests, args.clients, f"hits, pass {hit_pass + 1}"
                    )
                    hit_lat += lat
                    pass_p99.append(lat.percentile(99))
                _, single_lat, _, _ = run_clients(address, requests, 1, "hits, one client")
                identical = all(np.array_equal(hit_vectors[k], served[k]) for k in served)
                print(f"cached vectors bit-identical to computed: {identical}", file=sys.stderr)
        finally:
            process.terminate()
            process.wait(60)
        floor_lat = Latencies()
        floor_single = Latencies()
        if args.store:
            floor, floor_port = start_floor(model, Path(tmp), Path(tmp) / "floor.log")
            floor_address = f"127.0.0.1:{floor_port}"
            try:
                for floor_pass in range(args.hit_passes):
                    floor_lat += run_clients(
                        floor_address, requests, args.clients, f"floor, pass {floor_pass + 1}"
                    )[1]
                _, floor_single, _, _ = run_clients(floor_address, requests, 1, "floor, one client")
            finally:
                floor.terminate()
                floor.wait(60)
    _, after = embed_in_process(records, model)
    inproc_res_per_s = residues / ((before + after) / 2)
    print(
        f"in-process: {residues / before:.0f} res/s before the service run, "
        f"{residues / after:.0f} after ({model.dtype_name}); the mean is the anchor",
        file=sys.stderr,
    )
    cos = [
        float(
            np.dot(served[k], inproc[k]) / (np.linalg.norm(served[k]) * np.linalg.norm(inproc[k]))
        )
        for k in inproc
    ]
    service_res_per_s = residues / miss_wall
    result = {
        "model": model.name,
        "dtype": model.dtype_name,
        "records": len(records),
        "residues": residues,
        "requests": len(requests),
        "clients": args.clients,
        "processes": args.processes,
        "store": (StoreConfig(url=args.database_url).dialect if args.database_url else "sqlite")
        if args.store
        else None,
        "memory_cache_mb": args.memory_cache_mb if args.store else None,
        "service_res_per_s": round(service_res_per_s, 1),
        "inproc_res_per_s": round(inproc_res_per_s, 1),
        "ratio": round(service_res_per_s / inproc_res_per_s, 3),
        "p50_ms": miss_lat.percentile(50, digits=1),
        "p99_ms": miss_lat.percentile(99, digits=1),
        "miss_cached": miss_cached,
        "hit_p50_ms": hit_lat.percentile(50),
        "hit_p99_ms": hit_lat.percentile(99),
        "hit_p99_ms_by_size": hit_lat.p99_by_size() if hit_lat else None,
        "hit_p99_ms_by_pass": pass_p99 or None,
        "hit_cached": hit_cached if hit_lat else None,
        "hits_bit_identical": identical,
        "hit_1client_p50_ms": single_lat.percentile(50),
        "hit_1client_p99_ms": single_lat.percentile(99),
        "floor_p50_ms": floor_lat.percentile(50),
        "floor_p99_ms": floor_lat.percentile(99),
        "floor_1client_p50_ms": floor_single.percentile(50),
        "hit_p99_over_floor": round(
            float(np.percentile(hit_lat.ms(), 99) / np.percentile(floor_lat.ms(), 99)), 2
        )
        if hit_lat and floor_lat
        else None,
        "min_cosine_vs_inproc": round(min(cos), 6),
    }
    result["machine"] = describe()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
