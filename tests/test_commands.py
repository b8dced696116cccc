"""The command side: aggregates and their handlers, over HTTP and the command topic, on
both brokers; and the given-when-then fixture, with no broker at all."""

from __future__ import annotations

import datetime as dt
import os
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

import belvedere
from belvedere.streams.clients import NewRecord
from belvedere.streams.partitioner import partition_for_key
from tests.support.brokers import KAFKA_ONLY, Broker
from tests.support.http import Answer, call
from tests.support.worker import Worker, wait_for

os.environ.setdefault("DESK_NAME", "fixture-only")
from tests.apps import order_desk
from tests.apps.order_domain import (
    AddNote,
    CreateOrder,
    Order,
    OrderCreated,
    OrderPaid,
    OrderShipped,
    PayOrder,
    ShipOrder,
)

# -- given / when / then, without a broker -------------------------------------------------------

orders = belvedere.AggregateFixture(Order, order_desk.app)
CREATED = OrderCreated(order_id="o-1", user_id="u-1", amount=Decimal("99.99"))


def test_the_source_example_created_paid_shipped_is_shipped_at_99_99() -> None:
    order = Order.replay("o-1", [CREATED, OrderPaid(order_id="o-1"), OrderShipped(order_id="o-1")])
    assert (order.status, order.amount, order.version) == ("shipped", Decimal("99.99"), 3)
    orders.given(CREATED, OrderPaid(order_id="o-1")).when(ShipOrder(order_id="o-1")).then(
        OrderShipped(order_id="o-1")
    ).then_state(status="shipped", amount=Decimal("99.99"), version=3)


def test_fixture_rejections_conflicts_and_results() -> None:
    orders.given().when(PayOrder(order_id="o-1")).then_rejected("new, not awaiting payment")
    orders.given(CREATED).when(
        CreateOrder(order_id="o-1", user_id="u", amount=Decimal(1))
    ).then_rejected("already exists").then_state(version=1)
    orders.given(CREATED).when(
        AddNote(order_id="o-1", text="x", expected_version=0)
    ).then_conflict()
    orders.given().when(CreateOrder(order_id="o-2", user_id="u", amount=Decimal(5))).then(
        OrderCreated(order_id="o-2", user_id="u", amount=Decimal(5))
    ).then_result({"orderId": "o-2"})
    with pytest.raises(
        AssertionError, match="expected the command to be accepted, but it was rejected"
    ):
        orders.given().when(PayOrder(order_id="o-1")).then(OrderPaid(order_id="o-1"))
    with pytest.raises(AssertionError, match="expected events"):
        orders.given(CREATED).when(PayOrder(order_id="o-1")).then(OrderShipped(order_id="o-1"))


def test_aggregates_and_handlers_are_checked_when_declared() -> None:
    with pytest.raises(TypeError, match="needs a default"):

        class Bare(belvedere.Aggregate):
            status: str

    def bad(order: Order, command: PayOrder) -> Any:
        return "not an event"

    fixture = belvedere.AggregateFixture(Order, handlers=[bad])
    with pytest.raises(
        TypeError, match=r"return an event, a list of events, None or belvedere\.Reply"
    ):
        fixture.given(CREATED).when(PayOrder(order_id="o-1"))
    with pytest.raises(LookupError, match="no handler for ShipOrder"):
        fixture.given().when(ShipOrder(order_id="o-1"))


# -- a worker, on each broker ----------------------------------------------------------------


DESK_TOPICS = [
    f"{kind}-{what}" for kind in ("order", "stock", "payment") for what in ("events", "commands")
] + ["notifications"]


@pytest.fixture
def desk(broker: Broker, workers: Callable[..., Worker], unique_name: str) -> Worker:
    for topic in DESK_TOPICS:
        broker.create_topic(f"{unique_name}-{topic}", 2 if topic == "notifications" else 4)
    return workers("tests.apps.order_desk:app", {"DESK_NAME": unique_name})


def command(worker: Worker, name: str, body: Any, **headers: str) -> Answer:
    sent = {k.replace("_", "-"): v for k, v in headers.items()}
    return call(f"{worker.url}/commands/{name}", "POST", body, sent)


def serving(worker: Worker) -> Worker:
    worker.start()
    worker.wait_until("/state", lambda s: s["ready"], what="serving")
    return worker


