"""The service demo: a server in this process, the examples through the SDK, then a few-shot classifier.

    python -m protssl.demo [--model PATH]     (what `make demo` runs)

Starts the gRPC server on a free loopback port (the shipped default model unless --model, a
throwaway SQLite store), embeds examples/proteins.fasta over EmbedStream, embeds a few again to
show cache hits, fits a classifier on examples/labelled.fasta, classifies
examples/labelled_query.fasta, prints the results, and stops the server.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from protssl.client import Client
from protssl.fasta import read_fasta

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default=None, help="model spec (default: the shipped model)")
    parser.add_argument("--examples", type=Path, default=EXAMPLES)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    from service.config import ServiceConfig
    from service.server import create_server

    with tempfile.TemporaryDirectory() as tmp:
        config = ServiceConfig(
            port=0,
            model=args.model,
            metrics_port=None,
            database_url=f"sqlite:///{Path(tmp) / 'demo.sqlite3'}",
        )
        server, port = create_server(config)
        server.start()
        address = f"127.0.0.1:{port}"
        print(f"server: protssl.v1 on {address}")
        try:
            with Client(address) as client:
                run(client, args.examples)
        finally:
            server.stop(grace=5.0)
            print("server stopped")
    return 0


def run(client: Client, examples: Path) -> None:
    """The SDK calls of the demo, printed as they go."""
    (model,) = client.list_models()
    print(
        f"model: {model.name} ({model.num_layers} layers, {model.embed_dim}-d, {model.compute_dtype})"
    )

    proteins = examples / "proteins.fasta"
    start = time.perf_counter()
    result = client.embed_fasta(proteins, progress=True)
    seconds = time.perf_counter() - start
    residues = sum(e.length for e in result.embeddings)
    print(
        f"embedded {len(result)} proteins ({residues:,} residues) over EmbedStream in "
        f"{seconds:.1f} s = {residues / seconds:,.0f} residues/s; vectors {result.vectors.shape}"
    )
    unit = result.vectors / np.linalg.norm(result.vectors, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -1.0)
    best = int(similarity.max(axis=1).argmax())
    print(f"most similar pair: {result.ids[best]} ~ {result.ids[int(similarity[best].argmax())]}")

    first = list(read_fasta(proteins))[:8]
    start = time.perf_counter()
    again = client.embed(first)
    milliseconds = (time.perf_counter() - start) * 1000
    identical = np.array_equal(again.vectors, result.vectors[:8])
    print(
        f"the first 8 again: {sum(again.cached)}/8 from the cache in {milliseconds:.1f} ms, "
        f"bit-identical: {identical}"
    )

    support = list(read_fasta(examples / "labelled.fasta"))
    info = client.create_classifier("is-families", support, method="prototype")
    m = info.metrics
    print(
        f"classifier {info.name} v{info.version}: {len(info.labels)} families from "
        f"{info.examples} examples, layer {m['layer']}, {m['held_out']} accuracy "
        f"{m['top1_accuracy']:.2f} (answers {m['answered_rate']:.0%})"
    )
    queries = list(read_fasta(examples / "labelled_query.fasta"))
    predictions = client.classify("is-families", queries, top_k=2)
    answered = [(p, q) for p, q in zip(predictions, queries, strict=True) if not p.abstained]
    correct = sum(p.label in q.labels for p, q in answered)
    print(
        f"classified {len(queries)} held-out transposases: {len(answered)} answered, "
        f"{correct} correct, {len(queries) - len(answered)} abstained"
    )
    for prediction, query in list(zip(predictions, queries, strict=True))[:6]:
        top = ", ".join(f"{label} {p:.2f}" for label, p in prediction.top)
        said = prediction.label or "(abstains)"
        print(f"  {query.id:<14} true {query.labels[0]:<12} said {said:<12} top: {top}")


if __name__ == "__main__":
    sys.exit(main())
