"""Shipping: one shipment per order."""

from __future__ import annotations

import belvedere
from belvedere.examples.shop.app import app, shipping_commands, shipping_events
from belvedere.examples.shop.contracts import OrderShipped, ShipOrder


class Shipment(belvedere.Aggregate):
    shipped: bool = False

    def done(self, event: OrderShipped) -> None:
        self.shipped = True


app.aggregate(Shipment, events=shipping_events, commands=shipping_commands)


@app.command_handler(Shipment)
def ship(shipment: Shipment, command: ShipOrder) -> OrderShipped | None:
    if shipment.shipped:
        return None
    return OrderShipped(order_id=shipment.id, sku=command.sku, qty=command.qty)
