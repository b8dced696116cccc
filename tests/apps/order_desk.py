"""The command-side tests' app: an Order aggregate, its command
handlers, a view folded from its events, and reactors to its payments (one of which
fails on orders whose id ends in ``-bad``).

``CRASH_AFTER_APPEND=N``: the worker exits hard right after its Nth append of events,
before the checkpoint that records them: the crash its restore must repair.
"""

from __future__ import annotations

import os

import belvedere
from belvedere.agents.commands import CommandProjection
from tests.apps.order_domain import (
    AddNote,
    ApprovePayment,
    CancelOrder,
    ChargePayment,
    CreateOrder,
    DenyStock,
    NoteAdded,
    Order,
    OrderCancelled,
    OrderCreated,
    OrderPaid,
    OrderShipped,
    Payment,
    PaymentCharged,
    PaymentDeclined,
    PaymentHeld,
    PaymentRefunded,
    PayOrder,
    ReceiptSent,
    RefundPayment,
    ReleaseStock,
    ReserveFailed,
    ReserveStock,
    ShipOrder,
    Stock,
    StockReleased,
    StockReserved,
)

NAME = os.environ["DESK_NAME"]

# Belvedere's default Kafka session (6 s): a worker killed by a test is noticed gone in seconds.
app = belvedere.App(NAME)


order_events = app.event_topic(
    f"{NAME}-order-events",
    OrderCreated, OrderPaid, OrderShipped, NoteAdded, OrderCancelled,
    partitions=4,
)  # fmt: skip
# A test writes commands to the command topic itself, as a retrying producer would.
order_commands = app.event_topic(
    f"{NAME}-order-commands",
    CreateOrder, PayOrder, ShipOrder, AddNote, CancelOrder,
    partitions=4,
    http_publish=[AddNote],
    http_publish_owned=True,
)  # fmt: skip
app.aggregate(Order, events=order_events, commands=order_commands)


@app.command_handler(Order)
def create(order: Order, command: CreateOrder) -> belvedere.Reply:
    if order.version:
        raise belvedere.Rejected(f"order {order.id} already exists")
    if command.amount <= 0:
        raise belvedere.Rejected("the amount must be positive")
    created = OrderCreated(
        order_id=order.id,
        user_id=command.user_id,
        amount=command.amount,
        sku=command.sku,
        qty=command.qty,
    )
    return belvedere.Reply(created, result={"orderId": order.id})


@app.command_handler(Order)
def pay(order: Order, command: PayOrder) -> OrderPaid:
    if order.status != "created":
        raise belvedere.Rejected(f"order {order.id} is {order.status}, not awaiting payment")
    return OrderPaid(order_id=order.id)


@app.command_handler(Order)
async def ship(order: Order, command: ShipOrder) -> list[belvedere.Event]:
    if order.status != "paid":
        raise belvedere.Rejected(f"order {order.id} is {order.status}, not paid")
    return [OrderShipped(order_id=order.id)]


@app.command_handler(Order)
def cancel(order: Order, command: CancelOrder) -> OrderCancelled:
    if order.status in ("new", "cancelled"):
        raise belvedere.Rejected(f"order {order.id} is {order.status}")
    return OrderCancelled(order_id=order.id, reason=command.reason)


@app.command_handler(Order)
def note(order: Order, command: AddNote) -> NoteAdded:
    if not order.version:
        raise belvedere.Rejected(f"no order {order.id}")
    return NoteAdded(order_id=order.id, text=command.text)


stock_events = app.event_topic(
    f"{NAME}-stock-events", StockReserved, ReserveFailed, StockReleased, partitions=4
)
stock_commands = app.event_topic(
    f"{NAME}-stock-commands", ReserveStock, DenyStock, ReleaseStock, partitions=4
)
app.aggregate(Stock, events=stock_events, commands=stock_commands)


