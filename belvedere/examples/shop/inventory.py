"""Inventory: units in stock per SKU. A reservation beyond what is left is a ReserveFailed
event (a fact the fulfilment saga compensates for), not a rejected command."""

from __future__ import annotations

import belvedere
from belvedere.examples.shop.app import app, stock_commands, stock_events
from belvedere.examples.shop.contracts import (
    ReleaseStock,
    ReserveFailed,
    ReserveStock,
    Restock,
    StockReleased,
    StockReplenished,
    StockReserved,
)

#: Units of each SKU in stock before its first event.
INITIAL_STOCK = 10


class Stock(belvedere.Aggregate):
    on_hand: int = INITIAL_STOCK

    def reserved(self, event: StockReserved) -> None:
        self.on_hand -= event.qty

    def released(self, event: StockReleased) -> None:
        self.on_hand += event.qty

    def replenished(self, event: StockReplenished) -> None:
        self.on_hand += event.qty


app.aggregate(Stock, events=stock_events, commands=stock_commands)


@app.command_handler(Stock)
def reserve(stock: Stock, command: ReserveStock) -> StockReserved | ReserveFailed:
    if command.qty > stock.on_hand:
        reason = f"{stock.on_hand} of {stock.id} left, {command.qty} wanted"
        return ReserveFailed(sku=stock.id, order_id=command.order_id, reason=reason)
    return StockReserved(sku=stock.id, order_id=command.order_id, qty=command.qty)


@app.command_handler(Stock)
def release(stock: Stock, command: ReleaseStock) -> StockReleased:
    return StockReleased(sku=stock.id, order_id=command.order_id, qty=command.qty)


@app.command_handler(Stock)
def restock(stock: Stock, command: Restock) -> StockReplenished:
    if command.qty < 1:
        raise belvedere.Rejected("restock at least one unit")
    return StockReplenished(sku=stock.id, qty=command.qty)
