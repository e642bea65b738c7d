"""``python -m backfill.emulator``: the same as ``backfill emulator``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
