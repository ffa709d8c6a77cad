"""`python -m protssl.pretrain ARGS` (what `torchrun` launches): `protssl pretrain ARGS` in this process.

The CLI's pretraining entry joins the process group torchrun describes in the environment and
reads the rank's GPU from it; it is imported when run, not with this package (the CLI imports
the package).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the `pretrain` command with `argv` (default: this process's arguments)."""
    from protssl.cli.pretrain import main as pretrain_main

    return pretrain_main(argv)


if __name__ == "__main__":
    sys.exit(main())
