"""The order service: an event-sourced Order, commanded over HTTP.

``POST /commands/PlaceOrder`` places one; the fulfilment saga then confirms or cancels it.
"""

from __future__ import annotations

from decimal import Decimal

import belvedere
from belvedere.examples.shop.app import app, order_commands, order_events
from belvedere.examples.shop.contracts import (
    CancelOrder,
    ConfirmOrder,
    OrderCancelled,
    OrderConfirmed,
    OrderPlaced,
    PlaceOrder,
)


class Order(belvedere.Aggregate):
    status: str = "new"
    user_id: str = ""
    sku: str = ""
    qty: int = 0
    amount: Decimal = Decimal(0)
    reason: str = ""

    def placed(self, event: OrderPlaced) -> None:
        self.status, self.user_id, self.sku = "placed", event.user_id, event.sku
        self.qty, self.amount = event.qty, event.amount

    def confirmed(self, event: OrderConfirmed) -> None:
        self.status = "confirmed"

    def cancelled(self, event: OrderCancelled) -> None:
        self.status, self.reason = "cancelled", event.reason


app.aggregate(Order, events=order_events, commands=order_commands)


@app.command_handler(Order)
def place(order: Order, command: PlaceOrder) -> OrderPlaced:
    if order.version:
        raise belvedere.Rejected(f"order {order.id} already exists")
    if command.qty < 1 or command.amount <= 0:
        raise belvedere.Rejected("an order needs a quantity and an amount above zero")
    return OrderPlaced(
        order_id=order.id,
        user_id=command.user_id,
        sku=command.sku,
        qty=command.qty,
        amount=command.amount,
    )


@app.command_handler(Order)
def confirm(order: Order, command: ConfirmOrder) -> OrderConfirmed:
    if order.status != "placed":
        raise belvedere.Rejected(f"order {order.id} is {order.status}")
    return OrderConfirmed(order_id=order.id, user_id=order.user_id, amount=order.amount)


@app.command_handler(Order)
def cancel(order: Order, command: CancelOrder) -> OrderCancelled:
    if order.status != "placed":
        raise belvedere.Rejected(f"order {order.id} is {order.status}")
    return OrderCancelled(order_id=order.id, user_id=order.user_id, reason=command.reason)
