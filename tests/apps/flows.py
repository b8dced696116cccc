"""The transforms' test app: orders filtered, mapped, split, branched and re-keyed.

``big`` keeps orders of 50 or more, re-keyed by user into ``by_user`` and folded into the
``big-by-user`` view; ``receipt`` maps each order to a Receipt (none for round tens, a
wrong type for 13: dead-lettered); ``split`` sends ``amount % 3`` Lines per order;
``region`` branches to ``eu`` or ``us`` (none for "xx", an unknown branch for "mars":
dead-lettered). ``FLOWS_SLOW`` makes ``receipt`` take that many seconds per order.
"""

from __future__ import annotations

import asyncio
import os

import belvedere

NAME = os.environ["FLOWS_NAME"]

app = belvedere.App(NAME, checkpoint_events=200, checkpoint_interval=0.2)
#: Seconds ``receipt`` takes per order (the kill -9 test's, so that kills land mid-stream).
SLOW = float(os.environ.get("FLOWS_SLOW", 0))


class OrderPlaced(belvedere.Event, key="order_id"):
    order_id: str
    user_id: str
    region: str
    amount: int


class Receipt(belvedere.Event, key="order_id"):
    order_id: str
    amount: int


class Line(belvedere.Event, key="order_id"):
    order_id: str
    n: int


orders = app.event_topic(f"{NAME}-orders", OrderPlaced, partitions=4)
big = app.event_topic(f"{NAME}-big", OrderPlaced, partitions=4)
receipts = app.event_topic(f"{NAME}-receipts", Receipt, partitions=4)
lines = app.event_topic(f"{NAME}-lines", Line, partitions=3)
eu = app.event_topic(f"{NAME}-eu", OrderPlaced, partitions=2)
us = app.event_topic(f"{NAME}-us", OrderPlaced, partitions=2)


@app.filter(orders, to=big)
def is_big(event: OrderPlaced) -> bool:
    return event.amount >= 50


@app.map(orders, to=receipts)
async def receipt(event: OrderPlaced) -> Receipt | Line | None:
    if SLOW:
        await asyncio.sleep(SLOW)
    if event.amount == 13:
        return Line(order_id=event.order_id, n=0)  # not carried by receipts
    if event.amount % 10 == 0:
        return None
    return Receipt(order_id=event.order_id, amount=event.amount)


@app.flat_map(orders, to=lines)
def split(event: OrderPlaced) -> list[Line]:
    return [Line(order_id=event.order_id, n=n) for n in range(event.amount % 3)]


@app.branch(orders, to={"eu": eu, "us": us})
def region(event: OrderPlaced) -> str | None:
    return None if event.region == "xx" else event.region


by_user = app.rekey(big, by="user_id")
big_by_user = app.view("big-by-user", value=int)


@app.projection(by_user, view=big_by_user)
def total(view, event: OrderPlaced) -> None:
    view[event.user_id] = view.get(event.user_id, 0) + event.amount


@app.page("/state")
async def state(web, request):
    handled = {}
    for flow in ("is_big", "receipt", "split", "region", f"{NAME}-big-by-user_id"):
        rows, _ = app.views[f"flow-{flow}"].scan(limit=100)
        handled[flow] = sum(row["handled"] for _, row in rows)
    return web.json(
        {
            "ready": app.ready,
            "totals": dict(big_by_user.scan(limit=100_000)[0]),
            "handled": handled,
            "deadLetters": app.dead_letters.total,
        }
    )
