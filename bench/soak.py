"""Soak: a bounded run of mixed, partly bad traffic against a real `python -m service`.

C client threads (each its own channel) call Embed (1-8 real sequences, mostly repeats: cache hits
and misses) and Classify on a classifier created first, closed loop, for `--duration` seconds. A
share `--bad-rate` of calls are bad on purpose, each of a kind with the status it must get
(invalid residue, too many sequences, an id past max_id_length, undecodable bytes, an unknown
model or classifier, a label holding ';'). Beside them, to measure that no client can starve the
others (bounded resources per client): `--stalled` streams that open and then send nothing (the
server must end each after its idle timeout, DEADLINE_EXCEEDED), and one flooder sending tiny
calls (ListModels) back to back on its own connection.

The server runs with authentication on (as deployed); the clients carry a write token the soak
makes in the store first.

Pass: zero unexpected statuses (a good call not OK, a bad call not its status), no "unexpected
error" in the server's log, every client served, server RSS growth < 10% between the end of a
warm-up (the first tenth of the run) and the end. The last line printed is one JSON object:
calls, statuses, expected vs unexpected, RSS start/end, p50/p99 of the good calls.

    python bench/soak.py                       # 60 s, 32 clients, the shipped model
    python bench/soak.py --duration 5 --clients 8 --model tests/… # a quick functional run
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil

from protssl._proto import protssl_pb2 as pb
from protssl._proto import protssl_pb2_grpc as pb_grpc
from protssl.fasta import ProteinRecord, read_fasta
from protssl.store import Store, StoreConfig

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
MAX_SEQUENCES = 128
MAX_ID_LENGTH = 100
STREAM_IDLE_S = 2.0


@dataclass
class Tally:
    """What every thread reports: statuses, expected or not, and the good calls' latencies."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    expected: int = 0
    unexpected: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    per_client: collections.Counter[int] = field(default_factory=collections.Counter)

    def record(self, kind: str, want: grpc.StatusCode, got: grpc.StatusCode, detail: str) -> None:
        with self.lock:
            self.statuses[got.name] += 1
            if got == want:
                self.expected += 1
            else:
                self.unexpected.append(f"{kind}: wanted {want.name}, got {got.name}: {detail}")


class BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call of the soak's raw stubs."""

    def __init__(self, token: str) -> None:
        self._metadata = ("authorization", f"Bearer {token}")

    def _with_token(self, details: Any) -> Any:
        return details._replace(metadata=(*(details.metadata or ()), self._metadata))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)


def channel_to(address: str, token: str) -> grpc.Channel:
    """A channel whose calls carry the soak's API token (the server runs with authentication)."""
    return grpc.intercept_channel(grpc.insecure_channel(address), BearerToken(token))


def _call(fn: Callable[[], object]) -> tuple[grpc.StatusCode, str, float]:
    started = time.perf_counter()
    try:
        result = fn()
        if hasattr(result, "__next__"):
            for _ in result:  # type: ignore[attr-defined]
                pass
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or "", time.perf_counter() - started  # type: ignore[attr-defined]
    return OK, "", time.perf_counter() - started


def _sequences(rng: random.Random, records: list[ProteinRecord], n: int) -> list[pb.Sequence]:
    picked = rng.sample(records, n)
    return [pb.Sequence(id=r.id, sequence=r.sequence) for r in picked]


