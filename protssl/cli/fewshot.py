"""CLI face of the few-shot classifiers: `classifier create|add|show|list|delete`, `classify`,
`fewshot-eval`.

Classifiers live in the store (`--db`, else PROTSSL_DATABASE_URL, else the default SQLite file):
`classifier create NAME --fasta LABELLED.fasta` saves version 1 (or the next version of an existing
name), `classifier add NAME --fasta MORE.fasta` refits on the old examples plus the new ones as the
next version, and `classify NAME INPUT.fasta` writes TSV or JSON. `fewshot-eval` fits on one
labelled file and scores another (or N-way K-shot episodes from one), optionally writing a report.

Each handler parses its arguments, calls the library (`protssl.fewshot`, `protssl.evaluation`) and
prints; user errors are raised as protssl errors for `protssl.cli.main()` to turn into exit codes.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from protssl.cli.args import (
    add_db_arg,
    add_fasta_policy_args,
    add_model_args,
    add_server_args,
    as_options,
    fasta_policy,
    finite_number,
    load_model,
    open_store,
    refuse_beside_server,
    server_client,
)
from protssl.cli.commands import Command, LazySubcommands, add_commands
from protssl.durable import (
    check_can_create,
    check_not_the_input,
    refuse_existing,
    writing_durably,
)
from protssl.entrypoint import keeping
from protssl.errors import InvalidInputError
from protssl.pooling import POOLED

if TYPE_CHECKING:
    from tqdm import tqdm

    from protssl.checkpoint import LoadedModel
    from protssl.embedding import CacheStats, EmbedConfig
    from protssl.evaluation import EvalResult
    from protssl.fasta import FastaPolicy, ProteinRecord, ReadStats
    from protssl.fewshot import FewShotClassifier, FewShotConfig, Prediction
    from protssl.store import EmbeddingCache

__all__ = ["COMMANDS"]


def _build_classifier(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(
        dest="classifier_command", required=True, metavar="ACTION", action=LazySubcommands
    )
    add_commands(actions, CLASSIFIER_ACTIONS)


def _build_create(create: argparse.ArgumentParser) -> None:
    create.add_argument("name", help="classifier name")
    create.add_argument("--fasta", required=True, metavar="FASTA", help="labelled FASTA")
    _add_fit_args(create)
    _add_model_args(create)
    add_db_arg(create)
    create.set_defaults(func=_classifier_create)


def _build_add(add: argparse.ArgumentParser) -> None:
    add.add_argument("name", help="classifier name")
    add.add_argument("--fasta", required=True, metavar="FASTA", help="labelled FASTA")
    _add_model_args(add)
    add_db_arg(add)
    add.set_defaults(func=_classifier_add)


def _build_show(show: argparse.ArgumentParser) -> None:
    show.add_argument("name", help="classifier name")
    show.add_argument("--version", type=int, default=None, help="default: the latest")
    add_db_arg(show)
    show.set_defaults(func=_classifier_show)


def _build_list(listing: argparse.ArgumentParser) -> None:
    listing.add_argument("--json", action="store_true", help="one JSON object per classifier")
    add_db_arg(listing)
    listing.set_defaults(func=_classifier_list)


def _build_delete(delete: argparse.ArgumentParser) -> None:
    delete.add_argument("name", help="classifier name")
    add_db_arg(delete)
    delete.set_defaults(func=_classifier_delete)


def _build_classify(classify: argparse.ArgumentParser) -> None:
    classify.add_argument("name", help="classifier name")
    classify.add_argument("input", help="FASTA file (.gz or - for stdin)")
    classify.add_argument("--version", type=int, default=None, help="default: the latest")
    classify.add_argument("--format", choices=("tsv", "json"), default="tsv", help="default: tsv")
    classify.add_argument(
        "-o", "--output", metavar="FILE", help="default: stdout; never the input file"
    )
    classify.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    _add_model_args(classify)
    add_db_arg(classify)
    add_server_args(classify, "classify")
    classify.set_defaults(func=_classify)


_CLASSIFY_LOCAL_ONLY = ("model", "dtype", "device", "db")
"""What the server decides for `classify --server` (the classifier names its model)."""


def _build_fewshot_eval(evaluate: argparse.ArgumentParser) -> None:
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
    add_db_arg(evaluate)
    evaluate.set_defaults(func=_fewshot_eval)


CLASSIFIER_ACTIONS = (
    Command(
        "create",
        _build_create,
        help="fit a classifier on labelled FASTA (>ID label=A or label=A;B) and save it",
        description="Fit on labelled FASTA and save as NAME (version 1, or the next version).",
    ),
    Command(
        "add",
        _build_add,
        help="add labelled examples: refit on old + new and save the next version",
        description="Refit NAME's latest version on its examples plus these; old versions stay.",
    ),
    Command("show", _build_show, help="print a stored classifier's summary as JSON"),
    Command("list", _build_list, help="the store's classifiers, the latest version of each"),
    Command(
        "delete",
        _build_delete,
        help="delete a classifier, every version of it",
        description="Delete NAME with all its versions and examples (the cached vectors stay).",
    ),
)

COMMANDS = (
    Command(
        "classifier",
        _build_classifier,
        help="create, extend, show, list or delete few-shot classifiers kept in the store",
    ),
    Command(
        "classify",
        _build_classify,
        help="label the records of a FASTA file with a stored classifier",
        description="Predict labels (or unknown, or a parent such as 1.1.1.-) for every record.",
    ),
    Command(
        "fewshot-eval",
        _build_fewshot_eval,
        help="evaluate a few-shot classifier on labelled FASTA (split or N-way K-shot episodes)",
        description="Fit on --support, predict --query, print micro precision/recall/F1 over "
        "labels, top-1 accuracy, abstention rate and accuracy on answered; the last line is JSON. "
        "With --episodes, sample N-way K-shot episodes from --support alone.",
    ),
)


def _add_fit_args(parser: argparse.ArgumentParser) -> None:
    from protssl.fewshot import CHOICES

    parser.add_argument(
        "--method",
        choices=CHOICES,
        default="auto",
        help="classifier head (default auto: hybrid, which answers from alignments where the "
        "support holds a homologue and from the embedding elsewhere, the most accurate head on "
        "the README's few-shot benchmark, at tens of ms a query; prototype or knn answer from "
        "the embedding alone in well under a millisecond)",
    )
    parser.add_argument("--k", type=int, default=5, help="neighbours for --method knn")
    parser.add_argument(
        "--pooling",
        choices=POOLED,
        default=None,
        help="how the vectors are pooled, for fitting and classifying (default: the pooling the "
        "model's card recommends, else mean)",
    )
    parser.add_argument(
        "--target-precision",
        type=finite_number,
        default=0.9,
        help="held-out precision the abstention threshold aims for (default 0.9)",
    )
    parser.add_argument(
        "--layers",
        metavar="L,L,...",
        help="candidate layers for the held-out layer choice (default: the model's upper layers)",
    )


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    add_model_args(
        parser, trust=False, note="classifying needs the model the classifier was fitted with"
    )
    add_fasta_policy_args(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _fit_config(args: argparse.Namespace) -> FewShotConfig:
    from protssl.fewshot import FewShotConfig

    config = FewShotConfig(method=args.method, k=args.k, target_precision=args.target_precision)
    return config.resolved(with_sequences=True)  # every command here fits on FASTA records


def _layers(args: argparse.Namespace, model: LoadedModel) -> tuple[int, ...]:
    """--layers, each checked against the model before any work (default: `candidate_layers`)."""
    from protssl.fewshot import candidate_layers

    if not args.layers:
        return candidate_layers(model.encoder.config.num_layers)
    try:
        layers = tuple(int(part) for part in args.layers.split(","))
    except ValueError:
        raise InvalidInputError(
            f"--layers must be integers like 3,4,6, not {args.layers!r}"
        ) from None
    for layer in layers:
        model.encoder.resolve_layer(layer)
    return layers


def _read(path: str, args: argparse.Namespace, *, labelled: bool) -> list[ProteinRecord]:
    from protssl.fasta import ReadStats, no_records_error, read_fasta, validate_fasta
    from protssl.fewshot import require_labels

    policy = fasta_policy(args)
    validate_fasta(path, policy=policy)  # every bad record named, not the first
    stats = ReadStats()
    records = list(read_fasta(path, policy=policy, stats=stats))
    if not records:
        raise no_records_error(path, stats.skipped_by())
    _say_skipped(path, stats)
    if labelled:
        require_labels([r.labels for r in records], [r.id for r in records], source=path)
    return records


def _say_skipped(path: str, stats: ReadStats) -> None:
    """On stderr, the records of `path` its --on-invalid/--on-empty/--on-duplicate skip left out
    (`skipped_note`), so that a command going on with the rest never drops them unsaid."""
    from protssl.fasta import skipped_note

    if (note := skipped_note(path, stats.records, stats.skipped_by())) is not None:
        print(as_options(note), file=sys.stderr)


def _bar(
    residues: int | None, args: argparse.Namespace, desc: str = "embedding", *, shown: bool = True
) -> tqdm[Any]:
    """The progress bar over that many residues (None: not known ahead, stdin); none with
    --no-progress or where not `shown` (its updates then do nothing)."""
    from protssl.progress import progress_bar

    return progress_bar(
        total=residues,
        unit="res",
        unit_scale=True,
        desc=desc,
        disable=args.no_progress or not shown,
    )


def _alignment_bar(
    splits: Sequence[tuple[Sequence[ProteinRecord], Sequence[ProteinRecord]]],
    config: FewShotConfig,
    args: argparse.Namespace,
) -> tqdm[Any]:
    """The bar over a hybrid evaluation's searches once the vectors are at hand: each fit's
    held-out alignments and its queries' (minutes on a big support); none for the other heads."""
    from protssl.fewshot import aligned_residues

    total = sum(
        aligned_residues(support, config) + sum(len(r) for r in query) for support, query in splits
    )
    hybrid = config.resolved(with_sequences=True).method == "hybrid"
    return _bar(total, args, "aligning", shown=hybrid)


