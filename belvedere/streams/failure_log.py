"""Failure logs a person can read: the first failure of each kind in full, then counts.

A handler that fails on every event used to log one line per event, none of which said
where in the user's code it failed. Here the first failure of each (handler or topic,
kind) is logged with its traceback, starting at the user's frames; later ones are only
counted, and logged as one line per key at most every ``interval`` seconds, with the
count since the last line. The dead letters themselves (and ``/metrics``) hold every one.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = ["FailureLog", "user_traceback"]

#: Frames from here are the framework's, not the user's.
_PACKAGE = str(Path(__file__).resolve().parents[1])


def user_traceback(exc: BaseException) -> str:
    """``exc``'s traceback from its first frame outside Belvedere on (the user's handler),
    or whole if every frame is Belvedere's."""
    tb: TracebackType | None = exc.__traceback__
    start = tb
    while start is not None and start.tb_frame.f_code.co_filename.startswith(_PACKAGE):
        start = start.tb_next
    return "".join(traceback.format_exception(type(exc), exc, start or tb)).rstrip()


@dataclass
class _Seen:
    logged_at: float
    since: int = 0
    last: str = ""


class FailureLog:
    """Logs failures by key: the first in full, later ones counted (``interval`` s apart)."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._seen: dict[tuple[str, str], _Seen] = {}

    def failed(
        self,
        key: tuple[str, str],
        first: str,
        later: str,
        error: BaseException | None = None,
    ) -> None:
        """Log ``first`` (with ``error``'s traceback) the first time ``key`` fails; after
        that, count, and log ``later`` with the count at most every ``interval`` s."""
        now = self.clock()
        seen = self._seen.get(key)
        if seen is None:
            self._seen[key] = _Seen(now)
            if error is None:
                self.logger.error("%s", first)
            else:
                self.logger.error("%s\n%s", first, user_traceback(error))
            return
        seen.since += 1
        seen.last = later
        if now - seen.logged_at >= self.interval:
            self.logger.error(
                "%d more in the last %.0f s: %s", seen.since, now - seen.logged_at, later
            )
            seen.logged_at, seen.since = now, 0