def bad_requests(
    channel: grpc.Channel, records: list[ProteinRecord]
) -> list[tuple[str, grpc.StatusCode, Callable[[], object]]]:
    """Each kind of bad call and the status it must get."""
    embed = pb_grpc.EmbeddingServiceStub(channel)
    classifiers = pb_grpc.ClassifierServiceStub(channel)
    raw = channel.unary_unary("/protssl.v1.EmbeddingService/Embed")
    one = records[0].sequence
    labelled = [
        pb.LabelledSequence(id=r.id, sequence=r.sequence, labels=["A;B" if i == 0 else "C"])
        for i, r in enumerate(records[:4])
    ]
    return [
        (
            "invalid residue",
            INVALID,
            lambda: embed.Embed(
                pb.EmbedRequest(sequences=[pb.Sequence(id="x", sequence=one[:5] + "@" + one[5:])]),
                timeout=60,
            ),
        ),
        (
            "too many sequences",
            INVALID,
            lambda: embed.Embed(
                pb.EmbedRequest(sequences=[pb.Sequence(sequence="MKV")] * (MAX_SEQUENCES + 1)),
                timeout=60,
            ),
        ),
        (
            "id too long",
            INVALID,
            lambda: embed.Embed(
                pb.EmbedRequest(sequences=[pb.Sequence(id="i" * 1_000_000, sequence="MKV")]),
                timeout=60,
            ),
        ),
        ("undecodable bytes", INVALID, lambda: raw(b"\x0a\x05\x0a\x02\xff\xfe", timeout=60)),
        (
            "unknown model",
            NOT_FOUND,
            lambda: embed.Embed(
                pb.EmbedRequest(
                    sequences=[pb.Sequence(sequence="MKV")],
                    options=pb.EmbedOptions(model="no-such-model"),
                ),
                timeout=60,
            ),
        ),
        (
            "unknown classifier",
            NOT_FOUND,
            lambda: classifiers.Classify(
                pb.ClassifyRequest(
                    name="no-such-classifier", sequences=[pb.Sequence(sequence="MKV")]
                ),
                timeout=60,
            ),
        ),
        (
            "label with ';'",
            INVALID,
            lambda: classifiers.CreateClassifier(
                pb.CreateClassifierRequest(name="bad-labels", examples=labelled), timeout=60
            ),
        ),
    ]


def client(
    index: int,
    address: str,
    token: str,
    records: list[ProteinRecord],
    deadline: float,
    bad_rate: float,
    tally: Tally,
) -> None:
    """One closed-loop client: good Embed and Classify calls, a share of bad ones."""
    rng = random.Random(index)
    with channel_to(address, token) as channel:
        embed = pb_grpc.EmbeddingServiceStub(channel)
        classifiers = pb_grpc.ClassifierServiceStub(channel)
        bad = bad_requests(channel, records)
        while time.monotonic() < deadline:
            if rng.random() < bad_rate:
                kind, want, fn = rng.choice(bad)
                got, detail, _ = _call(fn)
                tally.record(kind, want, got, detail)
                continue
            if rng.random() < 0.7:
                request = pb.EmbedRequest(sequences=_sequences(rng, records, rng.choice([1, 1, 8])))
                kind, fn = "embed", functools.partial(embed.Embed, request, timeout=120)
            else:
                query = pb.ClassifyRequest(name="soak", sequences=_sequences(rng, records, 2))
                kind, fn = "classify", functools.partial(classifiers.Classify, query, timeout=120)
            got, detail, seconds = _call(fn)
            tally.record(kind, OK, got, detail)
            if got == OK:
                with tally.lock:
                    tally.latencies.append(seconds)
                    tally.per_client[index] += 1


def stalled_stream(address: str, token: str, tally: Tally, deadline: float) -> None:
    """Open EmbedStreams that send nothing, one after another: the server must end each after its
    idle timeout (DEADLINE_EXCEEDED) rather than let it hold a handler thread."""
    with channel_to(address, token) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        while time.monotonic() < deadline - STREAM_IDLE_S - 1:
            release = threading.Event()

            def silent(release: threading.Event = release) -> Iterator[pb.EmbedStreamRequest]:
                release.wait(max(0.0, deadline - time.monotonic()))
                yield from ()

            got, detail, _ = _call(lambda: stub.EmbedStream(silent(), timeout=120))
            release.set()
            tally.record("stalled stream", grpc.StatusCode.DEADLINE_EXCEEDED, got, detail)


def flooder(address: str, token: str, tally: Tally, deadline: float) -> int:
    """Tiny calls back to back on one connection; returns how many were answered."""
    answered = 0
    with channel_to(address, token) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        while time.monotonic() < deadline:
            got, detail, _ = _call(lambda: stub.ListModels(pb.ListModelsRequest(), timeout=30))
            if got != OK:
                tally.record("flood", OK, got, detail)
            answered += got == OK
    return answered