def test_commands_over_http_emit_events_and_answer_with_a_token(desk: Worker) -> None:
    serving(desk)
    created = command(
        desk, "CreateOrder", {"orderId": "o-1", "userId": "u-1", "amount": "99.99"},
        Idempotency_Key="cmd-create", X_Correlation_Id="flow-1",
    )  # fmt: skip
    assert created.status == 202, created.raw
    body = created.body
    assert (body["status"], body["version"], body["result"]) == ("accepted", 1, {"orderId": "o-1"})
    assert [e["eventType"] for e in body["events"]] == ["OrderCreated"]
    seen = call(f"{desk.url}/views/order-status/o-1?after={body['token']}&timeout=30")
    assert (seen.status, seen.body) == (200, "created")  # read-your-writes through a projection

    assert command(desk, "PayOrder", {"orderId": "o-1"}, Idempotency_Key="cmd-pay").status == 202
    shipped = command(desk, "ShipOrder", {"orderId": "o-1"}, X_Correlation_Id="flow-1")
    assert shipped.status == 202 and shipped.body["version"] == 3
    again = command(desk, "ShipOrder", {"orderId": "o-1"})
    assert again.status == 422 and again.body["error"] == "rejected"
    assert again.body["detail"] == "order o-1 is shipped, not paid"

    now = call(f"{desk.url}/aggregates/Order/o-1").body
    assert now == {
        "type": "Order",
        "id": "o-1",
        "version": 3,
        "state": {"status": "shipped", "amount": "99.99", "userId": "u-1", "notes": 0},
    }
    history = call(f"{desk.url}/aggregates/Order/o-1/events").body["events"]
    assert [(h["version"], h["event"]["eventType"]) for h in history] == [
        (1, "OrderCreated"), (2, "OrderPaid"), (3, "OrderShipped"),
    ]  # fmt: skip
    envelopes = [h["event"] for h in history]
    first = call(f"{desk.url}/aggregates/Order/o-1/events?limit=2").body
    assert [h["version"] for h in first["events"]] == [1, 2] and first["next"]
    rest = call(f"{desk.url}/aggregates/Order/o-1/events?limit=2&cursor={first['next']}").body
    assert [h["event"] for h in first["events"] + rest["events"]] == envelopes
    assert rest["next"] is None and rest["version"] == 3
    for bad in ("limit=0", "limit=1001", "cursor=nonsense", "cursor=NA"):  # NA: 4, past the end
        answer = call(f"{desk.url}/aggregates/Order/o-1/events?{bad}")
        assert (answer.status, answer.body["error"]) == (400, "bad-parameter"), (bad, answer.raw)
    assert [e["causationId"] for e in envelopes[:2]] == ["cmd-create", "cmd-pay"]
    assert envelopes[0]["correlationId"] == envelopes[2]["correlationId"] == "flow-1"
    assert envelopes[0]["eventId"] == body["events"][0]["eventId"]


def test_bad_commands_get_a_clear_4xx(desk: Worker) -> None:
    serving(desk)
    missing = command(desk, "CreateOrder", {"orderId": "o-1", "userId": "u"})
    assert missing.status == 400 and "amount: is required" in missing.body["detail"]
    assert command(desk, "CreateOrder", b"{not json").status == 400
    unknown = command(desk, "RefundOrder", {"orderId": "o-1"})
    assert unknown.status == 404 and "CreateOrder" in unknown.body["detail"]
    assert call(f"{desk.url}/aggregates/Order/nobody").status == 404
    assert call(f"{desk.url}/aggregates/Invoice/o-1").status == 404
    assert call(f"{desk.url}/trace/o-1").body["error"] == "tracing-off"
    assert call(f"{desk.url}/sagas/checkout/o-1").body["error"] == "unknown-saga"
    assert call(f"{desk.url}/aggregates/Order/o-1?at=yesterday").status == 400
    negative = command(desk, "CreateOrder", {"orderId": "o-1", "userId": "u", "amount": "-1"})
    assert negative.status == 422 and negative.body["detail"] == "the amount must be positive"


def quoted(when: dt.datetime) -> str:
    return urllib.parse.quote(when.isoformat())


