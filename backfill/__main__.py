"""``python -m backfill``: the same as the ``backfill`` command."""

from .cli import main

raise SystemExit(main())
