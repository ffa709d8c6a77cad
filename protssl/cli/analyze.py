"""`protssl analyze MODEL`: a report of what a model learned (`protssl.analysis`).

Writes report.md, report.html, report.json and the PNGs into `-o DIR`; the last line printed is
one JSON object (the headline). `--update-card` records the recommended layer and pooling and the
headline in a protssl model folder's card, and nothing else.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protssl.cli.args import MODEL_HELP, add_runtime_args, add_trust_args, load_model
from protssl.cli.commands import Command
from protssl.errors import InvalidInputError

__all__ = ["COMMANDS"]


def _shots(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 1,2,4,8,16, not {text!r}") from None


# flag -> AnalysisConfig field, its type, its help
_CONFIG_FLAGS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "--val-records": ("val_records", int, "held-out corpus records for bits per residue"),
    "--view-records": ("view_records", int, "held-out records for alignment, uniformity, rank"),
    "--shots": ("shots", _shots, "labelled examples per class on the learning curves"),
    "--draws": ("draws", int, "random splits per learning curve"),
    "--seed": ("seed", int, "seed of the views and the few-shot draws"),
}


def _build(parser: argparse.ArgumentParser) -> None:
    from protssl.analysis.config import DEFAULT_DATA_DIR, AnalysisConfig

    defaults = AnalysisConfig()
    parser.add_argument("model", help=MODEL_HELP.split(" (default")[0])
    parser.add_argument(
        "-o", "--output", type=Path, default=None, help="report folder (default: report-NAME)"
    )
    parser.add_argument(
        "--data",
        default=None,
        help=f"the shared data folder (default {DEFAULT_DATA_DIR}, and examples/ with rough "
        "figures where it is missing), or `examples` for those",
    )
    for flag, (field, kind, text) in _CONFIG_FLAGS.items():
        default = getattr(defaults, field)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        parser.add_argument(
            flag, dest=field, type=kind, default=default, help=f"{text} (default {shown})"
        )
    add_runtime_args(parser)
    add_trust_args(parser)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--update-card",
        action="store_true",
        help="write recommended_layer, recommended_pooling and the headline into the card",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=_analyze)


COMMANDS = (
    Command(
        "analyze",
        _build,
        help="report what a model learned: information, geometry, data efficiency",
        description="Bits per residue saved, alignment/uniformity/rank/purity per layer and "
        "pooling, few-shot learning curves beside composition and k-mer baselines.",
    ),
)


def _analyze(args: argparse.Namespace) -> int:
    import torch

    from protssl.analysis.config import AnalysisConfig
    from protssl.analysis.data import find_data
    from protssl.analysis.report import write_report
    from protssl.analysis.run import analyze
    from protssl.checkpoint import CARD_NAME, update_card_training
    from protssl.durable import make_folder

    model_dir = Path(args.model)
    if args.update_card and not (model_dir / CARD_NAME).is_file():
        raise InvalidInputError(f"--update-card needs a protssl model folder; {model_dir} is not")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = AnalysisConfig(
        **{field: getattr(args, field) for field, _, _ in _CONFIG_FLAGS.values()}
    )
    model = load_model(args)
    output = args.output or Path(f"report-{model.name}")
    make_folder(output, what="report folder")  # before the analysis, not after it
    result = analyze(
        model, find_data(args.data), config, model_path=model_dir, progress=not args.no_progress
    )
    top = write_report(result, output)
    if args.update_card:
        update_card_training(
            model_dir,
            {
                "recommended_layer": top["recommended_layer"],
                "recommended_pooling": top["recommended_pooling"],
                "analysis": top,
            },
        )
    print(json.dumps({**top, "report": str(output / "report.md")}))
    return 0
