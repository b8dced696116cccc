"""The app the foreign-producer tests run as a worker: events written by clients that are
not Belvedere (kcat, librdkafka's producers, an envelope as other frameworks write it).

Three topics carry one order event, each declaring how its producers hash keys:
``orders`` murmur2 (Kafka's default), ``crc-orders`` crc32 (librdkafka's default) and
``any-orders`` any (re-keyed before folding). Each is folded into a view keyed by order
id that records the version as read and as written. ``FOREIGN_FIXED=1`` is "the fix": code
that knows the OrderNoted event, for dead-letter replay.
"""

import os
from decimal import Decimal

import belvedere

NAME = os.environ["FOREIGN_NAME"]
PARTITIONS = 4

app = belvedere.App(NAME, checkpoint_interval=0.1)


class OrderCreated(belvedere.Event, version=2, key="order_id"):
    order_id: str
    user_id: str
    amount: Decimal


@belvedere.upcaster("OrderCreated", from_version=1)
def amount_from_cents(data: dict) -> dict:
    """v1 carried ``totalCents``; v2 carries ``amount`` as a decimal."""
    data = dict(data)
    data["amount"] = str(Decimal(data.pop("totalCents")) / 100)
    return data


order_events: list[type[belvedere.Event]] = [OrderCreated]

if os.environ.get("FOREIGN_FIXED"):

    class OrderNoted(belvedere.Event, key="order_id"):
        order_id: str
        text: str

    order_events.append(OrderNoted)

orders = app.event_topic(f"{NAME}-orders", *order_events, partitions=PARTITIONS, http_publish=True)
crc_orders = app.event_topic(
    f"{NAME}-crc-orders", OrderCreated, partitions=PARTITIONS, partitioner="crc32"
)
any_orders = app.event_topic(
    f"{NAME}-any-orders", OrderCreated, partitions=PARTITIONS, partitioner="any"
)
views = {
    "orders": (orders, app.view("orders", value=dict)),
    "crc-orders": (crc_orders, app.view("crc-orders", value=dict)),
    "any-orders": (any_orders, app.view("any-orders", value=dict)),
}


def created(view, event: OrderCreated) -> None:
    meta = event.meta
    view[event.order_id] = {
        "amount": str(event.amount),
        "version": meta.event_version,
        "written": meta.written_version,
        "eventId": meta.event_id,
    }


for topic, view in views.values():
    app.projection(topic, view=view)(created)


@app.page("/state")
async def state(web, request):
    serving = [s.state == "serving" for v in app.views.values() for s in v.status.values()]
    if not app.ready or not all(serving):
        return web.json({"ready": False}, status=503)
    return web.json(
        {
            "ready": True,
            "views": {name: dict(view.scan(limit=100_000)[0]) for name, (_, view) in views.items()},
            "deadLetters": {
                f"{topic}:{kind}": n for (topic, kind), n in app.dead_letters.counts.items()
            },
        }
    )
