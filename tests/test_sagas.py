"""Sagas: the checkout of tests/apps/order_desk.py (reserve stock, charge, confirm; cancel
on failure), with the fixture and on both brokers, each case with a worker killed
while the saga waits."""

from __future__ import annotations

import os
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import belvedere
from belvedere.agents.trace import causal_order
from tests.support.brokers import Broker
from tests.support.fuzz import fuzz_spec
from tests.support.http import call
from tests.support.worker import Worker, wait_for
from tests.test_commands import DESK_TOPICS, command, serving

os.environ.setdefault("DESK_NAME", "fixture-only")
from tests.apps import checkout as checkout_app
from tests.apps.order_domain import (
    CancelOrder,
    ChargePayment,
    OrderCreated,
    OrderPaid,
    PaymentCharged,
    PayOrder,
    RefundPayment,
    ReleaseStock,
    ReserveFailed,
    ReserveStock,
    StockReserved,
)

# -- given / when / then, without a broker -------------------------------------------------------

CREATED = OrderCreated(order_id="o-1", user_id="u", amount=Decimal(150), sku="sku-9", qty=2)
RESERVED = StockReserved(sku="sku-9", order_id="o-1", qty=2)
checkout = belvedere.SagaFixture(checkout_app.app, "checkout")


def test_fixture_a_saga_that_succeeds() -> None:
    checkout.given().when(CREATED).then_sent(
        ReserveStock(sku="sku-9", order_id="o-1", qty=2)
    ).then_status("running")
    checkout.given(CREATED).when(RESERVED).then_sent(
        ChargePayment(order_id="o-1", amount=Decimal(150))
    )
    charged = PaymentCharged(order_id="o-1", amount=Decimal(150))
    checkout.given(CREATED, RESERVED).when(charged).then_sent(PayOrder(order_id="o-1"))
    checkout.given(CREATED, RESERVED, charged).when(
        OrderPaid(order_id="o-1")
    ).then_sent().then_status("completed")
    checkout.given(CREATED, RESERVED).when(RESERVED).then_sent()  # not what it waits for


def test_fixture_a_failed_reservation_cancels_the_order() -> None:
    failed = ReserveFailed(sku="sku-9", order_id="o-1", reason="out of stock")
    outcome = checkout.given(CREATED).when(failed)
    outcome.then_sent(CancelOrder(order_id="o-1", reason="checkout failed")).then_status(
        "compensated"
    )
    assert checkout_app.app.sagas["checkout"].saga.state(outcome.row).failure == failed


def test_fixture_a_payment_timeout_compensates_in_reverse_order() -> None:
    waiting = checkout.given(CREATED, RESERVED)
    waiting.after(119).then_sent().then_status("running")
    waiting.after(121).then_sent(
        RefundPayment(order_id="o-1"),
        ReleaseStock(sku="sku-9", order_id="o-1"),
        CancelOrder(order_id="o-1", reason="checkout failed"),
    ).then_status("compensated")
    with pytest.raises(
        AssertionError, match="expected the saga to be completed, but it is running"
    ):
        waiting.after(1).then_status("completed")


def test_sagas_are_checked_when_declared() -> None:
    with pytest.raises(ValueError, match="distinct names"):
        checkout_app.app.saga("again", start=OrderCreated, steps=[])
    with pytest.raises(LookupError, match="declare the topic carrying them first"):

        class Unrouted(belvedere.Event):
            order_id: str

        step = belvedere.Step("x", command=lambda s: PayOrder(order_id="o"), done=Unrouted)
        checkout_app.app.saga("unrouted", start=OrderCreated, steps=[step])


def test_a_saga_on_an_event_type_two_topics_carry_says_what_to_do() -> None:
    """A saga has no ``source=`` (its event types come from several topics): the message
    must not offer one."""

    class Twice(belvedere.Event):
        order_id: str

    app = belvedere.App("saga-twice")
    app.event_topic("twice-a", Twice)
    app.event_topic("twice-b", Twice)
    step = belvedere.Step("pay", command=lambda s: PayOrder(order_id="o"), done=OrderCreated)
    with pytest.raises(LookupError) as raised:
        app.saga("twice", start=Twice, steps=[step])
    message = str(raised.value)
    assert "carried by twice-a, twice-b; each must be carried by one event topic only" in message
    assert "source=" not in message


