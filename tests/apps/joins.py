"""The app the join tests run as a worker: orders enriched from a lookup and a global view.

``customers`` is a plain view (a customer's name); ``totals`` folds orders by customer and
looks the customer up in it (``reads=``: a lookup join, co-partitioned when both topics
have the same partition count). ``prices`` is a global view, the latest price per product
of its 3-partition topic, read by ``totals`` under any product. ``price_changes`` is a
global view with a fold handler (how many prices each product had). ``sneaky`` reads
``customers`` without declaring it: each such read is dead-lettered ``undeclared-read``.

``JOINS_FOLD_DELAY`` slows ``price-changes`` down. ``JOINS_CUSTOMER_PARTITIONS`` (default 4, as orders) makes the lookup's co-partitioning
mistake when set otherwise.
"""

import asyncio
import os

import belvedere
from tests.apps.joins_events import CustomerNamed, OrderPlaced, PriceSet

NAME = os.environ["JOINS_NAME"]
CUSTOMER_PARTITIONS = int(os.environ.get("JOINS_CUSTOMER_PARTITIONS", "4"))
#: Seconds the fold into ``price-changes`` takes per event (a slow catch-up, to watch).
FOLD_DELAY = float(os.environ.get("JOINS_FOLD_DELAY", "0"))

app = belvedere.App(NAME, checkpoint_interval=0.2)


class Total(belvedere.Record):
    name: str
    spent: int
    orders: int


customer_events = app.event_topic(
    f"{NAME}-customers", CustomerNamed, partitions=CUSTOMER_PARTITIONS, http_publish=True
)
orders = app.event_topic(f"{NAME}-orders", OrderPlaced, partitions=4, http_publish=True)
price_events = app.event_topic(f"{NAME}-prices", PriceSet, partitions=3, http_publish=True)

customers = app.view("customers", value=str)
totals = app.view("totals", value=Total)
sneaky = app.view("sneaky", value=str)
unfilled = app.view("unfilled", value=int)  # no projection fills it: nothing to rebuild
prices = app.global_view("prices", topic=price_events, value=PriceSet)
price_changes = app.global_view("price-changes", topic=price_events, value=int)


@app.projection(customer_events, view=customers)
def named(view, event: CustomerNamed) -> None:
    view[event.customer_id] = event.name


@app.projection(orders, view=totals, reads=[customers])
def placed(view, event: OrderPlaced) -> None:
    price = prices.get(event.product_id)
    if price is None:
        raise LookupError(f"no price for {event.product_id}")
    before = view.get(event.customer_id) or Total(name="", spent=0, orders=0)
    view[event.customer_id] = Total(
        name=customers.get(event.customer_id, ""),
        spent=before.spent + price.price * event.quantity,
        orders=before.orders + 1,
    )


@app.projection(orders, view=sneaky)
def peeked(view, event: OrderPlaced) -> None:
    view[event.customer_id] = customers.get(event.customer_id, "")


@app.projection(price_events, view=price_changes)
async def changed(view, event: PriceSet) -> None:
    if FOLD_DELAY:
        await asyncio.sleep(FOLD_DELAY)
    view[event.product_id] = view.get(event.product_id, 0) + 1
