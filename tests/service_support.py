"""Helpers for the service and client tests: a small random-weight model and a real server."""

from __future__ import annotations

import itertools
import os
import re
import selectors
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from protssl._proto import protssl_pb2 as pb
from protssl.checkpoint import LoadedModel, load_model, save_model
from protssl.fasta import ProteinRecord, read_fasta
from protssl.model import ModelConfig, ProteinEncoder, init_weights
from service.config import ServiceConfig
from service.server import ProtsslServer, create_server

TINY = ModelConfig(num_layers=2, embed_dim=64, attention_heads=4, ffn_dim=128)


def save_tiny_model(directory: Path) -> Path:
    """A 2-layer random-weight encoder written with save_model (the real on-disk format)."""
    encoder = ProteinEncoder(TINY)
    init_weights(encoder, seed=1)
    save_model(encoder, directory, name="tiny-test")
    return directory


def load_tiny(directory: Path) -> LoadedModel:
    return load_model(directory, dtype="float32")


def real_records(fasta: Path, n: int, *, max_length: int | None = None) -> list[ProteinRecord]:
    """The first `n` records of a real FASTA file (optionally only those up to `max_length`)."""
    records = (r for r in read_fasta(fasta) if max_length is None or len(r) <= max_length)
    return list(itertools.islice(records, n))


@contextmanager
def running_server(
    model: LoadedModel, **overrides: object
) -> Iterator[tuple[ProtsslServer, str, CollectorRegistry]]:
    """A started server on an ephemeral loopback port; stopped on exit.

    No store unless `database_url` (and `store=True`) is given: the cache is tested on purpose.
    No authentication on this loopback server unless `insecure_no_auth=False` (tests/test_auth.py).
    """
    registry = CollectorRegistry()
    settings: dict[str, object] = {
        "port": 0,
        "metrics_port": None,
        "store": False,
        "insecure_no_auth": True,
    }
    settings.update(overrides)
    server, port = create_server(ServiceConfig(**settings), model=model, registry=registry)  # type: ignore[arg-type]
    server.start()
    try:
        yield server, f"127.0.0.1:{port}", registry
    finally:
        server.stop(grace=1.0)


def wait_for_line(
    process: subprocess.Popen[str], pattern: str, timeout: float = 300.0
) -> tuple[re.Match[str], list[str]]:
    """Read the process's stderr until a line matches `pattern`; fail (not hang) past `timeout`.

    Reads the pipe's file descriptor directly (no buffered text layer that select cannot see), so
    a later `communicate()` gets everything after the chunk that held the match. Returns the match
    and the lines read so far.
    """
    assert process.stderr is not None
    fd = process.stderr.fileno()
    lines: list[str] = []
    pending = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break  # the process closed stderr (exited)
            *complete, pending = (pending + chunk).split(b"\n")
            for raw in complete:
                lines.append(raw.decode(errors="replace") + "\n")
                match = re.search(pattern, lines[-1])
                if match:
                    return match, lines
    raise AssertionError(f"no line matching {pattern!r} within {timeout:.0f} s:\n{''.join(lines)}")


def request_for(records: list[ProteinRecord], **options: object) -> pb.EmbedRequest:
    return pb.EmbedRequest(
        sequences=[pb.Sequence(id=r.id, sequence=r.sequence) for r in records],
        options=pb.EmbedOptions(**options),  # type: ignore[arg-type]
    )


def vectors(response: pb.EmbedResponse, dtype: str = "<f4") -> dict[str, np.ndarray]:
    out = {}
    for e in response.embeddings:
        v = np.frombuffer(e.vector, dtype=dtype).astype(np.float32)
        out[e.id] = v.reshape(e.length, e.dim) if e.provenance.pooling == "per-residue" else v
    return out


def rpc_error(call: object, *args: object, **kwargs: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    return info.value


def big_request(n: int = 16, length: int = 1000) -> pb.EmbedRequest:
    rng = np.random.default_rng(0)
    letters = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    return pb.EmbedRequest(
        sequences=[pb.Sequence(sequence="".join(rng.choice(letters, length))) for _ in range(n)]
    )


def wait_for(predicate: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)
