"""`python -m service`: the same server and flags as `protssl serve`."""

from __future__ import annotations

import argparse
import sys

from protssl.entrypoint import configure_logging, run_main
from service.cli import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging(args.log_level, timestamps=True)
    return run_main(lambda: run(args), prog=parser.prog)


if __name__ == "__main__":
    sys.exit(main())
