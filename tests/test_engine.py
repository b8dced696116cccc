"""The projection engine's fold, in process and without a broker."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
from faust.types import TP

import belvedere
from belvedere.agents.projection import PartitionState, Projection
from belvedere.agents.replay_processes import can_replay_elsewhere
from belvedere.streams.context import replaying
from belvedere.tables.store import PartitionStore, StoreBudget
from belvedere.tables.view import NotLocal, PartitionStatus


class Paid(belvedere.Event, key="account"):
    account: str
    amount: int


def record(offset: int, amount: int) -> SimpleNamespace:
    """A record of ``payments[0]`` holding a Paid envelope."""
    data = {"account": "acct-1", "amount": amount}
    value = orjson.dumps({"eventType": "Paid", "eventVersion": 1, "data": data})
    return SimpleNamespace(
        topic="payments", partition=0, offset=offset, timestamp=0, headers=[], value=value
    )


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

    projection = app.engine.projections["totals"]
    tp = TP("payments", 0)
    store = PartitionStore(tmp_path / "0.db", StoreBudget(8 << 20, 8 << 20))
    part = PartitionState(projection, tp, store, 1, 1, PartitionStatus())

    async def main() -> None:
        fold = asyncio.ensure_future(app.engine.fold(part, [record(0, 5), record(1, 50)]))
        await asyncio.wait_for(entered.wait(), 10)
        fold.cancel()
        await asyncio.gather(fold, return_exceptions=True)

    try:
        asyncio.run(main())
        assert part.next_offset == 1  # the second event is still to come...
        assert dict(part.txn.items()) == {"acct-1": 5}  # ...and none of its writes are kept
    finally:
        store.close()


def test_a_replay_helper_stops_at_a_handler_reading_a_view_it_does_not_serve(
    tmp_path: Path,
) -> None:
    """In a replay helper no view is served, so a handler that reads another view would
    fail on every event, where the worker may serve that view's partition. The helper's
    fold stops there instead (the worker replays the rest); the worker's own fold
    dead-letters the event, and goes on (under a replay, dead letters are not written)."""
    app = belvedere.App("engine-not-local", data_dir=tmp_path / "data")
    payments = app.event_topic("payments", Paid, partitions=1)
    totals = app.view("totals", value=int, key=str)
    limits = app.view("limits", value=int, key=str)

    @app.projection(payments, view=totals, reads=[limits])
    def paid(view, event: Paid) -> None:
        view[event.account] = view.get(event.account, 0) + event.amount
        if event.amount == 50:
            view[event.account] += limits.get(event.account, 0)

    projection = app.engine.projections["totals"]
    limits.partitions = 1
    tp = TP("payments", 0)
    store = PartitionStore(tmp_path / "0.db", StoreBudget(8 << 20, 8 << 20))
    part = PartitionState(projection, tp, store, 1, 1, PartitionStatus())
    part.mode = "replaying"

    records = [record(offset, amount) for offset, amount in enumerate([5, 50, 7])]
    engine = app.engine
    try:
        engine.fatal_handler_errors = (NotLocal,)
        with replaying(), pytest.raises(NotLocal):
            asyncio.run(engine.fold(part, records))
        assert part.next_offset == 1 and dict(part.txn.items()) == {"acct-1": 5}

        engine.fatal_handler_errors = ()
        with replaying():
            asyncio.run(engine.fold(part, records))
        assert part.next_offset == 3 and dict(part.txn.items()) == {"acct-1": 12}
    finally:
        store.close()


def test_only_projections_whose_checkpoints_touch_nothing_else_replay_in_helpers() -> None:
    app = belvedere.App("engine-helpers")
    payments = app.event_topic("payments", Paid, partitions=1)

    @app.projection(payments, view=app.view("totals", value=int, key=str))
    def paid(view, event: Paid) -> None:
        view[event.account] = event.amount

    assert can_replay_elsewhere(app.engine.projections["totals"])

    class Remembers(Projection):
        def after_checkpoint(self, part: object) -> None:
            pass  # would keep state in the helper's memory, which the worker never sees

    assert not can_replay_elsewhere(Remembers(payments, app.views["totals"]))