def _desc(total: int | None, residues: int | None) -> str:
    """A bar's name: a hybrid classifier's also counts its alignment searches (`total` above the
    `residues` embedded)."""
    return "embedding" if total == residues else "embedding, aligning"


def _embed(
    records: Sequence[ProteinRecord],
    model: LoadedModel,
    layers: tuple[int, ...],
    embed_config: EmbedConfig,
    cache: EmbeddingCache,
    args: argparse.Namespace,
) -> dict[int, Any]:
    from protssl.embedding import CacheStats
    from protssl.fewshot import embed_for_fewshot

    stats = CacheStats()
    with _bar(sum(map(len, records)), args) as bar:
        vectors = embed_for_fewshot(
            records,
            model,
            layers,
            embed_config,
            on_batch=bar.update,
            cache=cache,
            stats=stats,
        )
    _print_stats(stats)
    return vectors


def _print_stats(stats: CacheStats) -> None:
    print(
        f"embedding: {stats.computed} sequences computed, {stats.cached} from the cache",
        file=sys.stderr,
    )


def _summary(stored: Any, classifier: FewShotClassifier) -> dict[str, Any]:
    return {
        "name": stored.name,
        "version": stored.version,
        "method": stored.method,
        "pooling": classifier.info.get("pooling", "mean"),
        "model_sha256": stored.model_sha256,
        "classes": list(classifier.classes),
        "examples": len(stored.examples),
        "layer": classifier.layer,
        "layer_scores": {str(k): v for k, v in classifier.layer_scores.items()},
        **stored.cuts,
        "support_metrics": classifier.support_metrics,
        "created_at": stored.created_at.isoformat(),
    }