# -- on each broker, a worker killed mid-saga ---------------------------------------------------


@pytest.fixture
def shop(broker: Broker, workers: Callable[..., Worker], unique_name: str) -> Worker:
    for topic in DESK_TOPICS:
        broker.create_topic(f"{unique_name}-{topic}", 2 if topic == "notifications" else 4)
    return workers("tests.apps.checkout:app", {"DESK_NAME": unique_name})


def saga(worker: Worker, flow: str) -> dict[str, Any]:
    answer = call(f"{worker.url}/sagas/checkout/{flow}")
    return answer.body if answer.status == 200 else {}


def state_of(worker: Worker, kind: str, key: str) -> dict[str, Any]:
    return call(f"{worker.url}/aggregates/{kind}/{key}").body["state"]


def wait_saga(worker: Worker, flow: str, what: str, check: Callable[[dict], bool]) -> dict:
    return wait_for(lambda: (s := saga(worker, flow)) and check(s) and s, timeout=90, what=what)


def start_checkout(shop: Worker, flow: str, **order: Any) -> None:
    body = {"orderId": flow, "userId": "u", "amount": "20", "sku": "sku-1", "qty": 1, **order}
    created = command(shop, "CreateOrder", body, X_Correlation_Id=flow)
    assert created.status == 202, created.raw


def restart(shop: Worker) -> None:
    shop.kill()
    serving(shop)


def actions(row: dict) -> list[tuple[str, str]]:
    return [(h["what"], h.get("command") or h.get("event")) for h in row["history"]]


def test_a_saga_that_succeeds_across_a_restart(shop: Worker) -> None:
    serving(shop)
    start_checkout(shop, "o-ok", amount="150")  # held for review: the saga waits
    wait_saga(shop, "o-ok", "the charge step", lambda s: s["stepName"] == "charge")
    restart(shop)
    # The reviewer continues the flow: events join a saga by their correlation id.
    approved = command(shop, "ApprovePayment", {"orderId": "o-ok"}, X_Correlation_Id="o-ok")
    assert approved.status == 202
    done = wait_saga(shop, "o-ok", "completed", lambda s: s["status"] == "completed")
    assert actions(done) == [
        ("started", "OrderCreated"),
        ("do", "ReserveStock"), ("done", "StockReserved"),
        ("do", "ChargePayment"), ("done", "PaymentCharged"),
        ("do", "PayOrder"), ("done", "OrderPaid"),
    ]  # fmt: skip
    assert state_of(shop, "Order", "o-ok")["status"] == "paid"  # its OrderPaid completed the saga
    stock = call(f"{shop.url}/aggregates/Stock/sku-1").body["state"]
    assert stock["reserved"] == {"o-ok": 1}

    flow = [
        "CreateOrder", "OrderCreated", "ReserveStock", "StockReserved", "ChargePayment",
        "PaymentHeld", "ApprovePayment", "PaymentCharged", "PayOrder", "OrderPaid", "ReceiptSent",
    ]  # fmt: skip
    trace = wait_for(
        lambda: (
            len((t := call(f"{shop.url}/trace/o-ok").body).get("events", ())) == len(flow) and t
        ),
        timeout=60,
        what="the whole flow traced",
    )
    events = trace["events"]
    assert [e["eventType"] for e in events] == flow  # each after its cause
    by_id = {e["eventId"]: e for e in events}
    assert by_id[events[1]["causationId"]]["eventType"] == "CreateOrder"
    assert events[2]["eventId"] == "checkout/o-ok/reserve/do" and events[2]["kind"] == "command"
    assert events[-1]["topic"].endswith("-notifications") and events[-1]["offset"] >= 0
    assert call(f"{shop.url}/trace/nobody").status == 404


