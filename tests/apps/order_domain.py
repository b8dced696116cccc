"""The order domain the command-side test apps share: events, commands, the aggregate."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import belvedere


class OrderCreated(belvedere.Event, key="order_id"):
    order_id: str
    user_id: str
    amount: Decimal
    sku: str = "sku-1"
    qty: int = 1


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
    sku: str = "sku-1"
    qty: int = 1


class OrderCancelled(belvedere.Event, key="order_id"):
    order_id: str
    reason: str


class CancelOrder(belvedere.Command, key="order_id"):
    order_id: str
    reason: str


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

    def cancelled(self, event: OrderCancelled) -> None:
        self.status = "cancelled"


class ReceiptSent(belvedere.Event, key="order_id"):
    order_id: str


# -- inventory: skus named held-* get no answer until a DenyStock --------------------------------


class StockReserved(belvedere.Event, key="sku"):
    sku: str
    order_id: str
    qty: int


class ReserveFailed(belvedere.Event, key="sku"):
    sku: str
    order_id: str
    reason: str


class StockReleased(belvedere.Event, key="sku"):
    sku: str
    order_id: str


class ReserveStock(belvedere.Command, key="sku"):
    sku: str
    order_id: str
    qty: int


class DenyStock(belvedere.Command, key="sku"):
    sku: str
    order_id: str


class ReleaseStock(belvedere.Command, key="sku"):
    sku: str
    order_id: str


class Stock(belvedere.Aggregate):
    reserved: dict[str, int] = dataclasses.field(default_factory=dict)

    def on_reserved(self, event: StockReserved) -> None:
        self.reserved = {**self.reserved, event.order_id: event.qty}

    def on_released(self, event: StockReleased) -> None:
        self.reserved = {k: v for k, v in self.reserved.items() if k != event.order_id}


# -- payments: over 100 held until an ApprovePayment ----------------------------------------------


class PaymentHeld(belvedere.Event, key="order_id"):
    order_id: str
    amount: Decimal


class PaymentCharged(belvedere.Event, key="order_id"):
    order_id: str
    amount: Decimal


class PaymentDeclined(belvedere.Event, key="order_id"):
    order_id: str
    reason: str


class PaymentRefunded(belvedere.Event, key="order_id"):
    order_id: str


class ChargePayment(belvedere.Command, key="order_id"):
    order_id: str
    amount: Decimal


class ApprovePayment(belvedere.Command, key="order_id"):
    order_id: str


class RefundPayment(belvedere.Command, key="order_id"):
    order_id: str


class Payment(belvedere.Aggregate):
    status: str = "none"
    amount: Decimal = Decimal(0)

    def held(self, event: PaymentHeld) -> None:
        self.status, self.amount = "held", event.amount

    def charged(self, event: PaymentCharged) -> None:
        self.status, self.amount = "charged", event.amount

    def refunded(self, event: PaymentRefunded) -> None:
        self.status = "refunded"
