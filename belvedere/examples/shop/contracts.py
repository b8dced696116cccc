"""The shop's events and commands: what its services say to each other, on the wire.

Each service owns its aggregate and its topics; the others only send it commands and read
its events. Every class here is a JSON envelope on a Kafka topic (see docs/events.md).
"""

from __future__ import annotations

from decimal import Decimal

import belvedere

# -- orders ------------------------------------------------------------------------------------


class PlaceOrder(belvedere.Command, key="order_id"):
    order_id: str
    user_id: str
    sku: str
    qty: int
    amount: Decimal


class ConfirmOrder(belvedere.Command, key="order_id"):
    order_id: str


class CancelOrder(belvedere.Command, key="order_id"):
    order_id: str
    reason: str


class OrderPlaced(belvedere.Event, key="order_id"):
    order_id: str
    user_id: str
    sku: str
    qty: int
    amount: Decimal


class OrderConfirmed(belvedere.Event, key="order_id"):
    order_id: str
    user_id: str
    amount: Decimal


class OrderCancelled(belvedere.Event, key="order_id"):
    order_id: str
    user_id: str
    reason: str


# -- inventory ---------------------------------------------------------------------------------


class ReserveStock(belvedere.Command, key="sku"):
    sku: str
    order_id: str
    qty: int


class ReleaseStock(belvedere.Command, key="sku"):
    sku: str
    order_id: str
    qty: int


class Restock(belvedere.Command, key="sku"):
    sku: str
    qty: int


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
    qty: int


class StockReplenished(belvedere.Event, key="sku"):
    sku: str
    qty: int


# -- payments ----------------------------------------------------------------------------------


class ChargePayment(belvedere.Command, key="order_id"):
    order_id: str
    user_id: str
    amount: Decimal


class RefundPayment(belvedere.Command, key="order_id"):
    order_id: str


class PaymentCharged(belvedere.Event, key="order_id"):
    order_id: str
    amount: Decimal


class PaymentDeclined(belvedere.Event, key="order_id"):
    order_id: str
    reason: str


class PaymentRefunded(belvedere.Event, key="order_id"):
    order_id: str
    amount: Decimal


# -- shipping ----------------------------------------------------------------------------------


class ShipOrder(belvedere.Command, key="order_id"):
    order_id: str
    sku: str
    qty: int


class OrderShipped(belvedere.Event, key="order_id"):
    order_id: str
    sku: str
    qty: int


# -- email -------------------------------------------------------------------------------------


class EmailSent(belvedere.Event, key="user_id"):
    user_id: str
    order_id: str
    subject: str
