"""The test kit: ``event()`` gives a test's event the envelope a topic would, and
``TestDriver`` runs each kind of agent of an app through the engine, in process, with no
broker and no worker (nothing here takes a ``broker`` fixture or starts a worker)."""

from __future__ import annotations

import datetime as dt
import os
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest

import belvedere
from belvedere.agents.engine import StrictStop
from belvedere.agents.trace import causal_order
from belvedere.streams.embedded.log import Log
from belvedere.streams.envelope import EnvelopeCodec
from belvedere.testing import TestDriver, event

os.environ.setdefault("DESK_NAME", "fixture-only")
from tests.apps import checkout as checkout_app
from tests.apps import order_desk as desk
from tests.apps.order_domain import (
    CreateOrder,
    DenyStock,
    Order,
    OrderCreated,
    ReserveStock,
)


class Placed(belvedere.Event, key="order_id"):
    order_id: str
    sku: str
    qty: int


class Confirmed(belvedere.Event, key="order_id"):
    order_id: str


NOON = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


def shop(name: str, **options: Any) -> tuple[belvedere.App, Any, Any]:
    """An app with an orders topic (3 partitions) and a confirmations topic."""
    app = belvedere.App(f"testkit-{name}", **options)
    orders = app.event_topic(f"testkit-{name}-orders", Placed, partitions=3)
    confirmations = app.event_topic(f"testkit-{name}-confirmations", Confirmed, partitions=2)
    return app, orders, confirmations


# -- event() ------------------------------------------------------------------------------------


def test_event_sets_the_envelope_and_it_survives_the_wire() -> None:
    placed = Placed(order_id="o-1", sku="s", qty=1)
    made = event(placed, timestamp=NOON, correlation_id="c-1", causation_id="e-0", event_id="e-1")
    assert made == placed and placed.meta is None  # a copy; the fields are the event's
    meta = made.meta
    assert (meta.event_id, meta.timestamp, meta.correlation_id, meta.causation_id) == (
        "e-1",
        NOON,
        "c-1",
        "e-0",
    )
    assert (meta.event_type, meta.event_version) == ("Placed", 1)
    codec = EnvelopeCodec([Placed])
    back = codec.decode(codec.encode(made, meta))
    assert back == placed and back.meta[:6] == meta[:6]

    first = event(placed)  # a flow's first event: its own correlation, no cause
    assert first.meta.correlation_id == first.meta.event_id and first.meta.causation_id is None
    assert event(placed, timestamp=dt.datetime(2024, 5, 1, 12)).meta.timestamp == NOON  # naive: UTC
    assert event(placed, timestamp=NOON.timestamp()).meta.timestamp == NOON
    with pytest.raises(TypeError, match="timestamp"):
        event(placed, timestamp="noon")  # type: ignore[arg-type]


def test_the_fixtures_take_events_made_with_event() -> None:
    orders = belvedere.AggregateFixture(Order, desk.app)
    created = event(OrderCreated(order_id="o-1", user_id="u", amount=Decimal(5)), timestamp=NOON)
    orders.given(created).when(event(desk.PayOrder(order_id="o-1"), event_id="cmd-1")).then(
        desk.OrderPaid(order_id="o-1")
    )
    checkout = belvedere.SagaFixture(checkout_app.app, "checkout", saga_id="flow-9")
    started = event(
        OrderCreated(order_id="o-1", user_id="u", amount=Decimal(5), sku="s", qty=1),
        event_id="created-1",
        correlation_id="flow-9",
    )
    outcome = checkout.given().when(started)
    outcome.then_sent(ReserveStock(sku="s", order_id="o-1", qty=1)).then_status("running")
    assert outcome.row is not None and outcome.row["start"]["eventId"] == "created-1"
    unstamped = checkout.given().when(OrderCreated(order_id="o-1", user_id="u", amount=Decimal(5)))
    assert unstamped.row is not None and unstamped.row["start"]["eventId"] == "when"


# -- the driver, kind by kind ---------------------------------------------------------------


