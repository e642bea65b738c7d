"""The closed sets of words a user chooses among, and the thresholds the help text names.

They live here, apart from the modules that act on them (the planner, the engine, the run
command), so that ``backfill --help`` can show them without importing any of those: the help
text must cost no more than argparse itself (the start-up target in the README's
"Performance").
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["CONFIRM_ABOVE", "ExistingRuns", "OnFailure", "Order", "RetryMode"]

# More runs than this are confirmed on a terminal first (unless --yes).
CONFIRM_ABOVE = 1000


class Order(StrEnum):
    """Which windows go first."""

    OLDEST_FIRST = "oldest-first"
    NEWEST_FIRST = "newest-first"


class RetryMode(StrEnum):
    """How a failed run's window is run again."""

    RETRIGGER = "re-trigger"
    NEW_RUN = "new-run"


class ExistingRuns(StrEnum):
    """What to do with runs the service already holds for windows the checkpoint never saw."""

    ADOPT = "adopt"
    IGNORE = "ignore"


class OnFailure(StrEnum):
    """What a window failing for good does to the rest of the backfill."""

    CONTINUE = "continue"
    STOP = "stop"