def _answers(held_out: dict[str, Any]) -> str:
    """How much of held-out support it answers, and how well ("answers none" when it abstains on
    every example: an accuracy of nothing is not 0)."""
    accuracy = held_out.get("accuracy_on_answered")
    if accuracy is None or not held_out["answered_rate"]:
        return "answers none"
    return f"answers {held_out['answered_rate']:.0%} at accuracy {accuracy:.3f}"


def _print_saved(stored: Any, classifier: FewShotClassifier) -> None:
    held_out = classifier.support_metrics
    print(
        f"classifier {stored.name!r} version {stored.version}: {len(classifier.classes)} classes, "
        f"{len(stored.examples)} examples, {classifier.config.method} head, "
        f"{classifier.info.get('pooling', 'mean')} pooling, "
        f"layer {classifier.layer}; held-out "
        f"({held_out['held_out']}) top-1 accuracy {held_out['top1_accuracy']:.3f}, "
        f"{_answers(held_out)}"
    )
    target, reached = classifier.config.target_precision, held_out.get("best_precision")
    if reached is not None and reached < target:
        print(
            f"note: no confidence cut reaches --target-precision {target:g} on held-out support "
            f"(the best reaches {reached:.3f}), so it answers only where it is most sure; a lower "
            "--target-precision answers more",
            file=sys.stderr,
        )
    print(json.dumps(_summary(stored, classifier), sort_keys=True))


