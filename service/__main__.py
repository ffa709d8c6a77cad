"""`python -m service`: the same server and flags as `protssl serve`."""

from __future__ import annotations

import argparse
import sys

from service.cli import add_serve_arguments, run_serve
from protssl.errors import ProtsslError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_serve(args)
    except ProtsslError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
