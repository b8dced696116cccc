"""faust's worker process and table manager, without their fixed one-second waits, and
with one start-up line instead of faust's banner (:mod:`belvedere.console`).

faust's ``TableManager`` sleeps a second before it registers the tables, on every start;
the consumer's subscription already waits for that registration (the conductor awaits
``wait_until_tables_registered``), so the sleep only delays the worker's readiness.
mode's ``Worker`` sleeps a second on the way out, after the app has stopped (offsets
committed, stores closed), so that the tasks it has just cancelled can end; here the
worker waits for those tasks to end, at most that second, and exits once they have. Both
are workarounds of faust's and mode's internals, in :mod:`belvedere.compat`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol, runtime_checkable

from belvedere.agents.surface import AgentsApp
from belvedere.compat import mode
from belvedere.compat.faust import TableManager
from belvedere.compat.mode import EXIT_GRACE
from belvedere.console import StartupFilter
from belvedere.streams.embedded import log_path

__all__ = ["EXIT_GRACE", "TableManager", "Worker", "WorkerApp"]

#: How often a started worker looks whether it serves yet, to say so.
READY_POLL = 0.05


@runtime_checkable
class WorkerApp(AgentsApp, Protocol):
    """What the worker reads of the app besides what its start-up line names."""

    #: Log faust's and Belvedere's start-up lines too.
    @property
    def verbose(self) -> bool: ...

    @property
    def ready(self) -> bool: ...


class Worker(mode.Worker):
    """Says one line once it serves; faust's INFO lines only when ``app.verbose``.

    faust's terminal spinner is off at every log level: on a terminal it fought with the
    log lines, and elsewhere (``--loglevel warning``, output to a file) all it left was
    cursor escape codes and ``OK ^``.
    """

    def __init__(self, app: WorkerApp, *services: Any, **kwargs: Any) -> None:
        super().__init__(app, *services, **kwargs)
        self.spinner = None

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        if not self.app.verbose and level > logging.DEBUG:
            for handler in logger.handlers:
                handler.addFilter(StartupFilter())

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        if not self.stopped_by_signal:
            self.add_future(self._announce_when_serving())

    async def _announce_when_serving(self) -> None:
        # faust calls itself started before the views of its partitions are restored
        while not self.app.ready:
            await asyncio.sleep(READY_POLL)
        self.announce(startup_line(self.app))


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