def test_a_projection_reads_each_events_timestamp_and_correlation() -> None:
    app, orders, _ = shop("stamps")
    last = app.view("last-order", value=dict)

    @app.projection(orders, view=last)
    def on_placed(view, e: Placed) -> None:
        before = view.get(e.order_id, {"qty": 0})
        view[e.order_id] = {
            "at": e.meta.timestamp.isoformat(),
            "flow": e.meta.correlation_id,
            "qty": before["qty"] + e.qty,
        }

    broker, datadir = app.conf.broker, app.conf.datadir
    with TestDriver(app) as driver:
        driver.send(orders, Placed(order_id="o-1", sku="s", qty=2), timestamp=NOON, correlation_id="c-1")  # fmt: skip
        later = NOON + dt.timedelta(hours=1)
        driver.send(orders, event(Placed(order_id="o-1", sku="s", qty=3), timestamp=later))
        driver.send(orders, Placed(order_id="o-2", sku="s", qty=1), timestamp=NOON, correlation_id="c-2")  # fmt: skip
        driver.run()
        rows = driver.view(last)
        assert rows["o-1"]["at"] == later.isoformat() and rows["o-1"]["qty"] == 5
        assert rows["o-2"] == {"at": NOON.isoformat(), "flow": "c-2", "qty": 1}
        assert "o-3" not in rows and len(rows) == 2
        assert driver.rows("last-order").keys() == {"o-1", "o-2"}
        assert driver.sent(orders) == [] and driver.dead_letters() == []
    # the app is as it was: its broker, its data dir, no store open
    assert (app.conf.broker, app.conf.datadir) == (broker, datadir)
    assert last.stores == {} and not app.engine.partitions.all()
    assert not driver.data_dir.exists()  # deleted, its log closed first
    assert all(driver.data_dir.resolve() not in path.parents for path in Log._instances)
    with pytest.raises(RuntimeError, match="closed"):
        driver.run()


def test_a_rekeyed_projection_lands_each_row_in_its_keys_partition() -> None:
    app, orders, _ = shop("rekeyed")
    per_sku = app.view("per-sku", value=int)

    @app.projection(orders, view=per_sku, by="sku")
    def count(view, e: Placed) -> None:
        view[e.sku] = view.get(e.sku, 0) + e.qty

    given = [Placed(order_id=f"o-{i}", sku=f"sku-{i % 4}", qty=i) for i in range(12)]
    expected = Counter[str]()
    for placed in given:
        expected[placed.sku] += placed.qty
    with TestDriver(app) as driver:
        for placed in given:
            driver.send(orders, placed)
        driver.run()
        assert driver.rows(per_sku) == dict(expected)
        for sku in expected:  # folded where its key hashes, not where its order was
            store = per_sku.stores[per_sku.partition_for(sku)]
            assert store.get(per_sku.store_key(sku)) is not None
    with TestDriver(app) as again:  # a driver starts from nothing, the last one's gone
        again.send(orders, given[1])
        again.run()
        assert again.rows(per_sku) == {"sku-1": 1}


def test_a_reactor_publishes_events_that_continue_the_flow() -> None:
    # an app meant for Kafka, at an address nothing listens on: the driver needs no broker
    app, orders, confirmations = shop("reactor", broker="kafka://127.0.0.1:9")
    confirmed = app.view("confirmed", value=str)

    @app.reactor(Placed)
    async def confirm(e: Placed) -> None:
        if e.qty > 0:
            await confirmations.publish(Confirmed(order_id=e.order_id))

    @app.projection(confirmations, view=confirmed)
    def on_confirmed(view, e: Confirmed) -> None:  # folded in the same run
        view[e.order_id] = e.meta.causation_id

    with TestDriver(app) as driver:
        first = driver.send(orders, Placed(order_id="o-1", sku="s", qty=1), correlation_id="c-1")
        driver.send(orders, Placed(order_id="o-2", sku="s", qty=0))
        driver.send(orders, Placed(order_id="o-3", sku="s", qty=2), event_id="p-3")
        driver.run()
        sent = driver.sent(confirmations)
        assert sorted(sent, key=lambda e: e.order_id) == [
            Confirmed(order_id="o-1"),
            Confirmed(order_id="o-3"),
        ]
        by_order = {e.order_id: e.meta for e in sent}
        assert (by_order["o-1"].correlation_id, by_order["o-1"].causation_id) == (
            "c-1",
            first.meta.event_id,
        )
        assert (by_order["o-3"].correlation_id, by_order["o-3"].causation_id) == ("p-3", "p-3")
        assert by_order["o-1"].producer == app.conf.id
        assert driver.rows(confirmed) == {"o-1": first.meta.event_id, "o-3": "p-3"}
        driver.run()  # nothing new: nothing more
        assert len(driver.sent(confirmations)) == 2