@app.command_handler(Stock)
def reserve(stock: Stock, command: ReserveStock) -> StockReserved | None:
    if stock.id.startswith("held-"):
        return None  # the warehouse answers later (DenyStock)
    return StockReserved(sku=stock.id, order_id=command.order_id, qty=command.qty)


@app.command_handler(Stock)
def deny(stock: Stock, command: DenyStock) -> ReserveFailed:
    return ReserveFailed(sku=stock.id, order_id=command.order_id, reason="out of stock")


@app.command_handler(Stock)
def release(stock: Stock, command: ReleaseStock) -> StockReleased | None:
    if command.order_id not in stock.reserved:
        return None
    return StockReleased(sku=stock.id, order_id=command.order_id)


payment_events = app.event_topic(
    f"{NAME}-payment-events",
    PaymentHeld, PaymentCharged, PaymentDeclined, PaymentRefunded,
    partitions=4,
)  # fmt: skip
payment_commands = app.event_topic(
    f"{NAME}-payment-commands", ChargePayment, ApprovePayment, RefundPayment, partitions=4
)
app.aggregate(Payment, events=payment_events, commands=payment_commands)


@app.command_handler(Payment)
def charge(payment: Payment, command: ChargePayment) -> belvedere.Event:
    if command.amount > 100:
        return PaymentHeld(order_id=payment.id, amount=command.amount)  # for review
    return PaymentCharged(order_id=payment.id, amount=command.amount)


@app.command_handler(Payment)
def approve(payment: Payment, command: ApprovePayment) -> PaymentCharged:
    if payment.status != "held":
        raise belvedere.Rejected(f"payment {payment.id} is {payment.status}")
    return PaymentCharged(order_id=payment.id, amount=payment.amount)


@app.command_handler(Payment)
def refund(payment: Payment, command: RefundPayment) -> PaymentRefunded | None:
    return PaymentRefunded(order_id=payment.id) if payment.status == "charged" else None


notifications = app.event_topic(f"{NAME}-notifications", ReceiptSent, partitions=2)
#: Orders the analytics reactor saw paid, in order.
paid_seen: list[str] = []


@app.reactor(OrderPaid)
async def send_receipt(event: OrderPaid) -> None:
    await notifications.publish(ReceiptSent(order_id=event.order_id))


@app.reactor(OrderPaid)
def analytics(event: OrderPaid) -> None:
    paid_seen.append(event.order_id)


@app.reactor(OrderPaid)
def reserve_stock(event: OrderPaid) -> None:
    if event.order_id.endswith("-bad"):
        raise RuntimeError(f"no stock for {event.order_id}")


receipts = app.view("receipts", value=dict)


@app.projection(notifications, view=receipts)
def on_receipt(view, event: ReceiptSent) -> None:
    meta = event.meta
    view[event.order_id] = {"correlationId": meta.correlation_id, "causationId": meta.causation_id}


order_status = app.view("order-status", value=str)


@app.projection(order_events, view=order_status)
class OrderStatus:
    def created(self, view, event: OrderCreated) -> None:
        view[event.order_id] = "created"

    def paid(self, view, event: OrderPaid) -> None:
        view[event.order_id] = "paid"

    def shipped(self, view, event: OrderShipped) -> None:
        view[event.order_id] = "shipped"


if os.environ.get("CRASH_AFTER_APPEND"):
    _appends_left = int(os.environ["CRASH_AFTER_APPEND"])
    _append = CommandProjection.before_checkpoint

    async def _crash_after_append(self: CommandProjection, part) -> None:
        global _appends_left
        appending = bool(self._unsent.get(part.tp.partition))
        await _append(self, part)
        if appending:
            _appends_left -= 1
            if _appends_left <= 0:
                os._exit(9)

    CommandProjection.before_checkpoint = _crash_after_append


@app.page("/state")
async def state(web, request):
    return web.json(
        {
            "ready": app.ready,
            "paidSeen": paid_seen,
            "deadLetters": {
                f"{topic}:{kind}": n for (topic, kind), n in app.dead_letters.counts.items()
            },
        }
    )
