"""The shop: an order flow (orders, stock, payments, shipping, email), built with Belvedere.

    belvedere worker belvedere.examples.shop:app      # every service in one worker
    belvedere demo                          # the same, driven by generated orders

Services, one module each: ``orders`` (the Order aggregate, commanded over HTTP),
``inventory`` (stock, ReserveFailed when out of it), ``payments``, ``shipping``,
``fulfilment`` (the saga tying them together, with compensations), ``email`` (a
subscriber), ``analytics`` (revenue per user, orders per status). ``contracts`` holds
their events and commands, ``app`` the app and its topics.
"""

from belvedere.examples.shop import (
    analytics,
    email,
    fulfilment,
    inventory,
    orders,
    payments,
    shipping,
)
from belvedere.examples.shop.app import app

__all__ = ["analytics", "app", "email", "fulfilment", "inventory", "orders", "payments", "shipping"]

app.trace_flows()  # every topic above, for GET /trace/<order id>