def test_transforms_send_their_outputs_and_a_rekeyed_topic_folds_by_its_new_key() -> None:
    app, orders, confirmations = shop("flows")
    big = app.event_topic("testkit-flows-big", Placed, partitions=3)
    per_sku = app.view("big-per-sku", value=int)

    @app.filter(orders, to=big)
    def is_big(e: Placed) -> bool:
        return e.qty >= 5

    @app.map(orders, to=confirmations)
    def confirm(e: Placed) -> Confirmed | None:
        return Confirmed(order_id=e.order_id) if e.qty else None

    by_sku = app.rekey(big, by="sku")

    @app.projection(by_sku, view=per_sku)
    def count(view, e: Placed) -> None:
        view[e.sku] = view.get(e.sku, 0) + e.qty

    given = [Placed(order_id=f"o-{i}", sku=f"sku-{i % 3}", qty=i) for i in range(10)]
    expected = Counter[str]()
    for placed in given:
        if placed.qty >= 5:
            expected[placed.sku] += placed.qty
    with TestDriver(app) as driver:
        stamped = [
            driver.send(orders, placed, correlation_id=f"c-{placed.order_id}") for placed in given
        ]
        driver.run()
        assert sorted(e.order_id for e in driver.sent(big)) == [f"o-{i}" for i in range(5, 10)]
        sent = {e.order_id: e for e in driver.sent(confirmations)}
        assert sorted(sent) == sorted(f"o-{i}" for i in range(1, 10))
        source = {e.order_id: e.meta for e in stamped}
        for order_id, out in sent.items():  # continues its source's flow, caused by it
            assert out.meta.correlation_id == f"c-{order_id}"
            assert out.meta.causation_id == source[order_id].event_id
        assert driver.rows(per_sku) == dict(expected)


def test_a_saga_runs_to_completion_through_aggregates_reactors_and_the_trace() -> None:
    app = checkout_app.app  # commands -> aggregates -> saga -> reactors -> a projection
    with TestDriver(app) as driver:
        driver.send(
            desk.order_commands,
            CreateOrder(order_id="o-1", user_id="u", amount=Decimal(50), sku="sku-1", qty=1),
            correlation_id="flow-1",
        )
        driver.send(
            desk.order_commands,
            CreateOrder(order_id="o-2", user_id="u", amount=Decimal(5), sku="held-1", qty=1),
            correlation_id="flow-2",
        )
        driver.run()
        sagas = driver.view("saga-checkout")
        assert sagas["flow-1"]["status"] == "completed"
        assert sagas["flow-2"]["status"] == "running"  # the warehouse has not answered
        assert driver.view(desk.order_status)["o-1"] == "paid"
        assert driver.view(desk.receipts)["o-1"]["correlationId"] == "flow-1"
        events = [(e.event_type, e.order_id, e.meta.correlation_id) for e in driver.sent(desk.order_events)]  # fmt: skip
        assert events == [
            ("OrderCreated", "o-1", "flow-1"),
            ("OrderCreated", "o-2", "flow-2"),
            ("OrderPaid", "o-1", "flow-1"),
        ]
        reserve = [e for e in driver.sent(desk.stock_commands) if e.order_id == "o-1"]
        assert [e.meta.event_id for e in reserve] == ["checkout/flow-1/reserve/do"]
        trace = driver.view("trace")["flow-1"]["events"]
        assert [e["eventType"] for e in causal_order(trace)] == [
            "CreateOrder",
            "OrderCreated",
            "ReserveStock",
            "StockReserved",
            "ChargePayment",
            "PaymentCharged",
            "PayOrder",
            "OrderPaid",
            "ReceiptSent",
        ]

        # then the warehouse says no: the saga compensates and cancels the order
        driver.send(desk.stock_commands, DenyStock(sku="held-1", order_id="o-2"), correlation_id="flow-2")  # fmt: skip
        driver.run()
        assert sagas["flow-2"]["status"] == "compensated"
        assert driver.sent(desk.order_events)[-1].event_type == "OrderCancelled"
        assert driver.dead_letters() == []
        assert driver.view("aggregate-Order")["o-2"]["state"]["status"] == "cancelled"
        # all of it in this process: no worker, no engine service, no consumer started
        assert not (app.started or app.engine.started or app.consumer.started)


