"""The stream-join tests' app: orders joined with their payments within 15 minutes.

``pay`` is an outer join on ``order_id`` by the events' ``at`` field, with a grace of two
hours: a pair gives ``Paid(order, payment, placed=True)``, an order left unpaid gives
``Paid(order, None, placed=True)``, a payment of no order ``Paid(order, payment,
placed=False)``. ``/state`` says what the join's view holds: its events (checkpointed),
its late count, and what its two inputs have copied. ``SJ_SLOW`` makes ``pay`` take that
many seconds a call (the kill -9 test's, so that kills land mid-stream).
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

import belvedere

NAME = os.environ["SJ_NAME"]
SLOW = float(os.environ.get("SJ_SLOW", 0))
WITHIN = timedelta(minutes=15)
GRACE = timedelta(hours=2)

app = belvedere.App(NAME, checkpoint_events=200, checkpoint_interval=0.2)


class OrderPlaced(belvedere.Event, key="order_id"):
    order_id: str
    at: int


class PaymentReceived(belvedere.Event, key="payment_id"):
    payment_id: str
    order_id: str
    at: int


class Paid(belvedere.Event, key="order_id"):
    order_id: str
    payment_id: str | None
    placed: bool


orders = app.event_topic(f"{NAME}-orders", OrderPlaced, partitions=4)
payments = app.event_topic(f"{NAME}-payments", PaymentReceived, partitions=3)
paid = app.event_topic(f"{NAME}-paid", Paid, partitions=4)


@app.join(orders, payments, within=WITHIN, grace=GRACE, how="outer", on="order_id", time="at", to=paid)  # fmt: skip
async def pay(order: OrderPlaced | None, payment: PaymentReceived | None) -> Paid:
    if SLOW:
        await asyncio.sleep(SLOW)
    if order is None:
        assert payment is not None
        return Paid(order_id=payment.order_id, payment_id=payment.payment_id, placed=False)
    return Paid(order_id=order.order_id, payment_id=payment and payment.payment_id, placed=True)


@app.page("/state")
async def state(web, request):
    rows, _ = app.views["join-pay"].scan(limit=1_000_000)
    stored = sum(len(row.get("events", ())) for _, row in rows)
    late = sum(row.get("late", 0) for key, row in rows if key == "\0")
    copied = 0
    for side in ("left", "right"):
        flows, _ = app.views[f"flow-pay-{side}"].scan(limit=100)
        copied += sum(row["handled"] for _, row in flows)
    return web.json(
        {
            "ready": app.ready,
            "stored": stored,
            "late": late,
            "copied": copied,
            "deadLetters": app.dead_letters.total,
        }
    )
