"""An open-loop HTTP read load for the fault tests: a steady rate, whatever the answers.

It runs beside the workers in a thread of the test process, with its own event loop, and
keeps every request's outcome. Unless told to keep connections alive, each request opens
its own connection: a connection the server closes while idle between two requests (a
worker stopping) would otherwise look like a request cut off without an answer, which is
what the tests look for.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp

__all__ = ["Outcome", "ReadLoad"]


@dataclass(frozen=True)
class Outcome:
    at: float  # time.monotonic() when sent
    url: str
    status: int  # 0: no answer (see ``failure``)
    latency: float
    retry_after: str | None = None
    #: Why there was no answer: "refused" (the connection was not accepted), "cut" (it was
    #: accepted, then closed or reset without an answer), or "timeout".
    failure: str | None = None
    detail: str | None = None


class ReadLoad(threading.Thread):
    """GET ``paths`` at ``rate`` per second, spread over the URLs ``targets()`` gives now."""

    def __init__(
        self,
        targets: Callable[[], Sequence[str]],
        paths: Sequence[str],
        rate: float,
        *,
        timeout: float = 10.0,
        concurrency: int = 64,
        seed: int = 0,
        keep_alive: bool = False,
    ) -> None:
        super().__init__(daemon=True, name="read-load")
        self.targets = targets
        self.paths = list(paths)
        self.rate = rate
        self.timeout = timeout
        self.concurrency = concurrency
        self.rng = random.Random(seed)
        self.keep_alive = keep_alive
        self.outcomes: list[Outcome] = []
        self._stopping = threading.Event()

    def run(self) -> None:
        asyncio.run(self._run())

    def stop(self, timeout: float = 60) -> list[Outcome]:
        self._stopping.set()
        self.join(timeout)
        assert not self.is_alive(), "the read load did not stop"
        return self.outcomes

    def counts(self, since: float = 0.0) -> Counter[int | str]:
        """Answers by status, and unanswered requests by why."""
        return Counter(o.failure or o.status for o in list(self.outcomes) if o.at >= since)

    async def _run(self) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        connector = aiohttp.TCPConnector(force_close=not self.keep_alive, limit=self.concurrency)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        pending: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            start, sent = time.monotonic(), 0
            while not self._stopping.is_set():
                due = start + sent / self.rate
                now = time.monotonic()
                if due > now:
                    await asyncio.sleep(due - now)
                targets = self.targets()
                if targets:
                    url = self.rng.choice(targets) + self.rng.choice(self.paths)
                    await slots.acquire()
                    task = asyncio.ensure_future(self._one(session, url, slots))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                sent += 1
            if pending:
                await asyncio.wait(pending)

    async def _one(
        self, session: aiohttp.ClientSession, url: str, slots: asyncio.Semaphore
    ) -> None:
        sent = time.monotonic()
        try:
            async with session.get(url) as response:
                await response.read()
                outcome = Outcome(
                    sent, url, response.status, time.monotonic() - sent,
                    response.headers.get("Retry-After"),
                )  # fmt: skip
        except aiohttp.ClientConnectorError:
            outcome = Outcome(sent, url, 0, time.monotonic() - sent, failure="refused")
        except (aiohttp.ClientError, ConnectionError) as exc:
            outcome = Outcome(
                sent, url, 0, time.monotonic() - sent, failure="cut", detail=repr(exc)
            )
        except TimeoutError:
            outcome = Outcome(sent, url, 0, time.monotonic() - sent, failure="timeout")
        finally:
            slots.release()
        self.outcomes.append(outcome)