def _classifier_create(args: argparse.Namespace) -> int:
    from protssl.embedding import CacheStats
    from protssl.fewshot import classifier_embed_config, fit_records, fit_residues, save_classifier

    config = _fit_config(args)
    records = _read(args.fasta, args, labelled=True)
    model = load_model(args)
    layers = _layers(args, model)
    stats = CacheStats()
    with open_store(args) as store:
        total, residues = fit_residues(records, config), sum(map(len, records))
        with _bar(total, args, _desc(total, residues)) as bar:
            classifier = fit_records(
                records,
                model,
                config,
                layers=layers,
                embed_config=classifier_embed_config(args.pooling, model),
                on_batch=bar.update,
                cache=store.embeddings,
                stats=stats,
            )
        stored = save_classifier(store, args.name, classifier, records)
    _print_stats(stats)
    _print_saved(stored, classifier)
    return 0


def _classifier_add(args: argparse.Namespace) -> int:
    from protssl.embedding import CacheStats
    from protssl.fewshot import FewShotClassifier, add_examples

    records = _read(args.fasta, args, labelled=True)
    model = load_model(args)
    stats = CacheStats()
    bars: list[tqdm[Any]] = []  # drawn once its total is known: the examples are in the store
    with open_store(args) as store, contextlib.ExitStack() as stack:

        def on_total(total: int, residues: int) -> None:
            bars.append(stack.enter_context(_bar(total, args, _desc(total, residues))))

        stored = add_examples(
            store,
            args.name,
            records,
            model,
            on_batch=lambda residues: bars[0].update(residues),
            on_total=on_total,
            stats=stats,
        )
    _print_stats(stats)
    _print_saved(stored, FewShotClassifier.from_state(stored.params, stored.blob))
    return 0


def _classifier_show(args: argparse.Namespace) -> int:
    from protssl.fewshot import FewShotClassifier

    with open_store(args) as store:
        stored = store.classifiers.get(args.name, args.version)
    print(json.dumps(_summary(stored, FewShotClassifier.from_state(stored.params, stored.blob))))
    return 0


