"""Payments: a charge over the card limit is declined."""

from __future__ import annotations

from decimal import Decimal

import belvedere
from belvedere.examples.shop.app import app, payment_commands, payment_events
from belvedere.examples.shop.contracts import (
    ChargePayment,
    PaymentCharged,
    PaymentDeclined,
    PaymentRefunded,
    RefundPayment,
)

CARD_LIMIT = Decimal(400)


class Payment(belvedere.Aggregate):
    status: str = "none"
    amount: Decimal = Decimal(0)

    def charged(self, event: PaymentCharged) -> None:
        self.status, self.amount = "charged", event.amount

    def declined(self, event: PaymentDeclined) -> None:
        self.status = "declined"

    def refunded(self, event: PaymentRefunded) -> None:
        self.status = "refunded"


app.aggregate(Payment, events=payment_events, commands=payment_commands)


@app.command_handler(Payment)
def charge(payment: Payment, command: ChargePayment) -> PaymentCharged | PaymentDeclined | None:
    if payment.status != "none":
        return None  # charged (or declined) once already
    if command.amount > CARD_LIMIT:
        return PaymentDeclined(order_id=payment.id, reason=f"over the card limit of {CARD_LIMIT}")
    return PaymentCharged(order_id=payment.id, amount=command.amount)


@app.command_handler(Payment)
def refund(payment: Payment, command: RefundPayment) -> PaymentRefunded | None:
    if payment.status != "charged":
        return None
    return PaymentRefunded(order_id=payment.id, amount=payment.amount)
