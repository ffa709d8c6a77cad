"""`protssl analyze MODEL`: a report of what a model learned (`protssl.analysis`).

Writes report.md, report.html, report.json and the PNGs into `-o DIR`; the last line printed is
one JSON object (the headline). `--update-card` records the recommended layer and pooling and the
headline in a protssl model folder's card, and nothing else.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from protssl.cli.commands import Command
from protssl.dtypes import DTYPE_NAMES
from protssl.errors import InvalidInputError

__all__ = ["COMMANDS"]


def _shots(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 1,2,4,8,16, not {text!r}") from None


def _build(parser: argparse.ArgumentParser) -> None:
    from protssl.analysis.data import DEFAULT_DATA_DIR
    from protssl.analysis.run import AnalysisConfig

    defaults = AnalysisConfig()
    parser.add_argument("model", help="model folder, fair-esm .pt or preset name")
    parser.add_argument(
        "-o", "--output", type=Path, default=None, help="report folder (default: report-NAME)"
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="the shared data folder (default ../shared/data beside the clone; "
        "without it, examples/ and rough figures)",
    )
    parser.add_argument(
        "--val-records",
        type=int,
        default=defaults.val_records,
        help="held-out corpus records for bits per residue",
    )
    parser.add_argument(
        "--view-records",
        type=int,
        default=defaults.view_records,
        help="held-out corpus records for alignment, uniformity, effective rank",
    )
    parser.add_argument(
        "--shots",
        type=_shots,
        default=defaults.shots,
        help="labelled examples per class on the learning curves (default 1,2,4,8,16)",
    )
    parser.add_argument(
        "--draws", type=int, default=defaults.draws, help="random splits per learning curve"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--dtype", default="auto", choices=DTYPE_NAMES)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
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

    from protssl.analysis.data import find_data
    from protssl.analysis.report import write_report
    from protssl.analysis.run import AnalysisConfig, analyze
    from protssl.checkpoint import CARD_NAME, load_model, update_card_training

    model_dir = Path(args.model)
    if args.update_card and not (model_dir / CARD_NAME).is_file():
        raise InvalidInputError(f"--update-card needs a protssl model folder; {model_dir} is not")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = AnalysisConfig(
        val_records=args.val_records,
        view_records=args.view_records,
        shots=args.shots,
        draws=args.draws,
        seed=args.seed,
    )
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    result = analyze(
        model,
        find_data(args.data),
        config,
        model_path=model_dir,
        progress=not args.no_progress,
    )
    output = args.output or Path(f"report-{model.name}")
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
