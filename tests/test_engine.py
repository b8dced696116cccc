"""The projection engine's fold, in process and without a broker."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import orjson
from faust.types import TP

import belvedere
from belvedere.agents.engine import _Partition
from belvedere.tables.store import PartitionStore, StoreBudget
from belvedere.tables.view import PartitionStatus


class Paid(belvedere.Event, key="account"):
    account: str
    amount: int


def test_a_fold_cancelled_inside_an_async_handler_keeps_none_of_that_events_writes(
    tmp_path: Path,
) -> None:
    """A worker stopping cancels the fold wherever it awaits; the checkpoint written on the
    way out must not hold an event that its offsets say is still to come (the partition's
    next owner would apply it again: a scaling test's account once had one op too many)."""
    app = belvedere.App("engine-cancel", data_dir=tmp_path / "data")
    payments = app.event_topic("payments", Paid, partitions=1)
    totals = app.view("totals", value=int, key=str)
    entered, blocked = asyncio.Event(), asyncio.Event()

    @app.projection(payments, view=totals)
    async def paid(view, event: Paid) -> None:
        view[event.account] = view.get(event.account, 0) + event.amount
        if event.amount == 50:
            entered.set()
            await blocked.wait()  # a side effect that never finishes: the worker stops

    projection = app.projections.projections["totals"]
    tp = TP("payments", 0)
    store = PartitionStore(tmp_path / "0.db", StoreBudget(8 << 20, 8 << 20))
    part = _Partition(projection, tp, store, 1, 1, PartitionStatus())

    def record(offset: int, amount: int) -> SimpleNamespace:
        data = {"account": "acct-1", "amount": amount}
        value = orjson.dumps({"eventType": "Paid", "eventVersion": 1, "data": data})
        return SimpleNamespace(
            topic=tp.topic, partition=0, offset=offset, timestamp=0, headers=[], value=value
        )

    async def main() -> None:
        fold = asyncio.ensure_future(app.projections.fold(part, [record(0, 5), record(1, 50)]))
        await asyncio.wait_for(entered.wait(), 10)
        fold.cancel()
        await asyncio.gather(fold, return_exceptions=True)

    try:
        asyncio.run(main())
        assert part.next_offset == 1  # the second event is still to come...
        assert dict(part.txn.items()) == {"acct-1": 5}  # ...and none of its writes are kept
    finally:
        store.close()
