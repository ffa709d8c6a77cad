"""CLI face of the few-shot classifiers: `fewshot-eval` (split or N-way K-shot episodes, --report).

Each handler parses its arguments, calls the library (`protssl.fewshot`, `protssl.evaluation`) and
prints; user errors are raised as protssl errors for `cli.main()` to turn into exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

from protssl.checkpoint import LoadedModel, check_dtype_name, load_model
from protssl.errors import InvalidInputError
from protssl.evaluation import (
    Episode,
    EvalResult,
    evaluate_episodes,
    evaluate_split,
    sample_episodes,
    write_report,
)
from protssl.fasta import FastaPolicy, ProteinRecord, read_fasta
from protssl.fewshot import METHODS, FewShotConfig, candidate_layers, embed_for_fewshot

__all__ = ["add_commands"]


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `fewshot-eval` to the CLI."""
    evaluate = subparsers.add_parser(
        "fewshot-eval",
        help="evaluate a few-shot classifier on labelled FASTA (split or N-way K-shot episodes)",
        description="Fit on --support, predict --query, print micro precision/recall/F1 over "
        "labels, top-1 accuracy, abstention rate and accuracy on answered; the last line is JSON. "
        "With --episodes, sample N-way K-shot episodes from --support alone.",
    )
    evaluate.add_argument("--support", required=True, metavar="FASTA", help="labelled FASTA")
    evaluate.add_argument("--query", metavar="FASTA", help="labelled FASTA to predict")
    evaluate.add_argument("--episodes", type=int, metavar="N", help="sample N episodes")
    evaluate.add_argument("--ways", type=int, default=5, metavar="W", help="classes per episode")
    evaluate.add_argument("--shots", type=int, default=5, metavar="K", help="support per class")
    evaluate.add_argument(
        "--queries", type=int, default=2, metavar="Q", help="queries per class in an episode"
    )
    evaluate.add_argument("--seed", type=int, default=0, help="episode sampling seed")
    evaluate.add_argument("--report", metavar="DIR", help="write PNG plots + HTML/Markdown here")
    _add_fit_args(evaluate)
    _add_model_args(evaluate)
    evaluate.set_defaults(func=_fewshot_eval)


def _add_fit_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=METHODS, default="prototype", help="classifier head")
    parser.add_argument("--k", type=int, default=5, help="neighbours for --method knn")
    parser.add_argument(
        "--target-precision",
        type=float,
        default=0.9,
        help="held-out precision the abstention threshold aims for (default 0.9)",
    )
    parser.add_argument(
        "--layers",
        metavar="L,L,...",
        help="candidate layers for the held-out layer choice (default: the model's upper layers)",
    )


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=None, help="model folder or preset (default: the shipped model)"
    )
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    parser.add_argument("--dtype", default="auto", help="auto, float32 or bfloat16")
    parser.add_argument(
        "--on-invalid",
        choices=("fail", "skip", "replace"),
        default="fail",
        help="records with invalid residues: fail, skip them, or replace with X",
    )


def _fit_config(args: argparse.Namespace) -> FewShotConfig:
    return FewShotConfig(method=args.method, k=args.k, target_precision=args.target_precision)


def _layers(args: argparse.Namespace, model: LoadedModel) -> tuple[int, ...]:
    if not args.layers:
        return candidate_layers(model.encoder.config.num_layers)
    try:
        return tuple(int(part) for part in args.layers.split(","))
    except ValueError:
        raise InvalidInputError(
            f"--layers must be integers like 3,4,6, not {args.layers!r}"
        ) from None


def _read(path: str, args: argparse.Namespace, *, labelled: bool) -> list[ProteinRecord]:
    records = list(read_fasta(path, policy=FastaPolicy(on_invalid=args.on_invalid)))
    if not records:
        raise InvalidInputError(f"{path}: no records")
    if labelled:
        unlabelled = next((r for r in records if not r.labels), None)
        if unlabelled is not None:
            raise InvalidInputError(
                f"{path}: record {unlabelled.id!r} has no label (write >ID label=A or label=A;B)"
            )
    return records


def _embed(
    records: Sequence[ProteinRecord], model: LoadedModel, layers: tuple[int, ...]
) -> dict[int, Any]:
    with tqdm(
        total=sum(len(r) for r in records), unit="res", unit_scale=True, desc="embedding"
    ) as bar:
        return embed_for_fewshot(records, model, layers, on_batch=bar.update)


def _print_metrics(metrics: dict[str, Any]) -> None:
    for key, value in metrics.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key:>22}  {shown}")


def _fewshot_eval(args: argparse.Namespace) -> int:
    if (args.query is None) == (args.episodes is None):
        raise InvalidInputError("give either --query FASTA or --episodes N (not both)")
    config = _fit_config(args)
    model = load_model(args.model, device=args.device, dtype=check_dtype_name(args.dtype))
    layers = _layers(args, model)
    support = _read(args.support, args, labelled=True)
    result: EvalResult
    if args.episodes is not None:
        labels = [r.labels for r in support]
        episodes = sample_episodes(
            labels,
            episodes=args.episodes,
            ways=args.ways,
            shots=args.shots,
            queries=args.queries,
            seed=args.seed,
        )
        used = sorted({i for e in episodes for i in (*e.support, *e.query)})
        features = _embed([support[i] for i in used], model, layers)
        position = {row: index for index, row in enumerate(used)}
        remapped = [
            Episode(
                e.classes,
                tuple(position[i] for i in e.support),
                tuple(position[i] for i in e.query),
            )
            for e in episodes
        ]
        result = evaluate_episodes(features, [labels[i] for i in used], remapped, config)
        title = f"{args.ways}-way {args.shots}-shot, {args.episodes} episodes, {args.method}"
    else:
        query = _read(args.query, args, labelled=True)
        features = _embed([*support, *query], model, layers)
        n = len(support)
        result = evaluate_split(
            {k: v[:n] for k, v in features.items()},
            [r.labels for r in support],
            {k: v[n:] for k, v in features.items()},
            [r.labels for r in query],
            config,
            query_ids=[r.id for r in query],
        )
        title = f"{args.method} on {len(support)} support, {len(query)} queries"
    metrics: dict[str, Any] = {
        **result.metrics,
        "method": args.method,
        "model": model.name,
        "model_sha256": model.sha256,
    }
    _print_metrics(metrics)
    if args.report:
        page = write_report(args.report, result, title=title)
        metrics["report"] = str(page)
        print(f"report: {page}", file=sys.stderr)
    print(json.dumps(metrics, sort_keys=True))
    return 0