def test_a_temporal_query_gives_the_aggregate_as_it_was(desk: Worker) -> None:
    serving(desk)
    assert (
        command(desk, "CreateOrder", {"orderId": "o-9", "userId": "u", "amount": "5"}).status == 202
    )
    assert command(desk, "PayOrder", {"orderId": "o-9"}).status == 202
    history = call(f"{desk.url}/aggregates/Order/o-9/events").body["events"]
    paid_at = dt.datetime.fromisoformat(history[1]["event"]["timestamp"])
    assert command(desk, "ShipOrder", {"orderId": "o-9"}).status == 202

    first = call(f"{desk.url}/aggregates/Order/o-9?at=1").body
    assert (first["version"], first["state"]["status"], first["at"]) == (1, "created", 1)
    then = call(f"{desk.url}/aggregates/Order/o-9?at={quoted(paid_at)}").body
    assert (then["version"], then["state"]["status"]) == (2, "paid")
    before = paid_at - dt.timedelta(microseconds=1)
    assert call(f"{desk.url}/aggregates/Order/o-9?at={quoted(before)}").body["version"] == 1
    assert call(f"{desk.url}/aggregates/Order/o-9?at=4").status == 404
    assert call(f"{desk.url}/aggregates/Order/o-9").body["state"]["status"] == "shipped"


def test_concurrent_commands_on_one_aggregate_never_both_win_a_version(desk: Worker) -> None:
    serving(desk)
    assert (
        command(desk, "CreateOrder", {"orderId": "o-c", "userId": "u", "amount": "1"}).status == 202
    )

    def note(i: int, expected: int | None) -> Answer:
        body = {"orderId": "o-c", "text": f"note {i}", "expectedVersion": expected}
        return command(desk, "AddNote", body)

    with ThreadPoolExecutor(8) as pool:
        racing = list(pool.map(lambda i: note(i, 1), range(8)))
    assert sorted(a.status for a in racing) == [202] + [409] * 7
    lost = next(a.body for a in racing if a.status == 409)
    assert lost["error"] == "version-conflict" and "expected version 1" in lost["detail"]

    with ThreadPoolExecutor(8) as pool:
        unguarded = list(pool.map(lambda i: note(i, None), range(8)))
    assert [a.status for a in unguarded] == [202] * 8
    assert sorted(a.body["version"] for a in unguarded) == list(range(3, 11))  # one writer
    order = call(f"{desk.url}/aggregates/Order/o-c").body
    assert (order["version"], order["state"]["notes"]) == (10, 9)


def test_concurrent_history_reads_share_one_reader(desk: Worker) -> None:
    """An aggregate's events are read back from the log for each request: 40 at once are
    each right, and the worker reads them all on its one requests' reader (a reader per
    request was a thread and new broker connections each)."""
    serving(desk)
    for i in range(4):
        body = {"orderId": f"o-h{i}", "userId": "u", "amount": "1"}
        assert command(desk, "CreateOrder", body).status == 202
        for n in range(i):
            assert command(desk, "AddNote", {"orderId": f"o-h{i}", "text": f"{n}"}).status == 202
    assert desk.proc is not None
    tasks = Path(f"/proc/{desk.proc.pid}/task")

    def history(i: int) -> list[str]:
        answer = call(f"{desk.url}/aggregates/Order/o-h{i % 4}/events")
        assert answer.status == 200, answer.raw
        return [h["event"]["eventType"] for h in answer.body["events"]]

    history(0)  # the shared reader is up
    threads = len(list(tasks.iterdir()))
    most = threads
    with ThreadPoolExecutor(8) as pool:
        reads = [pool.submit(history, i) for i in range(40)]
        while not all(read.done() for read in reads):
            most = max(most, len(list(tasks.iterdir())))
    found = [read.result() for read in reads]
    assert found == [["OrderCreated"] + ["NoteAdded"] * (i % 4) for i in range(40)]
    assert most <= threads + 1, f"{threads} threads before, {most} while 40 reads ran"


