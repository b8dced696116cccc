"""faust's worker process and table manager, without their fixed one-second waits, and
with one start-up line instead of faust's banner (:mod:`belvedere.console`).

faust's ``TableManager`` sleeps a second before it registers the tables, on every start;
the consumer's subscription already waits for that registration (the conductor awaits
``wait_until_tables_registered``), so the sleep only delays the worker's readiness.
mode's ``Worker`` sleeps a second on the way out, after the app has stopped (offsets
committed, stores closed), so that the tasks it has just cancelled can end; here the
worker waits for those tasks to end, at most that second, and exits once they have.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any, Protocol, runtime_checkable

import faust
from faust.tables import TableManager as FaustTableManager

from belvedere.agents.surface import AgentsApp
from belvedere.console import StartupFilter, startup_line

__all__ = ["EXIT_GRACE", "TableManager", "Worker", "WorkerApp"]

#: How long a stopping worker waits for its cancelled tasks to end (mode waited this long
#: every time).
EXIT_GRACE = 1.0
#: How often a started worker looks whether it serves yet, to say so.
READY_POLL = 0.05


class TableManager(FaustTableManager):
    async def on_start(self) -> None:
        # faust's, less its ``await self.sleep(1.0)``: tables are declared at import, and
        # the conductor subscribes only once they are registered here
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


@runtime_checkable
class WorkerApp(AgentsApp, Protocol):
    """What the worker reads of the app besides what its start-up line names."""

    #: Log faust's and Belvedere's start-up lines too.
    @property
    def verbose(self) -> bool: ...

    @property
    def ready(self) -> bool: ...


class Worker(faust.Worker):
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
        if not self._shutdown_immediately:
            self.add_future(self._announce_when_serving())

    async def _announce_when_serving(self) -> None:
        # faust calls itself started before the views of its partitions are restored
        while not self.app.ready:
            await asyncio.sleep(READY_POLL)
        self._say(startup_line(self.app), flush=True)

    def _on_sigint(self) -> None:
        # mode's prints "-INT- -INT- -INT-" first
        self._flag_as_shutdown_by_signal()
        self._schedule_shutdown(signal.SIGINT)

    async def _sentinel_task(self) -> None:
        here = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not here]
        if pending:
            await asyncio.wait(pending, timeout=EXIT_GRACE)
        for _ in range(3):  # the callbacks their ends scheduled (transports closing)
            await asyncio.sleep(0)
