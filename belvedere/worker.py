"""faust's worker process and table manager, without their fixed one-second waits.

faust's ``TableManager`` sleeps a second before it registers the tables, on every start;
the consumer's subscription already waits for that registration (the conductor awaits
``wait_until_tables_registered``), so the sleep only delays the worker's readiness.
mode's ``Worker`` sleeps a second on the way out, after the app has stopped (offsets
committed, stores closed), so that the tasks it has just cancelled can end; here the
worker waits for those tasks to end, at most that second, and exits once they have.
"""

from __future__ import annotations

import asyncio

import faust
from faust.tables import TableManager as FaustTableManager

__all__ = ["EXIT_GRACE", "TableManager", "Worker"]

#: How long a stopping worker waits for its cancelled tasks to end (mode waited this long
#: every time).
EXIT_GRACE = 1.0


class TableManager(FaustTableManager):
    async def on_start(self) -> None:
        # faust's, less its ``await self.sleep(1.0)``: tables are declared at import, and
        # the conductor subscribes only once they are registered here
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


class Worker(faust.Worker):
    async def _sentinel_task(self) -> None:
        here = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not here]
        if pending:
            await asyncio.wait(pending, timeout=EXIT_GRACE)
        for _ in range(3):  # the callbacks their ends scheduled (transports closing)
            await asyncio.sleep(0)