def test_a_repeated_command_id_returns_the_first_outcome_and_emits_nothing(
    desk: Worker, unique_name: str
) -> None:
    serving(desk)
    body = {"orderId": "o-r", "userId": "u", "amount": "3"}
    first = command(desk, "CreateOrder", body, Idempotency_Key="same")
    repeat = command(desk, "CreateOrder", body, Idempotency_Key="same")
    assert first.status == repeat.status == 202
    assert repeat.body["duplicate"] is True and repeat.body["events"] == first.body["events"]
    rejected = command(desk, "PayOrder", {"orderId": "o-none"}, Idempotency_Key="r")
    assert rejected.status == 422

    # The same command twice on the command topic, as a retrying producer would send it
    # (through the worker: on the embedded broker nothing else may write meanwhile).
    envelope = {
        "eventId": "from-a-producer",
        "eventType": "AddNote",
        "eventVersion": 1,
        "data": {"orderId": "o-r", "text": "twice"},
    }
    posted = call(f"{desk.url}/events/{unique_name}-order-commands", "POST", [envelope] * 2)
    assert posted.status == 201, posted.raw
    # the topic opens AddNote only; the aggregate's events topic is not open at all
    create = {**envelope, "eventType": "CreateOrder", "eventId": "forged"}
    create["data"] = {"orderId": "o-f", "userId": "u", "amount": "1"}
    forged = {**envelope, "eventType": "OrderCreated", "eventId": "forged-event"}
    forged["data"] = {"orderId": "o-f", "userId": "u", "amount": "1"}
    for topic, body in (("order-commands", create), ("order-events", forged)):
        refused = call(f"{desk.url}/events/{unique_name}-{topic}", "POST", [envelope, body])
        assert refused.status == 403 and refused.body["error"] == "not-publishable", refused.raw
    marker = command(desk, "AddNote", {"orderId": "o-r", "text": "after"})  # queued behind them
    assert marker.status == 202 and marker.body["version"] == 3
    history = call(f"{desk.url}/aggregates/Order/o-r/events").body["events"]
    assert [h["event"]["eventType"] for h in history] == ["OrderCreated", "NoteAdded", "NoteAdded"]
    assert [h["event"]["causationId"] for h in history][1:] == [
        "from-a-producer",
        marker.body["commandId"],
    ]


def test_a_crash_after_appending_events_emits_nothing_twice(
    broker: Broker, desk: Worker, unique_name: str
) -> None:
    """The worker dies after its first append, before the checkpoint recording it: the
    restore folds those events back in, and their commands are not decided again. (On
    Kafka the append is in the checkpoint's transaction, which the crash leaves uncommitted:
    readers never see it, and the commands are decided once, after the restart.)"""
    commands = [
        NewRecord(
            f"o-{i}".encode(),
            orjson.dumps({
                "eventId": f"create-{i}",
                "eventType": "CreateOrder",
                "eventVersion": 1,
                "data": {"orderId": f"o-{i}", "userId": "u", "amount": "1"},
            }),
            0,
        )
        for i in range(40)
    ]  # fmt: skip
    broker.produce(f"{unique_name}-order-commands", commands)
    desk.env["CRASH_AFTER_APPEND"] = "1"
    desk.start()
    assert desk.proc is not None
    assert desk.proc.wait(90) == 9, desk.log_tail()
    desk.proc = None
    appended = broker.read(f"{unique_name}-order-events")
    if broker.name == "kafka":
        assert not appended, "an uncommitted append was read"
    else:
        assert appended, "the crash came after an append"

    del desk.env["CRASH_AFTER_APPEND"]
    serving(desk)
    for i in range(40):
        wait_for(
            lambda i=i: call(f"{desk.url}/aggregates/Order/o-{i}").status == 200,
            timeout=60,
            what=f"order o-{i}",
        )
    for i in range(40):
        history = call(f"{desk.url}/aggregates/Order/o-{i}/events").body["events"]
        assert [h["event"]["causationId"] for h in history] == [f"create-{i}"]  # once
    if broker.name == "kafka":  # what the restarted worker appended, and committed
        appended = broker.read(f"{unique_name}-order-events")
    first = {r.key: orjson.loads(r.value)["eventId"] for r in appended}
    for key, event_id in first.items():
        again = command(
            desk, "CreateOrder", {"orderId": key.decode(), "userId": "u", "amount": "1"},
            Idempotency_Key=f"create-{key.decode()[2:]}",
        )  # fmt: skip
        assert again.status == 202 and again.body["duplicate"] is True
        assert [e["eventId"] for e in again.body["events"]] == [event_id]
    assert all(call(f"{desk.url}/aggregates/Order/o-{i}").body["version"] == 1 for i in range(40))


# -- reactors --------------------------------------------------------------------------------