def _classifier_list(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        stored = store.classifiers.list()
    if not stored:
        print("(no classifiers in this store)", file=sys.stderr)
    if args.json:
        for listed in map(_listed, stored):
            print(json.dumps(listed, sort_keys=True))
        return 0
    print(f"{'name':<24}  {'version':>7}  {'method':<9}  {'pooling':<8}  {'classes':>7}  "
          f"{'examples':>8}  {'model':<12}  created (UTC)")  # fmt: skip
    for item in map(_listed, stored):
        print(f"{item['name']:<24}  {item['version']:>7}  {item['method']:<9}  "
              f"{item['pooling']:<8}  {item['classes']:>7}  {item['examples']:>8}  "
              f"{item['model_sha256'][:12]:<12}  {item['created_at'][:19].replace('T', ' ')}")  # fmt: skip
    return 0


def _listed(stored: Any) -> dict[str, Any]:
    """What `classifier list` shows of the latest version, read without unpickling its head."""
    return {
        "name": stored.name,
        "version": stored.version,
        "method": stored.method,
        "pooling": stored.pooling,
        "classes": len(stored.classes),
        "examples": len(stored.examples),
        "model_sha256": stored.model_sha256,
        "created_at": stored.created_at.isoformat(),
    }


def _classifier_delete(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        _, versions, _ = store.classifiers.identity(args.name)  # the latest, without its blob
        store.classifiers.delete(args.name)
    print(f"classifier {args.name!r} deleted ({versions} version{'s' * (versions != 1)})")
    return 0


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[TextIO]:
    """stdout, or FILE written whole or not at all (a pipeline never reads half a table)."""
    if path is None:
        yield sys.stdout
        return
    with writing_durably(Path(path)) as tmp, tmp.open("w") as handle:
        yield handle


CLASSIFY_CHUNK = 5000
"""Records `classify` reads, embeds and writes at a time: a metagenome's proteins never sit in memory
together, and what is done is written as it goes."""


def _classify(args: argparse.Namespace) -> int:
    from protssl.fasta import no_records_error, validate_fasta

    if args.output is not None:
        output = Path(args.output)
        check_can_create(output)
        check_not_the_input(output, args.input)
        if not args.overwrite:
            refuse_existing(output, advice="pass --overwrite to replace it")
    policy = fasta_policy(args)
    refuse_beside_server(args, _build_classify, _CLASSIFY_LOCAL_ONLY)
    checked = validate_fasta(args.input, policy=policy)  # every bad record named, before any work
    if checked is not None and checked.records == 0:
        raise no_records_error(args.input, checked.skipped)
    residues = checked.residues if checked is not None else None
    with keeping(_kept_when_interrupted(args)):
        if args.server is not None:
            return _classify_remote(args, policy, residues)
        return _classify_local(args, policy, residues)


def _kept_when_interrupted(args: argparse.Namespace) -> str:
    """What a `classify` stopped midway keeps: not the table file, written whole at the end; the
    vectors computed so far, in the store's cache (the server's, with --server)."""
    table = (
        "the rows printed so far stand"
        if args.output is None
        else f"nothing was written to {args.output!r} (it is written whole at the end)"
    )
    store = "the server's" if args.server is not None else "the store's"
    return (
        f"{table}; the vectors computed so far are kept in {store} cache, so the same command "
        "does not compute them again"
    )


def _classify_local(args: argparse.Namespace, policy: FastaPolicy, residues: int | None) -> int:
    """`classify` in this process: the store's classifier, this machine's model."""
    from protssl.embedding import CacheStats
    from protssl.fewshot import classify_records, load_classifier, progress_residues

    stats = CacheStats()
    with open_store(args) as store:
        classifier, _ = load_classifier(store, args.name, args.version)
        model = load_model(args)

        def predict(chunk: list[ProteinRecord], bar: tqdm[Any]) -> Sequence[Prediction]:
            return classify_records(
                classifier, chunk, model, on_batch=bar.update, cache=store.embeddings, stats=stats
            )

        # a hybrid classifier aligns each query after embedding it: one bar over both
        total = None if residues is None else progress_residues(classifier, residues)
        _write_predictions(args, policy, total, predict, _desc(total, residues))
    _print_stats(stats)
    return 0


def _classify_remote(args: argparse.Namespace, policy: FastaPolicy, residues: int | None) -> int:
    """`classify --server`: the server's classifier (and model, and store) answers, chunk by chunk,
    every chunk by the version the command started with; the table is the local one."""
    from protssl.embedding import CacheStats

    with server_client(args) as client:
        info = client.get_classifier(args.name, version=args.version)
        stats = CacheStats()

        def predict(chunk: list[ProteinRecord], bar: tqdm[Any]) -> Sequence[Prediction]:
            answers = client.classify(args.name, chunk, version=info.version, stats=stats)
            bar.update(sum(len(r) for r in chunk))
            return [answer.as_prediction() for answer in answers]

        rows = _write_predictions(args, policy, residues, predict)
    _print_stats(stats)
    print(
        f"classified {rows} records with {info.name} version {info.version} on {client.target}",
        file=sys.stderr,
    )
    return 0


def _write_predictions(
    args: argparse.Namespace,
    policy: FastaPolicy,
    residues: int | None,
    predict: Callable[[list[ProteinRecord], tqdm[Any]], Sequence[Prediction]],
    desc: str = "embedding",
) -> int:
    """`classify`'s table (or JSON) of the input's predictions, `CLASSIFY_CHUNK` records at a time
    through `predict` (which moves the bar on, to `residues`); returns the rows written."""
    from protssl.fasta import ReadStats, no_records_error, read_fasta

    with _bar(residues, args, desc) as bar, _output(args.output) as out:
        table = _PredictionTable(out, args.format)
        stats = ReadStats()
        records = read_fasta(args.input, policy=policy, stats=stats)
        while chunk := list(itertools.islice(records, CLASSIFY_CHUNK)):
            table.write(predict(chunk, bar))
        if table.rows == 0:
            raise no_records_error(args.input, stats.skipped_by())
        table.close()
    _say_skipped(args.input, stats)
    return table.rows


class _PredictionTable:
    """Predictions written as they come: TSV rows under one header, or one JSON list."""

    def __init__(self, out: TextIO, fmt: str) -> None:
        self.out, self.fmt, self.rows = out, fmt, 0

    def write(self, predictions: Sequence[Prediction]) -> None:
        for p in predictions:
            if self.fmt == "json":
                self.out.write("[\n" if self.rows == 0 else ",\n")
                self.out.write(json.dumps(p.as_dict(), indent=1))
            else:
                if self.rows == 0:
                    columns = (
                        "id",
                        "label",
                        "probability",
                        "status",
                        "top_label",
                        "top_probability",
                    )
                    self.out.write("\t".join(columns) + "\tnearest_similarity\treason\n")
                self.out.write(
                    f"{p.id}\t{p.label}\t{p.probability:.4f}\t{p.status}\t{p.top_label}\t"
                    f"{p.top_probability:.4f}\t{p.nearest_similarity:.4f}\t{p.reason or ''}\n"
                )
            self.rows += 1

    def close(self) -> None:
        if self.fmt == "json":
            self.out.write("\n]\n")


def _print_metrics(metrics: dict[str, Any]) -> None:
    from protssl.evaluation import shown_metric

    for key, value in metrics.items():
        print(f"{key:>22}  {shown_metric(value)}")


def _fewshot_eval(args: argparse.Namespace) -> int:
    from protssl.evaluation import write_report
    from protssl.fewshot import classifier_embed_config

    if (args.query is None) == (args.episodes is None):
        raise InvalidInputError("give either --query FASTA or --episodes N (not both)")
    config = _fit_config(args)
    model = load_model(args)
    layers = _layers(args, model)
    embed_config = classifier_embed_config(args.pooling, model)
    support = _read(args.support, args, labelled=True)
    with open_store(args) as store:
        result, title = _evaluate(
            args, config, model, layers, embed_config, support, store.embeddings
        )
    metrics: dict[str, Any] = {
        **result.metrics,
        "method": config.method,
        "pooling": embed_config.pooling,
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


def _evaluate(
    args: argparse.Namespace,
    config: FewShotConfig,
    model: LoadedModel,
    layers: tuple[int, ...],
    embed_config: EmbedConfig,
    support: list[ProteinRecord],
    cache: EmbeddingCache,
) -> tuple[EvalResult, str]:
    """Split or episodes, as the arguments ask; the result and its report title."""
    from protssl.evaluation import evaluate_episodes, evaluate_split
    from protssl.fewshot import sample_episodes, subset_episodes

    result: EvalResult
    if args.episodes is not None:
        episodes = sample_episodes(
            [r.labels for r in support],
            episodes=args.episodes,
            ways=args.ways,
            shots=args.shots,
            queries=args.queries,
            seed=args.seed,
        )
        used, remapped = subset_episodes(support, episodes)
        features = _embed(used, model, layers, embed_config, cache, args)
        splits = [([used[i] for i in e.support], [used[i] for i in e.query]) for e in remapped]
        with _alignment_bar(splits, config, args) as bar:
            result = evaluate_episodes(
                features,
                [r.labels for r in used],
                remapped,
                config,
                sequences=[r.sequence for r in used],
                on_search=bar.update,
            )
        title = f"{args.ways}-way {args.shots}-shot, {args.episodes} episodes, {config.method}"
    else:
        query = _read(args.query, args, labelled=True)
        features = _embed([*support, *query], model, layers, embed_config, cache, args)
        n = len(support)
        with _alignment_bar([(support, query)], config, args) as bar:
            result = evaluate_split(
                {k: v[:n] for k, v in features.items()},
                [r.labels for r in support],
                {k: v[n:] for k, v in features.items()},
                [r.labels for r in query],
                config,
                query_ids=[r.id for r in query],
                support_sequences=[r.sequence for r in support],
                query_sequences=[r.sequence for r in query],
                on_search=bar.update,
            )
        title = f"{config.method} on {len(support)} support, {len(query)} queries"
    return result, title
