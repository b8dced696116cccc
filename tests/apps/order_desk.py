"""The command-side tests' app: the source material's Order aggregate, its command
handlers, and a view folded from its events.

``CRASH_AFTER_APPEND=N``: the worker exits hard right after its Nth append of events,
before the checkpoint that records them: the crash its restore must repair.
"""

from __future__ import annotations

import os
from decimal import Decimal

import belvedere
from belvedere.agents.commands import CommandProjection

NAME = os.environ["DESK_NAME"]

# A short session, so that a worker killed by a test is noticed gone in seconds.
app = belvedere.App(NAME, broker_session_timeout=6.0, broker_heartbeat_interval=1.0)


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


order_events = app.event_topic(
    f"{NAME}-order-events", OrderCreated, OrderPaid, OrderShipped, NoteAdded, partitions=4
)
order_commands = app.event_topic(
    f"{NAME}-order-commands", CreateOrder, PayOrder, ShipOrder, AddNote, partitions=4
)
app.aggregate(Order, events=order_events, commands=order_commands)


@app.command_handler(Order)
def create(order: Order, command: CreateOrder) -> belvedere.Reply:
    if order.version:
        raise belvedere.Rejected(f"order {order.id} already exists")
    if command.amount <= 0:
        raise belvedere.Rejected("the amount must be positive")
    created = OrderCreated(order_id=order.id, user_id=command.user_id, amount=command.amount)
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
def note(order: Order, command: AddNote) -> NoteAdded:
    if not order.version:
        raise belvedere.Rejected(f"no order {order.id}")
    return NoteAdded(order_id=order.id, text=command.text)


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
    return web.json({"ready": app.ready})