def start_server(args: argparse.Namespace, url: str) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "service", "--port", "0", "--metrics-port", "off"]
    command += ["--database-url", url]
    command += ["--max-sequences", str(MAX_SEQUENCES), "--max-id-length", str(MAX_ID_LENGTH)]
    command += ["--stream-idle-timeout-s", str(STREAM_IDLE_S), "--workers", str(args.workers)]
    if args.model:
        command += ["--model", args.model]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    env.pop("PROTSSL_INSECURE_NO_AUTH", None)  # authentication on, as deployed
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:
        sys.stderr.write(line)
        match = re.search(r"serving protssl.v1 on (\S+:\d+)", line)
        if match:
            return process, match.group(1)
    raise SystemExit(f"the server exited before serving ({process.wait()})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--clients", type=int, default=32, help="client threads (default 32)")
    parser.add_argument("--bad-rate", type=float, default=0.01, help="share of bad calls (0.01)")
    parser.add_argument("--stalled", type=int, default=2, help="stalled streams (default 2)")
    parser.add_argument("--workers", type=int, default=64, help="server handler threads (64)")
    parser.add_argument("--model", help="model folder or preset (default: the shipped model)")
    parser.add_argument("--database-url", help="store URL (default: a fresh SQLite file)")
    parser.add_argument("--fasta", default=str(EXAMPLES / "proteins.fasta"))
    parser.add_argument("--max-length", type=int, default=300, help="longest record used")
    args = parser.parse_args()

    records = [r for r in read_fasta(args.fasta) if len(r) <= args.max_length]
    support = list(read_fasta(EXAMPLES / "labelled.fasta"))
    tally = Tally()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'soak.sqlite3'}"
        with Store(StoreConfig(url=url)) as store:
            _, token = store.tokens.create("write", name="soak")
        process, address = start_server(args, url)
        server_log: list[str] = []
        assert process.stderr is not None
        drain = threading.Thread(target=lambda: server_log.extend(process.stderr), daemon=True)  # type: ignore[arg-type]
        drain.start()
        try:
            with channel_to(address, token) as channel:
                pb_grpc.ClassifierServiceStub(channel).CreateClassifier(
                    pb.CreateClassifierRequest(
                        name="soak",
                        new_version=True,
                        examples=[
                            pb.LabelledSequence(id=r.id, sequence=r.sequence, labels=r.labels)
                            for r in support
                        ],
                    ),
                    timeout=600,
                )
            started = time.monotonic()
            deadline = started + args.duration
            threads = [
                threading.Thread(
                    target=client, args=(i, address, token, records, deadline, args.bad_rate, tally)
                )
                for i in range(args.clients)
            ]
            threads += [
                threading.Thread(target=stalled_stream, args=(address, token, tally, deadline))
                for _ in range(args.stalled)
            ]
            flood: list[int] = []
            threads.append(
                threading.Thread(
                    target=lambda: flood.append(flooder(address, token, tally, deadline))
                )
            )
            for thread in threads:
                thread.start()
            server = psutil.Process(process.pid)
            time.sleep(args.duration / 10)
            rss_start = server.memory_info().rss
            for thread in threads:
                thread.join()
            rss_end = server.memory_info().rss
            elapsed = time.monotonic() - started
        finally:
            process.terminate()
            process.wait(timeout=60)
            drain.join(timeout=10)
    logged = [line for line in server_log if "unexpected error" in line]
    latencies = np.array(tally.latencies) * 1000 if tally.latencies else np.zeros(1)
    served = [tally.per_client[i] for i in range(args.clients)]
    growth = rss_end / rss_start - 1
    passed = not tally.unexpected and not logged and min(served) > 0 and growth < 0.10
    for line in tally.unexpected[:20] + logged[:20]:
        print(line, file=sys.stderr)
    summary = {
        "duration_s": round(elapsed, 1),
        "clients": args.clients,
        "calls": sum(tally.statuses.values()),
        "statuses": dict(tally.statuses),
        "expected": tally.expected,
        "unexpected": len(tally.unexpected),
        "server_unexpected_log_lines": len(logged),
        "good_calls_min_per_client": min(served),
        "flood_calls": sum(flood),
        "stalled_streams": args.stalled,
        "rss_start_mb": round(rss_start / 2**20, 1),
        "rss_end_mb": round(rss_end / 2**20, 1),
        "rss_growth": round(growth, 4),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "passed": passed,
    }
    print(json.dumps(summary))
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