def test_causal_order_puts_each_event_after_its_cause() -> None:
    def event(event_id: str, cause: str | None, at: str) -> dict[str, Any]:
        stamp = f"2026-01-01T00:00:0{at}Z"
        return {
            "eventId": event_id,
            "causationId": cause,
            "timestamp": stamp,
            "topic": "t",
            "offset": 0,
        }

    found = causal_order([
        event("c", "a", "3"), event("b", None, "2"), event("a", None, "1"),
        event("self", "self", "4"), event("d", "c", "0"),  # a clock behind: still after c
    ])  # fmt: skip
    assert [e["eventId"] for e in found] == ["a", "c", "d", "b", "self"]


def test_a_failed_reservation_cancels_the_order_across_a_restart(shop: Worker) -> None:
    serving(shop)
    start_checkout(shop, "o-short", sku="held-7")  # the warehouse has not answered
    wait_saga(shop, "o-short", "the reserve step", lambda s: s["history"][-1]["what"] == "do")
    restart(shop)
    denied = command(
        shop, "DenyStock", {"sku": "held-7", "orderId": "o-short"}, X_Correlation_Id="o-short"
    )
    assert denied.status == 202
    ended = wait_saga(shop, "o-short", "compensated", lambda s: s["status"] == "compensated")
    assert actions(ended)[-2:] == [("failed", "ReserveFailed"), ("failed", "CancelOrder")]
    wait_for(
        lambda: state_of(shop, "Order", "o-short")["status"] == "cancelled",
        timeout=60,
        what="cancelled",
    )
    order = call(f"{shop.url}/aggregates/Order/o-short/events").body["events"]
    assert [e["event"]["eventType"] for e in order] == ["OrderCreated", "OrderCancelled"]
    assert order[1]["event"]["correlationId"] == "o-short"


def test_a_payment_that_times_out_is_compensated_across_a_restart(
    shop: Worker,
) -> None:
    shop.env["CHARGE_TIMEOUT"] = "3"
    serving(shop)
    start_checkout(shop, "o-slow", amount="500", sku="sku-2")  # held, and never approved
    wait_saga(shop, "o-slow", "the charge step", lambda s: s["stepName"] == "charge")
    restart(shop)  # the deadline is in the saga's row: it survives the restart
    ended = wait_saga(shop, "o-slow", "compensated", lambda s: s["status"] == "compensated")
    assert actions(ended)[-4:] == [
        ("timed-out", None),
        ("undo", "RefundPayment"), ("undo", "ReleaseStock"), ("failed", "CancelOrder"),
    ]  # fmt: skip
    # The compensations are commands: their aggregates act on them shortly after.
    wait_for(
        lambda: state_of(shop, "Order", "o-slow")["status"] == "cancelled",
        timeout=60,
        what="cancelled",
    )
    wait_for(
        lambda: state_of(shop, "Stock", "sku-2")["reserved"] == {}, timeout=60, what="released"
    )
    stock = call(f"{shop.url}/aggregates/Stock/sku-2/events").body["events"]
    assert [e["event"]["eventType"] for e in stock] == ["StockReserved", "StockReleased"]
    assert call(f"{shop.url}/sagas/checkout/nobody").status == 404


def test_fuzzing_the_command_side_finds_no_server_error(shop: Worker, tmp_path: Path) -> None:
    """Random commands, aggregate, saga and trace reads: every answer a JSON 2xx/4xx the
    spec documents, with tokens set."""
    shop.env["BELVEDERE_API_TOKEN"] = shop.env["BELVEDERE_ADMIN_TOKEN"] = "fuzz-token"
    shop.start()
    wait_for(lambda: call(shop.url + "/ready").status == 200, timeout=90, what="ready")
    spec = call(shop.url + "/openapi.json").body
    commands = spec["paths"]["/commands/{name}"]["post"]["parameters"][0]["schema"]["enum"]
    assert {"CreateOrder", "ReserveStock", "ChargePayment"} <= set(commands)
    only = ["--include-path-regex", "^/(commands|aggregates|sagas|trace)/"]
    assert fuzz_spec(shop.url, tmp_path, examples=25, seed=6, only=only, token="fuzz-token") > 50
    assert call(shop.url + "/ready").status == 200  # and the worker still serves
