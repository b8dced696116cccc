"""The events of tests/apps/joins.py, importable without its environment."""

import belvedere


class CustomerNamed(belvedere.Event, key="customer_id"):
    customer_id: str
    name: str


class OrderPlaced(belvedere.Event, key="customer_id"):
    order_id: str
    customer_id: str
    product_id: str
    quantity: int


class PriceSet(belvedere.Event, key="product_id"):
    product_id: str
    price: int