def test_bad_input_and_failing_handlers_go_to_the_dead_letters() -> None:
    app, orders, _ = shop("dead")
    stock = app.view("stock", value=int)

    @app.projection(orders, view=stock)
    def take(view, e: Placed) -> None:
        if e.qty < 0:
            raise ValueError(f"negative quantity {e.qty}")
        view[e.order_id] = view.get(e.order_id, 0) + e.qty

    with TestDriver(app) as driver:
        driver.send(orders, Placed(order_id="o-1", sku="s", qty=2))
        driver.send(orders, Placed(order_id="o-1", sku="s", qty=-1))
        with pytest.raises(TypeError, match="Confirmed is not one of"):
            driver.send(orders, Confirmed(order_id="o-1"))
        driver.send_raw(orders, b"not json", key="o-1")
        driver.send(orders, Placed(order_id="o-1", sku="s", qty=3))
        driver.run()
        assert driver.rows(stock) == {"o-1": 5}  # the bad ones set aside, the rest folded
        letters = driver.dead_letters()
        assert [(d.kind, d.view, d.offset) for d in letters] == [
            ("handler-error", "stock", 1),
            ("not-json", None, 2),
        ]
        assert "negative quantity -1" in letters[0].reason
        assert letters[0].topic == orders.get_topic_name()


def test_a_strict_app_stops_at_a_handlers_error_instead() -> None:
    app, orders, _ = shop("strict")
    app.strict = True
    stock = app.view("strict-stock", value=int)

    @app.projection(orders, view=stock)
    def take(view, e: Placed) -> None:
        if e.qty < 0:
            raise ValueError("negative")
        view[e.order_id] = e.qty

    with TestDriver(app) as driver:
        driver.send(orders, Placed(order_id="o-1", sku="s", qty=-1))
        with pytest.raises(StrictStop, match=r"handler .*take failed"):
            driver.run()
        assert driver.dead_letters() == []


def test_a_view_partitioned_unlike_its_source_is_refused_as_a_worker_would() -> None:
    app, orders, _ = shop("refused")
    odd = app.view("odd", value=int, partitions=2)  # its source has 3

    @app.projection(orders, view=odd)
    def on_placed(view, e: Placed) -> None:
        view[e.order_id] = e.qty

    broker = app.conf.broker
    with pytest.raises(ValueError, match="view 'odd' has 2 partitions but"):
        TestDriver(app)
    assert app.conf.broker == broker and not app.engine.partitions.all()


async def test_the_driver_runs_from_an_async_test_too() -> None:
    app, orders, _ = shop("async")
    seen = app.view("seen", value=int)

    @app.projection(orders, view=seen)
    async def on_placed(view, e: Placed) -> None:
        view[e.order_id] = e.qty

    with TestDriver(app) as driver:
        driver.send(orders, Placed(order_id="o-1", sku="s", qty=7))
        driver.run()
        assert driver.rows(seen) == {"o-1": 7}
