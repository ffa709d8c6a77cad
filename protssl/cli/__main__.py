"""`python -m protssl.cli`: the `protssl` command."""

import sys

from protssl.cli import main

sys.exit(main())
