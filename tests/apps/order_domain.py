"""The order domain the command-side test apps share: events, commands, the aggregate."""

from __future__ import annotations

from decimal import Decimal

import belvedere


class OrderCreated(belvedere.Event, key="order_id"):
    order_id: str
    user_id: str
    amount: Decimal


class OrderPaid(belvedere.Event, key="order_id"):
    order_id: str


class OrderShipped(belvedere.Event, key="order_id"):
    order_id: str


class NoteAdded(belvedere.Event, key="order_id"):
    order_id: str
    text: str


class CreateOrder(belvedere.Command, key="order_id"):
    order_id: str
    user_id: str
    amount: Decimal


class PayOrder(belvedere.Command, key="order_id"):
    order_id: str


class ShipOrder(belvedere.Command, key="order_id"):
    order_id: str


class AddNote(belvedere.Command, key="order_id"):
    order_id: str
    text: str


class Order(belvedere.Aggregate):
    status: str = "new"
    amount: Decimal = Decimal(0)
    user_id: str = ""
    notes: int = 0

    def created(self, event: OrderCreated) -> None:
        self.status, self.amount, self.user_id = "created", event.amount, event.user_id

    def paid(self, event: OrderPaid) -> None:
        self.status = "paid"

    def shipped(self, event: OrderShipped) -> None:
        self.status = "shipped"

    def noted(self, event: NoteAdded) -> None:
        self.notes += 1


class ReceiptSent(belvedere.Event, key="order_id"):
    order_id: str
