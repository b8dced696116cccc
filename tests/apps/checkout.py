"""The order desk with the checkout saga: reserve stock, charge the payment (``CHARGE_TIMEOUT``
seconds at most), confirm the order; on a failure, compensate and cancel the order."""

from __future__ import annotations

import os

import belvedere
from tests.apps.order_desk import app
from tests.apps.order_domain import (
    CancelOrder,
    ChargePayment,
    OrderCreated,
    OrderPaid,
    PaymentCharged,
    PaymentDeclined,
    PayOrder,
    RefundPayment,
    ReleaseStock,
    ReserveFailed,
    ReserveStock,
    StockReserved,
)

__all__ = ["app"]

app.saga(
    "checkout",
    start=OrderCreated,
    steps=[
        belvedere.Step(
            "reserve",
            command=lambda s: ReserveStock(
                sku=s.start.sku, order_id=s.start.order_id, qty=s.start.qty
            ),
            done=StockReserved,
            failed=ReserveFailed,
            compensate=lambda s: ReleaseStock(sku=s.start.sku, order_id=s.start.order_id),
        ),
        belvedere.Step(
            "charge",
            command=lambda s: ChargePayment(order_id=s.start.order_id, amount=s.start.amount),
            done=PaymentCharged,
            failed=PaymentDeclined,
            compensate=lambda s: RefundPayment(order_id=s.start.order_id),
            timeout=float(os.environ.get("CHARGE_TIMEOUT", "120")),
        ),
        belvedere.Step(
            "confirm", command=lambda s: PayOrder(order_id=s.start.order_id), done=OrderPaid
        ),
    ],
    on_failure=lambda s: CancelOrder(order_id=s.start.order_id, reason="checkout failed"),
)

app.trace_flows()  # every topic declared above, for GET /trace/{correlationId}
