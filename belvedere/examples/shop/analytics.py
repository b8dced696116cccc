"""Analytics: revenue per user, how many orders are in each status, and why orders were
cancelled."""

from __future__ import annotations

from decimal import Decimal

from belvedere.examples.shop.app import app, order_events
from belvedere.examples.shop.contracts import OrderCancelled, OrderConfirmed, OrderPlaced

#: user id -> the amounts of their confirmed orders
revenue = app.view("revenue-per-user", value=Decimal)
#: placed (in flight) | confirmed | cancelled -> how many orders; one partition, so that
#: one event may move an order from one status to another
orders_per_status = app.view("orders-per-status", value=int, partitions=1)


#: card limit | out of stock | no answer -> how many orders were cancelled for it
cancelled_per_cause = app.view("cancelled-per-cause", value=int, partitions=1)


def cause(reason: str) -> str:
    """The cause of a cancellation, from the reason the service that refused gave
    (payments: over the card limit; inventory: fewer units left than wanted)."""
    if "card limit" in reason:
        return "card limit"
    if " left, " in reason:
        return "out of stock"
    return "no answer"


@app.projection(order_events, view=revenue, by="user_id")
def earn(view, event: OrderConfirmed) -> None:
    view[event.user_id] = view.get(event.user_id, Decimal(0)) + event.amount


@app.projection(order_events, view=orders_per_status, by=lambda event: "orders")
class Statuses:
    def placed(self, view, event: OrderPlaced) -> None:
        view["placed"] = view.get("placed", 0) + 1

    def confirmed(self, view, event: OrderConfirmed) -> None:
        view["placed"] = view.get("placed", 0) - 1
        view["confirmed"] = view.get("confirmed", 0) + 1

    def cancelled(self, view, event: OrderCancelled) -> None:
        view["placed"] = view.get("placed", 0) - 1
        view["cancelled"] = view.get("cancelled", 0) + 1


@app.projection(order_events, view=cancelled_per_cause, by=lambda event: cause(event.reason))
def count_cause(view, event: OrderCancelled) -> None:
    view[cause(event.reason)] = view.get(cause(event.reason), 0) + 1