def pay_orders(desk: Worker, orders: list[str]) -> dict[str, str]:
    """Create and pay each order in its own flow; returns each OrderPaid's event id."""
    paid = {}
    for order in orders:
        flow = {"X_Correlation_Id": f"flow-{order}"}
        body = {"orderId": order, "userId": "u", "amount": "2"}
        assert command(desk, "CreateOrder", body, **flow).status == 202
        answer = command(desk, "PayOrder", {"orderId": order}, **flow)
        assert answer.status == 202, answer.raw
        paid[order] = answer.body["events"][0]["eventId"]
    return paid


ORDERS = ["o-1", "o-2-bad", "o-3"]


def test_every_reactor_gets_every_event_and_a_failing_one_stops_nothing(
    desk: Worker, unique_name: str
) -> None:
    serving(desk)
    paid = pay_orders(desk, ORDERS)
    desk.wait_until("/state", lambda s: sorted(s["paidSeen"]) == ORDERS, what="every payment")
    for order, event_id in paid.items():  # the receipt reactor published, in the same flow
        receipt = wait_for(
            lambda order=order: (
                (a := call(f"{desk.url}/views/receipts/{order}")).status == 200 and a
            ),
            timeout=60,
            what=f"the receipt of {order}",
        )
        assert receipt.body == {"correlationId": f"flow-{order}", "causationId": event_id}
    letters = desk.wait_until("/state", lambda s: s["deadLetters"], what="a dead letter")
    assert letters["deadLetters"] == {f"{unique_name}-order-events:handler-error": 1}
    pay_orders(desk, ["o-4"])  # and every reactor goes on, the failing one too
    desk.wait_until("/state", lambda s: "o-4" in s["paidSeen"], what="a later payment")
    wait_for(lambda: call(f"{desk.url}/views/receipts/o-4").status == 200, timeout=60, what="o-4")
    assert desk.get("/state")["deadLetters"] == letters["deadLetters"]


@KAFKA_ONLY
def test_a_reactor_in_another_app_gets_every_event_too(
    desk: Worker, workers: Callable[..., Worker], unique_name: str
) -> None:
    serving(desk)
    mailer = serving(workers("tests.apps.mailer:app", {"DESK_NAME": unique_name}, "mailer"))
    pay_orders(desk, ORDERS)
    mailer.wait_until(
        "/state", lambda s: sorted(s["mailed"]) == ORDERS, what="every payment mailed"
    )
    desk.wait_until("/state", lambda s: sorted(s["paidSeen"]) == ORDERS, what="and seen here")


@KAFKA_ONLY
def test_a_command_sent_to_either_of_two_workers_reaches_the_owner_with_its_body(
    broker: Broker, workers: Callable[..., Worker], unique_name: str
) -> None:
    for topic in DESK_TOPICS:
        broker.create_topic(f"{unique_name}-{topic}", 2 if topic == "notifications" else 4)
    env = {"DESK_NAME": unique_name}
    pair = [workers("tests.apps.order_desk:app", dict(env), data_dir=d).start() for d in "ab"]

    def split() -> list[set[int]] | None:
        parts = [w.get("/views?scope=local") for w in pair]
        if not all(parts):
            return None
        held = [
            {
                int(p)
                for p, s in part["views"]["aggregate-Order"]["partitions"].items()
                if s["state"] == "serving"
            }
            for part in parts
        ]
        return held if all(held) and set.union(*held) == {0, 1, 2, 3} else None

    held = wait_for(split, timeout=120, what="the Order partitions split over two workers")
    forwarded = 0
    for i in range(40):
        sender, other = pair[i % 2], pair[1 - i % 2]
        order_id = f"o-{i}"
        forwarded += partition_for_key(order_id.encode(), 4) not in held[i % 2]
        created = command(  # as a page of the sender's own origin would: also when forwarded
            sender,
            "CreateOrder",
            {"orderId": order_id, "userId": "u", "amount": i + 1},
            Origin=sender.url,
        )
        assert created.status == 202, (order_id, created.raw)
        assert created.body["aggregateId"] == order_id and created.body["version"] == 1
        seen = call(f"{other.url}/views/order-status/{order_id}?after={created.body['token']}")
        assert (seen.status, seen.body) == (200, "created"), seen.raw
    assert forwarded > 0
    for worker in pair:
        order = call(f"{worker.url}/aggregates/Order/o-7").body
        assert (order["version"], order["state"]["amount"]) == (1, "8")
