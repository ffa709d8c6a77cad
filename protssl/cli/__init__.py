"""The `protssl` command: a thin face that parses arguments, calls the library, maps errors.

One module per command group (`embed`, `import_esm`, `info`, `db`, `pretrain`, `fewshot`,
`analyze`, `serve`, `token`), each listing its commands in COMMANDS (`commands.Command`); arguments
several commands share are in `args`. A command's parser is built, and the library modules it
needs imported, only when that command is chosen: `protssl --help` loads neither torch nor
SQLAlchemy.

Exit codes: 0 success, 2 user error (bad input, missing model, untrusted file; one line on
stderr), 130 interrupted (what was computed is kept), 1 anything unexpected (with traceback).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from protssl import __version__
from protssl.cli import analyze, db, embed, fewshot, import_esm, info, pretrain, serve, token
from protssl.cli.args import as_options
from protssl.cli.commands import LazySubcommands, add_commands
from protssl.entrypoint import configure_logging, run_main

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; each subcommand's arguments are added when it is parsed."""
    parser = argparse.ArgumentParser(
        prog="protssl", description="Protein embeddings from a masked-residue transformer."
    )
    parser.add_argument("--version", action="version", version=f"protssl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.set_defaults(log_level=None, log_timestamps=False)
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", action=LazySubcommands
    )
    for group in (embed, import_esm, info, db, pretrain, fewshot, analyze, serve, token):
        add_commands(subparsers, group.COMMANDS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `protssl` console script (and `python -m protssl`)."""
    args = build_parser().parse_args(argv)
    configure_logging(
        args.log_level or ("DEBUG" if args.verbose else "WARNING"),
        timestamps=args.log_timestamps,
        wording=as_options,
    )
    return run_main(lambda: args.func(args), prog=f"protssl {args.command}", wording=as_options)
