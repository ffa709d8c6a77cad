"""Few-shot quality: protssl's heads (hybrid included) on protssl embeddings against the anchors.

Tasks (all from ../shared/data, seeded, held-out whole sequences unless said):

- `ec_seq`: EC-4 classes of the CLEAN split10 file with >= 4 single-label sequences; a random
  `--ec-classes` of them, <= 5 sequences each, 2 held out per class as queries.
- `ec_episodes`: N-way K-shot episodes over other, disjoint EC-4 classes (whole classes held out
  from `ec_seq`), `--episodes` x `--ways`-way `--shots`-shot with 2 queries per class.
- `is_families`: the 30 IS transposase families; <= 5 support and <= 5 query sequences each.
- `pfam`: the 9 Pfam seed families (domains); half of each family (<= 5) support, the rest
  (<= 10) queries.
- `ood`: the `is_families` classifiers asked about every Pfam domain; the rate of `unknown`.
  `strangers_answered_rate`: how often they answer a family for what is no transposase at all:
  the Pfam domains, the `ec_seq` query enzymes, each query transposase shuffled (`shuffled`) and
  random sequences of the support's residues (`random`).

Anchors, computed here on the same splits: amino-acid + dipeptide composition 1-nearest-neighbour
(cosine; always answers), the same on features z-scored with the support set's statistics
(`composition_z_1nn`), and MMseqs2 best-hit transfer (`mmseqs easy-search`, e-value 1e-3; no hit =
no answer). The bench installs nothing: the MMseqs2 row is there whenever `mmseqs` is on PATH
(Debian/Ubuntu: `apt-get install mmseqs2`), and when it is not, a NOTE says so and the JSON has
`"mmseqs": false`. The `hybrid` head aligns (pyhmmer's phmmer) the support sequences that
embedding retrieval puts first and falls back to its embedding head without a significant hit;
`hybrid_vs_anchors` in the JSON compares it with MMseqs2 and with the best embedding-only head.

Metrics per task and method: micro F1 over labels with abstention (CLEAN's convention; abstaining
and backing off to a parent EC number cost recall), top-1 accuracy (forced choice), abstention
rate, back-off rate (EC tasks) and accuracy on answered. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from protssl.checkpoint import DEFAULT_MODEL_DIR, LoadedModel, load_model
from protssl.embedding import EmbedConfig
from protssl.errors import ModelNotFoundError
from protssl.evaluation import (
    Episode,
    composition_features,
    evaluate_episodes,
    evaluate_split,
    label_metrics,
    sample_episodes,
    segment_composition_features,
    shown_metric,
)
from protssl.fasta import FastaPolicy, ProteinRecord, read_fasta
from protssl.fewshot import (
    METHODS,
    FewShotClassifier,
    FewShotConfig,
    Prediction,
    candidate_layers,
    embed_for_fewshot,
)
from protssl.fewshot.config import Method
from protssl.info import describe
from protssl.pooling import POOLED

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
COMPOSITION_ANCHORS = (
    ("composition_1nn", composition_features, False),
    ("composition_z_1nn", composition_features, True),
    ("composition_segments_z_1nn", segment_composition_features, True),
)
"""(anchor name, features of sequences, z-score them with the support set's statistics); the
last is composition split as `segments` pooling splits a protein."""
ANCHORS = (*(name for name, _, _ in COMPOSITION_ANCHORS), "mmseqs2_best_hit")
SWEPT: Method = "knn"
"""The head run at each target precision of `--sweep` (the cheapest to fit: leave-one-out)."""
log = logging.getLogger("fewshot_quality")


# --- tasks ------------------------------------------------------------------------------------


def _by_label(records: Iterable[ProteinRecord]) -> dict[str, list[ProteinRecord]]:
    out: dict[str, list[ProteinRecord]] = defaultdict(list)
    for record in records:
        if len(record.labels) == 1:
            out[record.labels[0]].append(record)
    return out


def _split(
    groups: dict[str, list[ProteinRecord]],
    rng: np.random.Generator,
    *,
    support: int,
    query: int,
    half: bool = False,
) -> tuple[list[ProteinRecord], list[ProteinRecord]]:
    sup, qry = [], []
    for label in sorted(groups):
        rows = [groups[label][i] for i in rng.permutation(len(groups[label]))]
        n_support = min(support, len(rows) // 2) if half else min(support, len(rows) - 1)
        sup += rows[:n_support]
        qry += rows[n_support : n_support + query]
    return sup, qry


def make_tasks(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    ec = _by_label(read_fasta(DATA / "ec" / "clean_split10.fasta"))
    eligible = sorted(label for label, rows in ec.items() if len(rows) >= 4)
    order = [eligible[i] for i in rng.permutation(len(eligible))]
    seq_classes = order[: args.ec_classes]
    episode_classes = order[args.ec_classes : args.ec_classes + args.episode_classes]
    ec_support, ec_query = _split({c: ec[c][:5] for c in seq_classes}, rng, support=3, query=2)
    pool = [r for c in episode_classes for r in ec[c][: args.shots + 2]]
    episodes = sample_episodes(
        [r.labels for r in pool],
        episodes=args.episodes,
        ways=args.ways,
        shots=args.shots,
        queries=2,
        seed=args.seed,
    )
    is_groups = _by_label(
        read_fasta(
            DATA / "families" / "prokka_IS_transposase_families.fasta",
            policy=FastaPolicy(on_invalid="skip"),
        )
    )
    is_support, is_query = _split(is_groups, rng, support=5, query=5)
    pfam_groups = _by_label(read_fasta(DATA / "families" / "pfam_seed_small.fasta"))
    pfam_support, pfam_query = _split(pfam_groups, rng, support=5, query=10, half=True)
    return {
        "ec_seq": (ec_support, ec_query),
        "ec_episodes": (pool, episodes),
        "is_families": (is_support, is_query),
        "pfam": (pfam_support, pfam_query),
    }


def make_decoys(
    support: Sequence[ProteinRecord], query: Sequence[ProteinRecord], seed: int
) -> dict[str, list[ProteinRecord]]:
    """Sequences no transposase-family classifier should answer: each query transposase shuffled
    (its composition kept, its order gone) and random sequences as long as the queries, residues
    drawn from the support's (the composition of the family set, no protein at all)."""
    rng = np.random.default_rng(seed + 1)
    residues = np.array(list("".join(r.sequence for r in support)))
    shuffled = [
        ProteinRecord(f"shuffled_{r.id}", "".join(rng.permutation(list(r.sequence)))) for r in query
    ]
    random = [
        ProteinRecord(f"random_{i}", "".join(rng.choice(residues, len(r.sequence))))
        for i, r in enumerate(query[:50])
    ]
    return {"shuffled": shuffled, "random": random}


# --- anchors ----------------------------------------------------------------------------------


def _answer(query_id: str, labels: tuple[str, ...] | None, score: float) -> Prediction:
    if labels is None:
        return Prediction(query_id, ("unknown",), 0.0, "unknown", "", 0.0, 0.0)
    return Prediction(query_id, labels, 1.0, "answered", labels[0], 1.0, score)


def composition_1nn(
    support: Sequence[ProteinRecord],
    query: Sequence[ProteinRecord],
    *,
    standardise: bool = False,
    features: Callable[[Sequence[str]], np.ndarray] = composition_features,
) -> list[Prediction]:
    """Cosine 1-NN on composition vectors; `standardise` z-scores every feature first with the
    support set's mean and standard deviation (rare dipeptides then count as much as common ones)."""
    xs = features([r.sequence for r in support])
    xq = features([r.sequence for r in query])
    if standardise:
        mean, std = xs.mean(0), np.maximum(xs.std(0), 1e-6)
        xs, xq = (xs - mean) / std, (xq - mean) / std
    xs = xs / np.maximum(np.linalg.norm(xs, axis=1, keepdims=True), 1e-12)
    xq = xq / np.maximum(np.linalg.norm(xq, axis=1, keepdims=True), 1e-12)
    sims = xq @ xs.T
    best = sims.argmax(1)
    return [
        _answer(r.id, support[j].labels, float(sims[i, j]))
        for i, (r, j) in enumerate(zip(query, best, strict=True))
    ]


def _write(path: Path, records: Sequence[ProteinRecord]) -> None:
    path.write_text("".join(f">{i}\n{r.sequence}\n" for i, r in enumerate(records)))


def mmseqs_hits(
    queries: Sequence[ProteinRecord], targets: Sequence[ProteinRecord], workdir: Path
) -> dict[int, list[tuple[int, float]]]:
    """Hits of each query index: (target index, bit score), best first (e-value <= 1e-3)."""
    _write(workdir / "q.fasta", queries)
    _write(workdir / "t.fasta", targets)
    out = workdir / "hits.m8"
    subprocess.run(
        [
            "mmseqs", "easy-search", str(workdir / "q.fasta"), str(workdir / "t.fasta"),
            str(out), str(workdir / "tmp"), "-e", "1e-3", "--max-seqs", "1000",
            "--threads", "2", "-v", "1",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    hits: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for line in out.read_text().splitlines():
        fields = line.split("\t")
        hits[int(fields[0])].append((int(fields[1]), float(fields[11])))
    for rows in hits.values():
        rows.sort(key=lambda h: -h[1])
    return hits


def mmseqs_transfer(
    hits: dict[int, list[tuple[int, float]]],
    query: Sequence[ProteinRecord],
    targets: Sequence[ProteinRecord],
    query_rows: Sequence[int],
    allowed: set[int] | None = None,
) -> list[Prediction]:
    """Labels of each query's best-scoring allowed target; no allowed hit = unknown."""
    out = []
    for record, row in zip(query, query_rows, strict=True):
        best = next((t for t, _ in hits.get(row, []) if allowed is None or t in allowed), None)
        labels = targets[best].labels if best is not None else None
        out.append(_answer(record.id, labels, 1.0))
    return out


# --- the run ----------------------------------------------------------------------------------


def load(spec: str | None) -> LoadedModel:
    try:
        return load_model(spec)
    except ModelNotFoundError as exc:
        if spec is not None:
            raise
        print(
            f"NOTE: {exc}. Falling back to the random-weight esm2-8m preset: its figures carry "
            "no biology. Pass --model DIR once a trained model exists.",
            file=sys.stderr,
        )
        return load_model("esm2-8m")


def cached_vectors(
    path: str | None,
    model: LoadedModel,
    records: Sequence[ProteinRecord],
    layers: Sequence[int],
    pooling: str,
) -> dict[int, np.ndarray] | None:
    """Vectors from an earlier run of this bench with the same model, records, layers, pooling."""
    if not path or not Path(path).is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        same = (
            str(data["sha"]) == model.sha256
            and str(data["pooling"] if "pooling" in data.files else "mean") == pooling
            and data["ids"].tolist() == [r.id for r in records]
            and all(f"layer{k}" in data.files for k in layers)
        )
        if not same:
            print(
                f"NOTE: {path} is for other records or another model; re-embedding", file=sys.stderr
            )
            return None
        return {k: data[f"layer{k}"] for k in layers}


def _rounded(value: float | None) -> float | None:
    """A metric to 4 decimals; None (not applicable: nothing answered) stays None."""
    return None if value is None else round(float(value), 4)


def _row(metrics: dict[str, Any], seconds: float, layer: Any = None) -> dict[str, Any]:
    keys = ("f1", "top1_accuracy", "abstention_rate", "backoff_rate", "accuracy_on_answered", "n")
    row = {k: _rounded(metrics[k]) if k != "n" else int(metrics[k]) for k in keys}
    row["seconds"] = round(seconds, 2)
    if layer is not None:
        row["layer"] = layer
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help=f"model folder (default {DEFAULT_MODEL_DIR})")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or int8")
    parser.add_argument("--ec-classes", type=int, default=60)
    parser.add_argument("--episode-classes", type=int, default=40)
    parser.add_argument("--episodes", type=int, default=12)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pooling",
        default="mean",
        choices=POOLED,
        help="how the classifiers' vectors are pooled (default mean)",
    )
    parser.add_argument(
        "--target-precision",
        type=float,
        default=FewShotConfig().target_precision,
        help="the heads' target precision (default the classifiers' own)",
    )
    parser.add_argument(
        "--sweep",
        type=lambda text: [float(t) for t in text.split(",")],
        default=[0.5, 0.7, 0.8, 0.9, 0.99],
        metavar="T,T,...",
        help=f"target precisions the {SWEPT} head is also run at (answered rate, accuracy)",
    )
    parser.add_argument(
        "--vectors-cache",
        metavar="NPZ",
        help="reuse (or write) the embedded vectors here; keyed by the model's sha256",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    start = time.perf_counter()
    model = load(args.model)
    tasks = make_tasks(args)
    layers = candidate_layers(model.encoder.config.num_layers)
    every = {r.id: r for records in tasks.values() for r in records[0]}
    every.update({r.id: r for name, (_, q) in tasks.items() if name != "ec_episodes" for r in q})
    is_support, is_query = tasks["is_families"]
    decoys = make_decoys(is_support, is_query, args.seed)
    every.update({r.id: r for rows in decoys.values() for r in rows})
    records = list(every.values())
    t0 = time.perf_counter()
    embed_config = EmbedConfig(pooling=args.pooling)
    vectors = cached_vectors(args.vectors_cache, model, records, layers, args.pooling)
    if vectors is None:
        with tqdm(
            total=sum(len(r) for r in records), unit="res", unit_scale=True, desc="embed"
        ) as bar:
            vectors = embed_for_fewshot(records, model, layers, embed_config, on_batch=bar.update)
        if args.vectors_cache:
            arrays = {f"layer{k}": v for k, v in vectors.items()}
            arrays["ids"] = np.array([r.id for r in records])
            arrays["sha"] = np.array(model.sha256)
            arrays["pooling"] = np.array(args.pooling)
            np.savez(args.vectors_cache, allow_pickle=False, **arrays)
    embed_seconds = time.perf_counter() - t0
    row_of = {r.id: i for i, r in enumerate(records)}

    def features(subset: Sequence[ProteinRecord]) -> dict[int, np.ndarray]:
        rows = [row_of[r.id] for r in subset]
        return {k: v[rows] for k, v in vectors.items()}

    def evaluate(name: str, config: FewShotConfig) -> dict[str, Any]:
        """One head's metrics on one task (episodes: over every episode)."""
        support, query = tasks[name]
        if name == "ec_episodes":
            return evaluate_episodes(
                features(support), [r.labels for r in support], query, config,
                sequences=[r.sequence for r in support],
            ).metrics  # fmt: skip
        return evaluate_split(
            features(support), [r.labels for r in support],
            features(query), [r.labels for r in query], config,
            support_sequences=[r.sequence for r in support],
            query_sequences=[r.sequence for r in query],
        ).metrics  # fmt: skip

    have_mmseqs = shutil.which("mmseqs") is not None
    if not have_mmseqs:
        print(
            "NOTE: mmseqs not found on PATH: NO MMseqs2 row in this run (this bench installs "
            "nothing; get it with `apt-get install mmseqs2` and rerun)",
            file=sys.stderr,
        )
    results: dict[str, dict[str, Any]] = {}
    ood: dict[str, float] = {}
    claimed: dict[str, dict[str, float]] = defaultdict(dict)
    target, sweep = args.target_precision, args.sweep
    swept: dict[str, dict[str, Any]] = defaultdict(dict)
    progress = tqdm(total=len(tasks) * (len(METHODS) + len(sweep)), desc="fit+predict", unit="head")
    work = Path(tempfile.mkdtemp(prefix="fewshot_quality_"))
    try:
        for name, (support, query) in tasks.items():
            results[name] = {}
            sizes = f"{len(support)} support"
            if name == "ec_episodes":
                episodes: list[Episode] = query
                sizes = f"{len(episodes)} episodes of {args.ways}-way {args.shots}-shot"
                for method in METHODS:
                    t0 = time.perf_counter()
                    metrics = evaluate(name, FewShotConfig(method, target_precision=target))
                    results[name][method] = _row(
                        metrics, time.perf_counter() - t0, metrics["layer"]
                    )
                    progress.update()
                truth = [support[i].labels for e in episodes for i in e.query]
                for anchor, anchor_features, standardise in COMPOSITION_ANCHORS:
                    t0 = time.perf_counter()
                    preds = []
                    for e in episodes:
                        s = [support[i] for i in e.support]
                        q = [support[i] for i in e.query]
                        preds += composition_1nn(
                            s, q, standardise=standardise, features=anchor_features
                        )
                    results[name][anchor] = _row(
                        label_metrics(truth, preds), time.perf_counter() - t0
                    )
                if have_mmseqs:
                    t0 = time.perf_counter()
                    (work / name).mkdir(parents=True, exist_ok=True)
                    hits = mmseqs_hits(support, support, work / name)  # the pool, all against all
                    preds = []
                    for e in episodes:
                        q = [support[i] for i in e.query]
                        preds += mmseqs_transfer(hits, q, support, e.query, set(e.support))
                    # allowed = the episode's support, which never holds the query itself
                    results[name]["mmseqs2_best_hit"] = _row(
                        label_metrics(truth, preds), time.perf_counter() - t0
                    )
            else:
                sizes += f", {len(query)} queries"
                truth = [r.labels for r in query]
                for method in METHODS:
                    t0 = time.perf_counter()
                    config = FewShotConfig(method, target_precision=target)
                    metrics = evaluate(name, config)
                    results[name][method] = _row(
                        metrics, time.perf_counter() - t0, metrics["layer"]
                    )
                    if name == "is_families":
                        classifier = FewShotClassifier.fit(
                            features(support),
                            [r.labels for r in support],
                            config,
                            sequences=[r.sequence for r in support],
                        )
                        pfam = tasks["pfam"][0] + tasks["pfam"][1]
                        strangers = {"pfam": pfam, **decoys, "ec": tasks["ec_seq"][1]}
                        for kind, rows in strangers.items():
                            answers = classifier.predict(
                                features(rows), sequences=[r.sequence for r in rows]
                            )
                            claimed[kind][method] = round(
                                float(np.mean([p.status == "answered" for p in answers])), 4
                            )
                            if kind == "pfam":
                                ood[method] = round(
                                    float(np.mean([p.status == "unknown" for p in answers])), 4
                                )
                    progress.update()
                for anchor, anchor_features, standardise in COMPOSITION_ANCHORS:
                    t0 = time.perf_counter()
                    preds = composition_1nn(
                        support, query, standardise=standardise, features=anchor_features
                    )
                    results[name][anchor] = _row(
                        label_metrics(truth, preds), time.perf_counter() - t0
                    )
                if have_mmseqs:
                    t0 = time.perf_counter()
                    (work / name).mkdir(parents=True, exist_ok=True)
                    hits = mmseqs_hits(query, support, work / name)
                    preds = mmseqs_transfer(hits, query, support, range(len(query)))
                    results[name]["mmseqs2_best_hit"] = _row(
                        label_metrics(truth, preds), time.perf_counter() - t0
                    )
            results[name]["_sizes"] = sizes
        for name in tasks:
            for t in sweep:
                metrics = evaluate(name, FewShotConfig(SWEPT, target_precision=t))
                swept[name][str(t)] = {
                    "answered_rate": _rounded(metrics["answered_rate"]),
                    "accuracy_on_answered": _rounded(metrics["accuracy_on_answered"]),
                    "f1": _rounded(metrics["f1"]),
                }
                progress.update()
    finally:
        progress.close()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nmodel {model.name} ({model.sha256[:12]}), layers tried {list(layers)}")
    print(f"embedded {len(records)} sequences in {embed_seconds:.1f} s\n")
    header = (
        f"{'task':<12} {'method':<18} {'F1':>6} {'top1':>6} {'abst':>6} {'backoff':>7} "
        f"{'acc@ans':>8} {'layer':>5} {'s':>6}"
    )
    print(header)
    for name, rows in results.items():
        print(f"{name:<12} ({rows['_sizes']})")
        for head, row in rows.items():
            if head.startswith("_"):
                continue
            print(
                f"{'':<12} {head:<18} {row['f1']:>6.3f} {row['top1_accuracy']:>6.3f} "
                f"{row['abstention_rate']:>6.3f} {row['backoff_rate']:>7.3f} "
                f"{shown_metric(row['accuracy_on_answered']):>8} "
                f"{row.get('layer', ''):>5} {row['seconds']:>6.1f}"
            )
    print(f"\nOOD: fraction of Pfam domains the IS-family classifiers call unknown: {ood}")
    print("fraction the IS-family classifiers answer with a family, by what they are asked:")
    for kind, by_method in claimed.items():
        print(f"  {kind:<9} " + "  ".join(f"{m} {rate:.2f}" for m, rate in by_method.items()))
    print(f"\n{SWEPT} by --target-precision: answered / accuracy on answered")
    for name, by_target in swept.items():
        cells = (
            f"{t}: {m['answered_rate']:.2f} / {shown_metric(m['accuracy_on_answered'])}"
            for t, m in by_target.items()
        )
        print(f"{name:<12} " + "   ".join(cells))
    best_vs_anchor = {}
    hybrid_vs_anchors = {}
    embedding_heads = [m for m in METHODS if m != "hybrid"]
    for name, rows in results.items():
        best = max(rows[m]["top1_accuracy"] for m in embedding_heads)
        mmseqs = rows.get("mmseqs2_best_hit")
        hybrid_vs_anchors[name] = {
            "hybrid_f1": rows["hybrid"]["f1"],
            "hybrid_top1": rows["hybrid"]["top1_accuracy"],
            "best_embedding_head_f1": max(rows[m]["f1"] for m in embedding_heads),
            "best_embedding_head_top1": max(rows[m]["top1_accuracy"] for m in embedding_heads),
            "mmseqs_f1": mmseqs["f1"] if mmseqs else None,
            "mmseqs_top1": mmseqs["top1_accuracy"] if mmseqs else None,
        }
        best_vs_anchor[name] = {
            "best_embedding_head_top1": best,
            "hybrid_top1": rows["hybrid"]["top1_accuracy"],
            "composition_top1": rows["composition_1nn"]["top1_accuracy"],
            "beats_composition": best > rows["composition_1nn"]["top1_accuracy"],
            "composition_z_top1": rows["composition_z_1nn"]["top1_accuracy"],
            "beats_composition_z": best > rows["composition_z_1nn"]["top1_accuracy"],
            "composition_segments_z_top1": rows["composition_segments_z_1nn"]["top1_accuracy"],
            "beats_composition_segments_z": best
            > rows["composition_segments_z_1nn"]["top1_accuracy"],
            "mmseqs_top1": rows.get("mmseqs2_best_hit", {}).get("top1_accuracy"),
        }
    summary = {
        "bench": "fewshot_quality",
        "model": model.name,
        "model_sha256": model.sha256,
        "pooling": args.pooling,
        "layers_tried": list(layers),
        "embed_seconds": round(embed_seconds, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
        "mmseqs": have_mmseqs,
        "results": results,
        "ood_unknown_rate": ood,
        "strangers_answered_rate": claimed,
        "target_precision": target,
        "target_sweep": {"method": SWEPT, **swept},
        "summary": best_vs_anchor,
        "hybrid_vs_anchors": hybrid_vs_anchors,
    }
    summary["machine"] = describe()
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
