"""`protssl serve`: run the gRPC server. Flags override PROTSSL_* variables, which override defaults.

The flags and the handler are the server's own (`service.cli`, also behind `python -m service`);
they are imported when `serve` is chosen, and grpc only when it runs, so the CLI depends on the
service in one direction and lazily.
"""

from __future__ import annotations

import argparse

from protssl.cli.commands import Command

__all__ = ["COMMANDS"]


def _build(parser: argparse.ArgumentParser) -> None:
    from service.cli import add_arguments, run

    add_arguments(parser)
    parser.set_defaults(func=run, log_timestamps=True)


COMMANDS = (
    Command(
        "serve",
        _build,
        help="run the gRPC server (embeddings and few-shot classifiers)",
        description=__doc__.splitlines()[0] if __doc__ else None,
    ),
)
