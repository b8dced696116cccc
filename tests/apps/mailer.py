"""Another service, in its own app (its own consumer group): a reactor on the order desk's
events, which must see every payment whatever the desk's own reactors do."""

from __future__ import annotations

import os

import belvedere
from tests.apps.order_domain import NoteAdded, OrderCreated, OrderPaid, OrderShipped

NAME = os.environ["DESK_NAME"]

app = belvedere.App(f"{NAME}-mailer")
order_events = app.event_topic(
    f"{NAME}-order-events", OrderCreated, OrderPaid, OrderShipped, NoteAdded, partitions=4
)
mailed: list[str] = []


@app.reactor(OrderPaid)
def mail(event: OrderPaid) -> None:
    mailed.append(event.order_id)


@app.page("/state")
async def state(web, request):
    return web.json({"ready": app.ready, "mailed": mailed})
