"""The app the event tests run as a worker: typed events through three agents.

orders --on_order--> invoices --on_invoice--> notifications --on_notification
Each agent records the envelope of what it handled, so tests can follow correlation and
causation from outside. ``ORDERS_KNOW_CANCELLED=1`` is "the fix": a version of the code
that knows the OrderCancelled event, for dead-letter replay tests.
"""

import os
from decimal import Decimal

import belvedere

NAME = os.environ["ORDERS_NAME"]
MAX_EVENT_BYTES = 4096

app = belvedere.App(NAME, max_event_bytes=MAX_EVENT_BYTES)


class Item(belvedere.Record):
    sku: str
    qty: int


class OrderCreated(belvedere.Event, version=2, key="order_id"):
    order_id: str
    user_id: str
    amount: Decimal
    items: list[Item] = ()


@belvedere.upcaster("OrderCreated", from_version=1)
def amount_from_cents(data: dict) -> dict:
    """v1 carried ``totalCents``; v2 carries ``amount`` as a decimal."""
    data = dict(data)
    data["amount"] = str(Decimal(data.pop("totalCents")) / 100)
    return data


class OrderPaid(belvedere.Event, key="order_id"):
    order_id: str


class InvoiceRequested(belvedere.Command, key="order_id"):
    order_id: str
    amount: Decimal


class InvoiceSent(belvedere.Event, key="order_id"):
    order_id: str


order_events: list[type[belvedere.Event]] = [OrderCreated, OrderPaid]

if os.environ.get("ORDERS_KNOW_CANCELLED"):

    class OrderCancelled(belvedere.Event, version=2, key="order_id"):
        order_id: str
        reason: str

    @belvedere.upcaster("OrderCancelled", from_version=1)
    def reason_unknown(data: dict) -> dict:
        return {**data, "reason": "unknown"}

    order_events.append(OrderCancelled)

orders = app.event_topic(f"{NAME}-orders", *order_events, partitions=4)
invoices = app.event_topic(f"{NAME}-invoices", InvoiceRequested, partitions=2)
notifications = app.event_topic(f"{NAME}-notifications", InvoiceSent, partitions=1)

seen = app.Table("seen", partitions=4)
trace: dict[str, list[dict]] = {}


def record(event: belvedere.Event) -> None:
    meta = event.meta
    trace.setdefault(event.order_id, []).append(
        {
            "type": meta.event_type,
            "version": meta.event_version,
            "eventId": meta.event_id,
            "correlationId": meta.correlation_id,
            "causationId": meta.causation_id,
            "producer": meta.producer,
            "timestamp": meta.timestamp.isoformat(),
            "data": event.to_data(),
        }
    )


@app.agent(orders)
async def on_order(stream):
    async for event in stream:
        seen[event.order_id] = [*(seen.get(event.order_id) or []), event.event_type]
        record(event)
        if isinstance(event, OrderCreated):
            await invoices.publish(InvoiceRequested(order_id=event.order_id, amount=event.amount))


@app.agent(invoices)
async def on_invoice(stream):
    async for command in stream:
        record(command)
        await notifications.publish(InvoiceSent(order_id=command.order_id))


@app.agent(notifications)
async def on_notification(stream):
    async for event in stream:
        record(event)


@app.page("/state")
async def state(web, request):
    return web.json(
        {
            "ready": app.ready,
            "seen": dict(seen.items()),
            "trace": trace,
            "deadLetters": {
                f"{topic}:{kind}": n for (topic, kind), n in app.dead_letters.counts.items()
            },
        }
    )
