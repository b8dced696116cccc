"""The fulfilment saga: reserve the stock, charge the payment, ship, confirm the order.

A ReserveFailed or a PaymentDeclined (or no answer from payments within 30 s) runs the
compensations of what was done, newest first (refund, release the stock), then cancels
the order. ``GET /sagas/fulfilment/<order id>`` shows where an order's saga is.
"""

from __future__ import annotations

import belvedere
from belvedere.examples.shop.app import app
from belvedere.examples.shop.contracts import (
    CancelOrder,
    ChargePayment,
    ConfirmOrder,
    OrderConfirmed,
    OrderPlaced,
    OrderShipped,
    PaymentCharged,
    PaymentDeclined,
    RefundPayment,
    ReleaseStock,
    ReserveFailed,
    ReserveStock,
    ShipOrder,
    StockReserved,
)


def placed(saga: belvedere.SagaState) -> OrderPlaced:
    return saga.start  # type: ignore[return-value]


def why(saga: belvedere.SagaState) -> str:
    failure = saga.failure
    return "payments did not answer" if failure is None else failure.reason  # type: ignore[attr-defined]


app.saga(
    "fulfilment",
    start=OrderPlaced,
    steps=[
        belvedere.Step(
            "reserve",
            command=lambda s: ReserveStock(
                sku=placed(s).sku, order_id=placed(s).order_id, qty=placed(s).qty
            ),
            done=StockReserved,
            failed=ReserveFailed,
            compensate=lambda s: ReleaseStock(
                sku=placed(s).sku, order_id=placed(s).order_id, qty=placed(s).qty
            ),
        ),
        belvedere.Step(
            "charge",
            command=lambda s: ChargePayment(
                order_id=placed(s).order_id, user_id=placed(s).user_id, amount=placed(s).amount
            ),
            done=PaymentCharged,
            failed=PaymentDeclined,
            compensate=lambda s: RefundPayment(order_id=placed(s).order_id),
            timeout=30.0,
        ),
        belvedere.Step(
            "ship",
            command=lambda s: ShipOrder(
                order_id=placed(s).order_id, sku=placed(s).sku, qty=placed(s).qty
            ),
            done=OrderShipped,
        ),
        belvedere.Step(
            "confirm",
            command=lambda s: ConfirmOrder(order_id=placed(s).order_id),
            done=OrderConfirmed,
        ),
    ],
    on_failure=lambda s: CancelOrder(order_id=placed(s).order_id, reason=why(s)),
)
