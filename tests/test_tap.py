"""The batch tap between faust's consumer and the projection engine, without a broker."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from belvedere.streams.tap import BatchTap

TAPPED = TP("orders", 0)


class Fetcher:
    """What BatchTap sits on: a consumer whose fetch returns one batch."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:
        return {TAPPED: ["a record"], TP("other", 0): ["left to faust"]}


class Consumer(BatchTap, Fetcher):
    pass


class SlowTap:
    def __init__(self) -> None:
        self.started, self.release = asyncio.Event(), asyncio.Event()
        self.finished: list[Sequence[Any]] = []

    def claims(self, tp: TP) -> bool:
        return tp == TAPPED

    async def on_batch(self, batches: Mapping[TP, Sequence[Any]]) -> None:
        self.started.set()
        await self.release.wait()  # a changelog or command-event send in flight
        self.finished.append(batches[TAPPED])


def test_a_fetch_cancelled_by_a_stopping_worker_lets_the_tap_finish_its_batch() -> None:
    async def scenario() -> list[Sequence[Any]]:
        tap = SlowTap()
        consumer = Consumer(SimpleNamespace(batch_tap=tap))
        fetch = asyncio.ensure_future(consumer._getmany(None, 1.0))
        await asyncio.wait_for(tap.started.wait(), 5)
        fetch.cancel()  # what faust does to its fetcher when the worker stops
        await asyncio.gather(fetch, return_exceptions=True)
        tap.release.set()
        for _ in range(100):  # the batch goes on by itself: a few loop passes at most
            if tap.finished:
                break
            await asyncio.sleep(0)
        return tap.finished

    assert asyncio.run(scenario()) == [["a record"]]
