"""The shop's app and topics: one worker process runs every service, and more workers on
Kafka share the partitions. Split it into one app per service by giving each its own
``belvedere.App``: the topics are the only coupling."""

from __future__ import annotations

import os

import belvedere
from belvedere.examples.shop.contracts import (
    CancelOrder,
    ChargePayment,
    ConfirmOrder,
    EmailSent,
    OrderCancelled,
    OrderConfirmed,
    OrderPlaced,
    OrderShipped,
    PaymentCharged,
    PaymentDeclined,
    PaymentRefunded,
    PlaceOrder,
    RefundPayment,
    ReleaseStock,
    ReserveFailed,
    ReserveStock,
    Restock,
    ShipOrder,
    StockReleased,
    StockReplenished,
    StockReserved,
)

#: ``SHOP_NAME`` runs a second shop beside the first on one Kafka (the tests do).
NAME = os.environ.get("SHOP_NAME", "shop")
app = belvedere.App(NAME)

PARTITIONS = 4


def topic(name: str, *types: type[belvedere.Event]) -> belvedere.EventTopic:
    return app.event_topic(f"{NAME}-{name}", *types, partitions=PARTITIONS)


order_commands = topic("order-commands", PlaceOrder, ConfirmOrder, CancelOrder)
order_events = topic("order-events", OrderPlaced, OrderConfirmed, OrderCancelled)
stock_commands = topic("stock-commands", ReserveStock, ReleaseStock, Restock)
stock_events = topic("stock-events", StockReserved, ReserveFailed, StockReleased, StockReplenished)
payment_commands = topic("payment-commands", ChargePayment, RefundPayment)
payment_events = topic("payment-events", PaymentCharged, PaymentDeclined, PaymentRefunded)
shipping_commands = topic("shipping-commands", ShipOrder)
shipping_events = topic("shipping-events", OrderShipped)
emails = topic("emails", EmailSent)
