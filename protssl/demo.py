"""The service demo: a server in this process, the examples through the SDK, then a few-shot classifier.

    python -m protssl.demo [--model PATH]     (what `make demo` runs)

Starts the gRPC server on a free loopback port (the shipped default model unless --model, a
throwaway SQLite store) with authentication on, as a real deployment runs it: a `write` API token
is made in the store first and the SDK sends it. Then it embeds examples/proteins.fasta over EmbedStream, embeds a few again to
show cache hits, fits a classifier on examples/labelled.fasta, classifies
examples/labelled_query.fasta, prints the first two queries of each family (answered, or why the
classifier abstained), and stops the server.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from protssl.analysis.config import EXAMPLES_DIR
from protssl.client import ClassifierInfo, Client, ClientPrediction
from protssl.entrypoint import configure_logging
from protssl.fasta import read_fasta
from protssl.store import Store, StoreConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default=None, help="model spec (default: the shipped model)")
    parser.add_argument("--examples", type=Path, default=EXAMPLES_DIR)
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    from service.config import ServiceConfig
    from service.server import create_server

    with tempfile.TemporaryDirectory() as tmp:
        database_url = f"sqlite:///{Path(tmp) / 'demo.sqlite3'}"
        with Store(StoreConfig(url=database_url)) as store:
            row, token = store.tokens.create("write", name="demo")
        config = ServiceConfig(
            port=0, model=args.model, metrics_port=None, database_url=database_url
        )
        server, port = create_server(config)
        server.start()
        address = f"127.0.0.1:{port}"
        print(f"server: protssl.v1 on {address}, API tokens required")
        print(f"token: {row.id} ({row.role}), made as `protssl token create --role write` would")
        try:
            with Client(address, token=token) as client:
                run(client, args.examples, database_url)
        finally:
            server.stop(grace=5.0)
            print("server stopped")
    return 0


def run(client: Client, examples: Path, database_url: str) -> None:
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
    # no method or pooling named: auto (hybrid: the examples' sequences are at hand) and the
    # pooling the model's card recommends, else mean
    info = client.create_classifier("is-families", support, new_version=True)
    m = info.metrics
    print(
        f"classifier {info.name} v{info.version}: {len(info.labels)} families from "
        f"{info.examples} examples, {info.method} head, {info.pooling} pooling, layer {m['layer']}, "
        f"{m['held_out']} accuracy {m['top1_accuracy']:.2f} (answers {m['answered_rate']:.0%})"
    )
    queries = list(read_fasta(examples / "labelled_query.fasta"))
    predictions = client.classify("is-families", queries, top_k=2)
    answered = [(p, q) for p, q in zip(predictions, queries, strict=True) if not p.abstained]
    correct = sum(p.label in q.labels for p, q in answered)
    print(
        f"classified {len(queries)} held-out transposases: {len(answered)} answered, "
        f"{correct} correct, {len(queries) - len(answered)} abstained"
    )
    shown: dict[str, int] = {}
    for prediction, query in zip(predictions, queries, strict=True):
        family = query.labels[0]
        shown[family] = shown.get(family, 0) + 1
        if shown[family] <= 2:
            said = _reason(prediction, info)
            print(f"  {query.id:<14} true {family:<12} {said}")


def _reason(prediction: ClientPrediction, info: ClassifierInfo) -> str:
    """What the classifier said, or why it abstained: too far from all support, or unsure."""
    top = ", ".join(f"{label} {p:.2f}" for label, p in prediction.top)
    if not prediction.abstained:
        return f"said {prediction.label:<12} top: {top}"
    if prediction.reason == "out_of_distribution":
        return (
            f"abstains: nearest support example at cosine {prediction.nearest_similarity:.3f} "
            f"< out-of-distribution gate {info.ood_threshold:.3f}"
        )
    label, probability = prediction.top[0]
    return (
        f"abstains: best {label} {probability:.2f} < confidence cut {info.threshold:.2f} "
        f"(set on held-out support; top: {top})"
    )


if __name__ == "__main__":
    sys.exit(main())
