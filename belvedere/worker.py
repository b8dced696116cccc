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
from typing import Any

from belvedere.compat import mode
from belvedere.compat.faust import TableManager
from belvedere.compat.mode import EXIT_GRACE
from belvedere.console import StartupFilter, startup_line

__all__ = ["EXIT_GRACE", "TableManager", "Worker"]

#: How often a started worker looks whether it serves yet, to say so.
READY_POLL = 0.05


class Worker(mode.Worker):
    """Says one line once it serves; faust's INFO lines only when ``app.verbose``.

    faust's terminal spinner is off at every log level: on a terminal it fought with the
    log lines, and elsewhere (``--loglevel warning``, output to a file) all it left was
    cursor escape codes and ``OK ^``.
    """

    def __init__(self, app: Any, *services: Any, **kwargs: Any) -> None:
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
