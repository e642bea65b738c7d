"""The local Flow Service: runs, flows and IMS tokens, with faults on demand.

It stands alone: nothing here imports the rest of ``backfill``, and the engine never imports
this package. ``serve(config)`` runs it in-process; ``backfill emulator`` runs it as a server.
"""

from .app import Emulator, serve
from .config import EmulatorConfig, FlowKind

__all__ = ["Emulator", "EmulatorConfig", "FlowKind", "serve"]
