"""Typed events through real workers, on both brokers: dead letters, correlation, foreign
producers, upcasting on read, and dead-letter replay after a fix."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from belvedere.streams.clients import NewRecord
from belvedere.streams.dead_letters import DeadLetter, dead_letter_topic
from belvedere.streams.partitioner import partition_for_key
from tests.support.brokers import Broker
from tests.support.worker import Worker, run_cli

MAX_EVENT_BYTES = 4096  # tests/apps/orders.py


def envelope(event_type: str, data: dict, *, version: int = 1, **fields: object) -> bytes:
    return orjson.dumps(
        {
            "eventId": fields.pop("eventId", f"{event_type}-{data.get('orderId')}"),
            "eventType": event_type,
            "eventVersion": version,
            "timestamp": "2024-01-15T10:30:00Z",
            "correlationId": fields.pop("correlationId", "corr-1"),
            "causationId": None,
            "producer": "test",
            "data": data,
            **fields,
        }
    )


def created(order_id: str, amount: str = "99.99") -> bytes:
    return envelope(
        "OrderCreated",
        {"orderId": order_id, "userId": "user-456", "amount": amount, "items": []},
        version=2,
        eventId=f"created-{order_id}",
    )


@pytest.fixture
def name(unique_name: str) -> str:
    return unique_name


@pytest.fixture
def orders(broker: Broker, workers: Callable[..., Worker], name: str) -> Worker:
    for topic, partitions in (("orders", 4), ("invoices", 2), ("notifications", 1)):
        broker.create_topic(f"{name}-{topic}", partitions)
    return workers("tests.apps.orders:app", {"ORDERS_NAME": name})


def test_bad_input_goes_to_the_dead_letters_and_the_partition_keeps_going(
    broker: Broker, orders: Worker, name: str
) -> None:
    key = b"order-1"
    bad = [
        ("not-json", b"this is not json", (), "not JSON"),
        ("not-json", created("order-1")[:40], (), "not JSON"),
        (
            "unknown-type",
            envelope("OrderExploded", {"orderId": "order-1"}),
            (),
            "unknown eventType 'OrderExploded'",
        ),
        (
            "invalid-data",
            envelope(
                "OrderCreated", {"orderId": "order-1", "userId": "u", "amount": "lots"}, version=2
            ),
            (),
            "data.amount: expected a decimal number, got the string 'lots'",
        ),
        (
            "invalid-data",
            envelope("OrderCreated", {"orderId": "order-1", "userId": 7, "amount": "1"}, version=2),
            (),
            "data.userId: expected a string, got int 7",
        ),
        (
            "oversized",
            envelope("OrderPaid", {"orderId": "order-1", "pad": "x" * MAX_EVENT_BYTES}),
            (),
            "over the 4096-byte limit",
        ),
        (
            "bad-envelope",
            orjson.dumps({"eventType": "OrderPaid"}),
            (),
            "eventVersion must be an integer",
        ),
        (
            "newer-version",
            envelope("OrderPaid", {"orderId": "order-1"}, version=5),
            (),
            "OrderPaid v5 is newer than this code knows (v1)",
        ),
        (
            "unknown-type",
            envelope("OrderPaid", {"orderId": "order-1"}),
            (("eventType", b"Refund"), ("trace", b"t-1")),
            "unknown eventType 'Refund' (from its header)",
        ),
    ]
    records = [NewRecord(key, created("order-1"), 0)]
    records += [NewRecord(key, value, 0, headers) for _, value, headers, _ in bad]
    records += [NewRecord(key, envelope("OrderPaid", {"orderId": "order-1"}, eventId="paid-1"), 0)]
    broker.produce(f"{name}-orders", records)

    orders.start()
    state = orders.wait_until(
        "/state",
        lambda s: s["seen"].get("order-1") == ["OrderCreated", "OrderPaid"],
        what="both good events",
    )
    assert sum(state["deadLetters"].values()) == len(bad)
    assert state["deadLetters"][f"{name}-orders:not-json"] == 2
    assert orders.stop() == 0

    partition = partition_for_key(key, 4)
    letters = [
        DeadLetter.from_record(r.key, r.value, r.headers)
        for r in broker.read(dead_letter_topic(name, f"{name}-orders"))
    ]
    assert len(letters) == len(bad)
    for letter, (kind, value, headers, reason), offset in zip(
        letters, bad, range(1, 100), strict=False
    ):
        assert letter.kind == kind
        assert reason in letter.reason
        assert (letter.key, letter.value, letter.headers) == (key, value, headers)
        assert (letter.topic, letter.partition, letter.offset) == (
            f"{name}-orders",
            partition,
            offset,
        )
        assert letter.time.endswith("Z")

    listing = run_cli(
        "dlq",
        "list",
        "tests.apps.orders:app",
        f"{name}-orders",
        "--broker",
        broker.url,
        "--data-dir",
        str(orders.data_dir),
        env={"ORDERS_NAME": name},
    )
    assert listing.returncode == 0, listing.stderr
    assert f"{len(bad)} dead letter(s)" in listing.stdout
    assert "unknown eventType 'OrderExploded'" in listing.stdout


def test_correlation_and_causation_propagate_across_two_agents(
    broker: Broker, orders: Worker, name: str
) -> None:
    broker.produce(f"{name}-orders", [(b"order-7", created("order-7"))])
    orders.start()
    state = orders.wait_until(
        "/state", lambda s: len(s["trace"].get("order-7", [])) == 3, what="three hops"
    )

    created_, requested, sent = state["trace"]["order-7"]
    assert [h["type"] for h in (created_, requested, sent)] == [
        "OrderCreated",
        "InvoiceRequested",
        "InvoiceSent",
    ]
    assert {h["correlationId"] for h in (created_, requested, sent)} == {"corr-1"}
    assert requested["causationId"] == created_["eventId"] == "created-order-7"
    assert sent["causationId"] == requested["eventId"]
    assert len({h["eventId"] for h in (created_, requested, sent)}) == 3
    assert requested["producer"] == sent["producer"] == name
    assert requested["data"] == {"orderId": "order-7", "amount": "99.99"}


def test_foreign_events_and_older_versions_are_read_like_our_own(
    broker: Broker, orders: Worker, name: str
) -> None:
    topic = f"{name}-orders"
    # What kafka-console-producer would send: no eventId, timestamp, correlation or producer.
    bare = orjson.dumps(
        {"eventType": "OrderPaid", "eventVersion": 1, "data": {"orderId": "order-9"}}
    )
    v1 = orjson.dumps(
        {
            "eventType": "OrderCreated",
            "eventVersion": 1,
            "data": {"orderId": "order-8", "userId": "u", "totalCents": 12345},
        }
    )
    broker.produce(
        topic,
        [
            NewRecord(b"order-9", bare, 1_700_000_000_000),
            NewRecord(b"order-8", v1, 1_700_000_000_000),
        ],
    )
    orders.start()
    state = orders.wait_until(
        "/state",
        lambda s: "order-9" in s["trace"] and "order-8" in s["trace"],
        what="both foreign events",
    )

    (paid,) = state["trace"]["order-9"]
    assert paid["eventId"] == f"{topic}-{partition_for_key(b'order-9', 4)}-0"
    assert paid["correlationId"] == paid["eventId"]
    assert paid["causationId"] is None and paid["producer"] is None
    assert paid["timestamp"] == "2023-11-14T22:13:20+00:00"

    upcast = state["trace"]["order-8"][0]
    assert upcast["version"] == 1  # as written
    assert upcast["data"] == {"orderId": "order-8", "userId": "u", "amount": "123.45", "items": []}


def test_dead_letters_are_replayed_upcast_once_the_code_knows_them(
    broker: Broker, orders: Worker, name: str
) -> None:
    topic = f"{name}-orders"
    cancelled_v1 = envelope(
        "OrderCancelled", {"orderId": "order-5"}, eventId="cancel-5", correlationId="corr-5"
    )
    broker.produce(topic, [(b"order-5", created("order-5")), (b"order-5", cancelled_v1)])
    orders.start()
    orders.wait_until(
        "/state",
        lambda s: sum(s["deadLetters"].values()) == 1,
        what="the unknown event dead-lettered",
    )
    assert orders.stop() == 0

    fixed = {"ORDERS_NAME": name, "ORDERS_KNOW_CANCELLED": "1"}
    args = (
        "dlq",
        "replay",
        "tests.apps.orders:app",
        topic,
        "--broker",
        broker.url,
        "--data-dir",
        str(orders.data_dir),
    )
    first = run_cli(*args, env=fixed)
    assert first.returncode == 0, first.stderr
    assert "replayed 1 dead letter(s)" in first.stdout
    again = run_cli(*args, env=fixed)
    assert "replayed 0 dead letter(s)" in again.stdout

    orders.env = fixed
    orders.start()
    # The replayed copy is republished at the current version (2), upcast. (If faust had not
    # committed the original before the first worker stopped, the fixed worker also reads
    # the original again: at-least-once, with the same eventId for deduplication.)
    state = orders.wait_until(
        "/state",
        lambda s: any(h["version"] == 2 for h in s["trace"].get("order-5", ())),
        what="the replayed event",
    )
    (cancelled,) = [h for h in state["trace"]["order-5"] if h["version"] == 2]
    assert cancelled["type"] == "OrderCancelled"
    assert cancelled["data"] == {"orderId": "order-5", "reason": "unknown"}
    assert (cancelled["eventId"], cancelled["correlationId"]) == ("cancel-5", "corr-5")
