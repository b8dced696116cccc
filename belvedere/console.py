"""What a worker says on its terminal: one line once it serves, then only what matters.

faust, mode and aiokafka log some thirty INFO lines while a worker starts (every service
"Starting...", the recovery's tables of offsets, partitions opened), Belvedere one per view
partition restored, and none of them gives the URL the worker serves. By default those
are left out (at every rebalance too) and, once the worker is ready (as ``GET /ready``
says), the worker (:mod:`belvedere.worker`) writes one line giving the app, its URL, its
views, its broker and its data directory. Warnings and errors always show, and so do the app's own log lines and Belvedere's other
ones; ``belvedere worker --verbose`` (``BELVEDERE_VERBOSE``), or ``--loglevel debug``,
shows everything at the level given.

This module is what is left out, and how Belvedere's own routine lines say they may be
(:data:`DETAIL`); it imports nothing of Belvedere, so every layer may mark its lines.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import aiokafka
import faust
import mode

__all__ = ["DETAIL", "LIBRARIES", "StartupFilter"]

#: Log records from code in these packages are library chatter below WARNING.
LIBRARIES = tuple(
    str(Path(package.__file__).parent) + os.sep for package in (faust, mode, aiokafka)
)

#: ``extra=`` of Belvedere's own routine per-partition lines, left out like faust's.
DETAIL = {"detail": True}


class StartupFilter(logging.Filter):
    """Drops the libraries' INFO and DEBUG records, and Belvedere's routine ones."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return not (record.pathname.startswith(LIBRARIES) or getattr(record, "detail", False))
