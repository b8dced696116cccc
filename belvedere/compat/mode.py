"""mode internals Belvedere's worker process relies on (faust's ``Worker`` is mode's):
its exit wait, its SIGINT message, its output, and whether a signal stopped it.

Each names the mode limit it works around; ``tests/test_compat.py`` checks the private
names each one relies on.
"""

from __future__ import annotations

import asyncio
import signal

import faust

__all__ = ["EXIT_GRACE", "Worker"]

#: How long a stopping worker waits for its cancelled tasks to end (mode waited this long
#: every time).
EXIT_GRACE = 1.0


class Worker(faust.Worker):
    """faust's worker process, whose exit waits for its cancelled tasks only as long as
    they take, and whose Ctrl-C says nothing."""

    def announce(self, line: str) -> None:
        """Write a line to the worker's output at once (mode's ``say`` does not flush)."""
        self._say(line, flush=True)

    @property
    def stopped_by_signal(self) -> bool:
        """Whether a signal (Ctrl-C, SIGTERM) has asked the worker to stop."""
        return self._shutdown_immediately

    def _on_sigint(self) -> None:
        # Works around: mode's handler prints "-INT- -INT- -INT-" first (faust's flags
        # the stop as a signal's, then calls mode's).
        self._flag_as_shutdown_by_signal()
        self._schedule_shutdown(signal.SIGINT)

    async def _sentinel_task(self) -> None:
        # Works around: mode's worker sleeps a fixed second on the way out, after the app
        # has stopped, so that the tasks it has just cancelled can end.
        here = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not here]
        if pending:
            await asyncio.wait(pending, timeout=EXIT_GRACE)
        for _ in range(3):  # the callbacks their ends scheduled (transports closing)
            await asyncio.sleep(0)
