"""What a worker says on its terminal: one line once it serves, then only what matters.

faust, mode and aiokafka log some thirty INFO lines while a worker starts (every service
"Starting...", the recovery's tables of offsets, partitions opened), Belvedere one per view
partition restored, and none of them gives the URL the worker serves. By default those
are left out (at every rebalance too) and, once the worker is ready (as ``GET /ready``
says), one line gives the app, its URL, its views, its broker and its data directory.
Warnings and errors always show, and so do the app's own log lines and Belvedere's other
ones; ``belvedere worker --verbose`` (``BELVEDERE_VERBOSE``), or ``--loglevel debug``,
shows everything at the level given.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import aiokafka
import faust
import mode

from belvedere.agents.surface import AgentsApp
from belvedere.streams.embedded import log_path

__all__ = ["DETAIL", "StartupFilter", "startup_line"]

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


def startup_line(app: AgentsApp) -> str:
    """``shop ready at http://127.0.0.1:6066/ — views: ...; broker: ...; data: ...``"""
    url = str(app.conf.canonical_url).rstrip("/") + "/"
    views = sorted(name for name, view in app.views.items() if not view.internal)
    return (
        f"{app.conf.id} ready at {url} — views: {', '.join(views) or 'none'}; "
        f"broker: {_broker(app)}; data: {app.conf.datadir}"
    )


def _broker(app: AgentsApp) -> str:
    urls = list(app.conf.broker)
    if urls[0].scheme == "embedded":
        return f"embedded ({log_path(urls[0], app.conf.datadir)})"
    return ", ".join(str(url.with_user(None).with_query(None)) for url in urls)
