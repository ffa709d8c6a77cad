"""`protssl import-esm`: a fair-esm ESM-2 .pt (a pickle) into a protssl model folder (safetensors + card)."""

from __future__ import annotations

import argparse
import json

from protssl.cli.args import add_trust_args
from protssl.cli.commands import Command

__all__ = ["COMMANDS"]


def _build(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="fair-esm .pt, e.g. esm2_t6_8M_UR50D.pt")
    parser.add_argument("output", help="folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already there")
    add_trust_args(parser)
    parser.set_defaults(func=_import)


COMMANDS = (
    Command(
        "import-esm",
        _build,
        help="convert a fair-esm ESM-2 .pt into a protssl model folder (safetensors + card)",
    ),
)


def _import(args: argparse.Namespace) -> int:
    from protssl.checkpoint import import_fair_esm, refuse_to_replace_a_model, save_model

    if not args.overwrite:
        refuse_to_replace_a_model(args.output)
    encoder, card = import_fair_esm(
        args.checkpoint, trust_pickle=args.trust_pickle, allowed_sha256=args.allow_sha256
    )
    saved = save_model(encoder, args.output, name=card.name, provenance=card.provenance)
    print(json.dumps({"model": args.output, "name": saved.name, "sha256": saved.sha256}))
    return 0
