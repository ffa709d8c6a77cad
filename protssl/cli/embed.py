"""`protssl embed`: every record of a FASTA file into an HDF5 or .npz file, through the store's cache.

Prints the job's summary as the last line of stdout (JSON), also when a FASTA error stops it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from protssl.cli.args import (
    add_fasta_policy_args,
    add_model_args,
    add_store_args,
    fasta_policy,
    load_model,
    open_store,
)
from protssl.cli.commands import Command
from protssl.errors import InvalidInputError, ProtsslError

__all__ = ["COMMANDS"]


def _build(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="FASTA file, .gz, or - for stdin")
    parser.add_argument("-o", "--output", required=True, help="OUT.h5 (or .hdf5, .npz)")
    add_model_args(parser)
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
    add_fasta_policy_args(parser)
    parser.add_argument(
        "--resume", action="store_true", help="keep OUTPUT's vectors and skip their ids"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_store_args(parser)
    parser.set_defaults(func=_embed)


COMMANDS = (
    Command(
        "embed",
        _build,
        help="embed a FASTA file into HDF5 (.h5) or .npz",
        description="Embed every record of a FASTA file (.gz or - for stdin) into OUTPUT.",
    ),
)


def _embed(args: argparse.Namespace) -> int:
    from protssl.batching import WindowPolicy
    from protssl.embed_file import JobSummary, embed_fasta_file
    from protssl.embedding import EmbedConfig

    config = EmbedConfig(
        pooling=args.pooling,
        layer=args.layer,
        max_tokens=args.max_tokens,
        window=WindowPolicy(mode=args.window_policy, overlap=args.overlap),
    )
    policy = fasta_policy(args)
    if args.input != "-" and not Path(args.input).is_file():
        raise InvalidInputError(f"{args.input}: no such file")
    model = load_model(args)
    summary = JobSummary()
    store = None if args.no_cache else open_store(args)
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
