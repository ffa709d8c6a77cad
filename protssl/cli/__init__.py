"""The `protssl` command: a thin face that parses arguments, calls the library, maps errors.

Exit codes: 0 success, 2 user error (bad input, missing model, untrusted file; one line on
stderr), 130 interrupted (what was computed is kept), 1 anything unexpected (with traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from protssl import __version__
from protssl.cli import db as cli_store
from protssl.cli import fewshot as cli_fewshot
from protssl.cli import pretrain as cli_pretrain
from service import cli as cli_serve

if TYPE_CHECKING:
    from protssl.checkpoint import LoadedModel

__all__ = ["build_parser", "main"]

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=os.environ.get("PROTSSL_MODEL"),
        help="model folder, fair-esm .pt, or preset name (default: $PROTSSL_MODEL or the shipped model)",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16"),
        help="auto: bf16 where the CPU has AVX512-BF16/AMX or on CUDA, else float32",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow unpickling a fair-esm .pt (pickles can run code)",
    )
    parser.add_argument(
        "--allow-sha256",
        action="append",
        default=[],
        metavar="HEX",
        help="allow a fair-esm .pt with this sha256 (repeatable)",
    )


def _add_fasta_policy_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--on-invalid",
        default="fail",
        choices=("fail", "skip", "replace"),
        help="records with gaps, internal stops, digits...: fail (default), skip, or replace with X",
    )
    parser.add_argument("--on-empty", default="fail", choices=("fail", "skip"))
    parser.add_argument("--on-duplicate", default="fail", choices=("fail", "skip"))


def _add_embed_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "embed",
        help="embed a FASTA file into HDF5 (.h5) or .npz",
        description="Embed every record of a FASTA file (.gz or - for stdin) into OUTPUT.",
    )
    parser.add_argument("input", help="FASTA file, .gz, or - for stdin")
    parser.add_argument("-o", "--output", required=True, help="OUT.h5 (or .hdf5, .npz)")
    _add_model_args(parser)
    parser.add_argument(
        "--pooling", default="mean", choices=("mean", "bos", "per-residue"), help="default: mean"
    )
    parser.add_argument(
        "--layer", type=int, default=-1, help="layer to read (negative counts back; default -1)"
    )
    parser.add_argument(
        "--max-tokens", type=int, default=4096, help="token budget per batch (default 4096)"
    )
    parser.add_argument(
        "--window-policy",
        default="window",
        choices=("window", "refuse"),
        help="sequences longer than the model window: window (overlap + average) or refuse",
    )
    parser.add_argument("--overlap", type=int, default=256, help="window overlap in residues")
    _add_fasta_policy_args(parser)
    parser.add_argument(
        "--resume", action="store_true", help="keep OUTPUT's vectors and skip their ids"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    cli_store.add_store_args(parser)
    parser.set_defaults(func=_cmd_embed)


def _add_import_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-esm",
        help="convert a fair-esm ESM-2 .pt into a protssl model folder (safetensors + card)",
    )
    parser.add_argument("checkpoint", help="fair-esm .pt, e.g. esm2_t6_8M_UR50D.pt")
    parser.add_argument("output", help="folder to write")
    parser.add_argument("--trust-pickle", action="store_true")
    parser.add_argument("--allow-sha256", action="append", default=[], metavar="HEX")
    parser.set_defaults(func=_cmd_import)


def _add_info_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info",
        help="versions, CPU instruction sets, dtypes and fast paths, default model and store",
        description="What a bug report needs when figures differ between machines.",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object instead of text")
    parser.add_argument(
        "--model",
        default=os.environ.get("PROTSSL_MODEL"),
        help="model folder to describe (default: $PROTSSL_MODEL or the shipped model)",
    )
    cli_store.add_db_arg(parser)
    parser.set_defaults(func=_cmd_info)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="protssl", description="Protein embeddings from a masked-residue transformer."
    )
    parser.add_argument("--version", action="version", version=f"protssl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_embed_parser(subparsers)
    _add_import_parser(subparsers)
    _add_info_parser(subparsers)
    cli_store.add_commands(subparsers)
    cli_pretrain.add_commands(subparsers)
    cli_fewshot.add_commands(subparsers)
    cli_serve.add_commands(subparsers)
    return parser


def _load(args: argparse.Namespace) -> LoadedModel:
    from protssl.checkpoint import load_model

    return load_model(
        args.model,
        device=args.device,
        dtype=args.dtype,
        trust_pickle=args.trust_pickle,
        allowed_sha256=args.allow_sha256,
    )


def _cmd_embed(args: argparse.Namespace) -> int:
    from protssl.batching import WindowPolicy
    from protssl.embed import EmbedConfig
    from protssl.errors import InvalidInputError, ProtsslError
    from protssl.fasta import FastaPolicy
    from protssl.embed_file import JobSummary, embed_fasta_file

    config = EmbedConfig(
        pooling=args.pooling,
        layer=args.layer,
        max_tokens=args.max_tokens,
        window=WindowPolicy(mode=args.window_policy, overlap=args.overlap),
    )
    policy = FastaPolicy(
        on_invalid=args.on_invalid, on_empty=args.on_empty, on_duplicate=args.on_duplicate
    )
    if args.input != "-" and not Path(args.input).is_file():
        raise InvalidInputError(f"{args.input}: no such file")
    model = _load(args)
    summary = JobSummary()
    store = cli_store.open_store(args)
    try:
        embed_fasta_file(
            args.input,
            args.output,
            model,
            config=config,
            policy=policy,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            summary=summary,
            cache=store.embeddings if store is not None else None,
        )
    except ProtsslError as exc:
        summary.errors = max(summary.errors, 1)
        summary.error = summary.error or str(exc)
        raise
    finally:
        if store is not None:
            store.close()
        print(json.dumps(summary.as_dict()), flush=True)
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from protssl.checkpoint import import_fair_esm, save_model

    encoder, card = import_fair_esm(
        args.checkpoint, trust_pickle=args.trust_pickle, allowed_sha256=args.allow_sha256
    )
    saved = save_model(encoder, args.output, name=card.name, provenance=card.provenance)
    print(json.dumps({"model": args.output, "name": saved.name, "sha256": saved.sha256}))
    return 0


def _model_summary(spec: str | None) -> dict[str, object]:
    """The model a command would load by default, from its card alone (no weights read)."""
    from protssl.checkpoint import CARD_NAME, DEFAULT_MODEL_DIR, read_card
    from protssl.errors import ProtsslError

    directory = Path(spec) if spec else DEFAULT_MODEL_DIR
    summary: dict[str, object] = {"path": str(directory)}
    try:
        card = read_card(directory.parent if directory.name == CARD_NAME else directory)
    except (OSError, ProtsslError) as exc:
        summary["error"] = str(exc)
        return summary
    summary.update(name=card.name, sha256=card.sha256, layers=card.architecture.num_layers)
    return summary


def _cmd_info(args: argparse.Namespace) -> int:
    from protssl.hardware import describe

    info = describe()
    info["default_model"] = _model_summary(args.model)
    info["default_store"] = cli_store.store_config(args).redacted_url()
    if args.json:
        print(json.dumps(info))
        return 0
    paths = info["fast_paths"]
    assert isinstance(paths, dict)
    model = info["default_model"]
    assert isinstance(model, dict)
    lines = [
        f"protssl {info['protssl']}, torch {info['torch']}, Python {info['python']}",
        f"cpu: {info['cpu']} ({info['cores']} cores, torch threads {info['threads']})",
        f"isa: {info['isa']}",
        f"kernels: torch {info['torch_capability']}, oneDNN bf16 {_yes(info['onednn_bf16'])}, "
        f"native bf16 {_yes(info['native_bf16'])}",
        f"auto dtype: {info['auto_dtype']} on cpu"
        + (f", bfloat16 on {info['cuda']}" if info["cuda"] else ""),
        *(
            f"fast paths ({dtype}): "
            + (", ".join(name for name, on in flags.items() if on) or "none")
            for dtype, flags in paths.items()
        ),
        "default model: "
        + (
            f"{model['name']} (sha256 {str(model['sha256'])[:12]}) at {model['path']}"
            if "name" in model
            else f"{model['path']}: {model['error']}"
        ),
        f"default store: {info['default_store']}",
    ]
    print("\n".join(lines))
    return 0


def _yes(flag: object) -> str:
    return "yes" if flag else "no"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `protssl` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from protssl.errors import ProtsslError

    try:
        return int(args.func(args))
    except ProtsslError as exc:
        print(f"protssl {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"protssl {args.command}: interrupted; work done so far is kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
