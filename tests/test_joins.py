"""Joins (tests/apps/joins.py): a lookup of a co-partitioned view, global views on every
worker (two on Kafka), their restart, and the co-partitioning mistake refused at start."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import pytest

import belvedere
from belvedere.agents.engine import NotCoPartitioned
from belvedere.streams.clients import NewRecord
from belvedere.streams.partitioner import partition_for_key
from belvedere.testing import TestDriver
from tests.apps.joins_events import CustomerNamed, OrderPlaced, PriceSet
from tests.support.brokers import Broker
from tests.support.http import call
from tests.support.worker import Worker, run_cli, wait_for

APP = "tests.apps.joins:app"


def partition(key: str) -> int:
    return partition_for_key(key.encode(), 4)


def post(worker: Worker, topic: str, event_type: str, events: list[dict[str, Any]]) -> None:
    body = [{"eventType": event_type, "eventVersion": 1, "data": data} for data in events]
    answer = call(f"{worker.url}/events/{topic}", "POST", body)
    assert answer.status == 201, answer.raw


def rows(worker: Worker, view: str, keys: list[str]) -> dict[str, Any]:
    """Each key's row as this worker answers it (global views: from its own copy)."""
    found = {}
    for key in keys:
        answer = call(f"{worker.url}/views/{view}/{key}")
        if answer.status == 200:
            found[key] = answer.body
    return found


def wait_rows(worker: Worker, view: str, expected: dict[str, Any], what: str) -> None:
    try:
        wait_for(
            lambda: rows(worker, view, list(expected)) == expected,
            timeout=60,
            what=f"{what} on {worker.url}",
        )
    except AssertionError:
        got = rows(worker, view, list(expected))
        wrong = {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
        raise AssertionError(f"{what}: (got, expected) {wrong}\n{worker.log_tail()}") from None


def ready(worker: Worker) -> None:
    worker.wait_until("/ready", lambda body: body.get("ready") is True, what="ready")


class Market:
    """Prices, customers and orders posted, and what the views must hold, computed here."""

    def __init__(self, name: str, seed: int) -> None:
        self.name = name
        self.rng = random.Random(seed)
        self.prices: dict[str, dict[str, Any]] = {}
        self.changes: dict[str, int] = {}
        self.names: dict[str, str] = {}
        self.totals: dict[str, dict[str, Any]] = {}

    def new_prices(self, n: int, products: int) -> list[dict[str, Any]]:
        events = []
        for _ in range(n):
            product = f"p{self.rng.randrange(products)}"
            event = {"productId": product, "price": self.rng.randrange(1, 1000)}
            events.append(event)
            self.prices[product] = event  # one key's events stay in order (one partition)
            self.changes[product] = self.changes.get(product, 0) + 1
        return events

    def set_prices(self, worker: Worker, n: int, products: int) -> None:
        post(worker, f"{self.name}-prices", "PriceSet", self.new_prices(n, products))

    def produce_prices(self, broker: Broker, n: int, products: int) -> None:
        """Straight to the topic, with no worker up."""
        records = []
        for i, data in enumerate(self.new_prices(n, products)):
            envelope = {"eventId": f"{self.name}-{i}", "eventType": "PriceSet", "eventVersion": 1, "data": data}  # fmt: skip
            records.append(NewRecord(data["productId"].encode(), orjson.dumps(envelope), 0))
        broker.produce(f"{self.name}-prices", records)

    def name_customers(self, worker: Worker, n: int) -> None:
        events = [{"customerId": f"c{i}", "name": f"customer {i}"} for i in range(n)]
        self.names.update({e["customerId"]: e["name"] for e in events})
        post(worker, f"{self.name}-customers", "CustomerNamed", events)

    def place_orders(self, worker: Worker, n: int) -> None:
        events = []
        for _ in range(n):
            customer = self.rng.choice(sorted(self.names))
            product = self.rng.choice(sorted(self.prices))
            quantity = self.rng.randrange(1, 5)
            events.append(
                {
                    "orderId": f"o{self.rng.getrandbits(40)}",
                    "customerId": customer,
                    "productId": product,
                    "quantity": quantity,
                }
            )
            before = self.totals.get(customer, {"name": self.names[customer], "spent": 0, "orders": 0})  # fmt: skip
            self.totals[customer] = {
                "name": before["name"],
                "spent": before["spent"] + self.prices[product]["price"] * quantity,
                "orders": before["orders"] + 1,
            }
        post(worker, f"{self.name}-orders", "OrderPlaced", events)

    def check_global(self, worker: Worker, what: str) -> None:
        wait_rows(worker, "prices", self.prices, f"prices ({what})")
        wait_rows(worker, "price-changes", self.changes, f"price-changes ({what})")
        scanned = call(f"{worker.url}/views/prices?limit=1000").body["rows"]
        assert scanned == [{"key": k, "value": self.prices[k]} for k in sorted(self.prices)]


def test_lookup_and_global_views(
    broker: Broker, workers: Callable[..., Worker], unique_name: str
) -> None:
    env = {"JOINS_NAME": unique_name}
    count = 2 if broker.name == "kafka" else 1  # the embedded broker's group has one member
    running = [workers(APP, env, data_dir=f"data-{i}").start() for i in range(count)]
    for worker in running:
        ready(worker)
    first, last = running[0], running[-1]
    market = Market(unique_name, seed=21)

    market.set_prices(first, 120, products=15)
    for worker in running:  # each reads every partition of the topic into its own copy
        market.check_global(worker, "first prices")
        views = {v["name"]: v for v in worker.get("/views")["views"]}
        assert views["prices"]["partitionCount"] == 1
        assert views["prices"]["lag"] == 0  # what the status page shows
        assert views["prices"]["sourceTopics"] == [f"{unique_name}-prices"]
    # each worker folds its own copy of a global view; no projection fills "unfilled"
    for name, method, status in [
        (name, method, status)
        for name in ("prices", "unfilled")
        for method, status in (("GET", 404), ("POST", 400))
    ]:
        answer = call(f"{first.url}/views/{name}/rebuild", method, {} if method == "POST" else None)
        assert (answer.status, answer.body["error"]) == (status, "not-rebuildable"), answer.raw
    market.name_customers(last, 12)
    wait_rows(first, "customers", market.names, "customers")

    # Enrichment: each order folded on the worker owning its customer's partition, reading
    # the customer there (a lookup) and the product's price from that worker's global copy.
    market.place_orders(first, 150)
    wait_rows(first, "totals", market.totals, "totals")
    if count > 1:
        views = {v["name"]: v for v in first.get("/views")["views"]}
        owners = {p["worker"] for p in views["totals"]["partitions"].values()}
        assert owners == {w.url for w in running}, "both workers fold orders"

    market.set_prices(last, 30, products=15)  # updated live
    for worker in running:
        market.check_global(worker, "prices updated")
    market.place_orders(last, 60)
    wait_rows(last, "totals", market.totals, "totals at the new prices")

    # Reading a view not declared in reads= is refused, each time, as a dead letter.
    def sneaky_kinds() -> Any:
        kinds = {v["name"]: v for v in first.get("/views")["views"]}["sneaky"]["deadLetters"]
        return kinds if kinds["total"] == 210 else None

    assert wait_for(sneaky_kinds, timeout=60, what="sneaky's dead letters")["kinds"] == {
        "undeclared-read": 210
    }
    assert rows(first, "sneaky", sorted(market.names)) == {}

    # A worker killed, even in the middle of catching up, resumes its copies from their
    # stored offsets (a fold applied twice would show in price-changes), and is ready only
    # once caught up: what came while it was down is there as soon as it says so.
    for worker in running:
        worker.kill()
    market.produce_prices(broker, 2000, products=15)
    first.env["JOINS_FOLD_DELAY"] = "0.001"  # a catch-up of seconds, while it could serve
    first.start()

    def catching_up() -> tuple[int, int] | None:  # price-changes: records read, and lag
        body = first.get("/views")
        views = {v["name"]: v for v in body["views"]} if body else {}
        part = views.get("price-changes", {}).get("partitions", {}).get("0")
        return (part["restore"]["done"], part["lag"]) if part else None

    wait_for(lambda: (catching_up() or (0, 0))[0] >= 300, timeout=60, what="a catch-up")
    assert catching_up()[1] > 0  # on the status page
    first.kill()  # mid-way
    first.start()
    ready(first)
    assert rows(first, "prices", list(market.prices)) == market.prices
    assert rows(first, "price-changes", list(market.changes)) == market.changes
    for worker in running[1:]:
        worker.start()
        ready(worker)
    market.set_prices(first, 20, products=15)
    for worker in running:
        market.check_global(worker, "prices after the restart")


def test_co_partitioning_mistake_ends_the_worker_in_one_line(
    broker: Broker, unique_name: str, tmp_path: Any
) -> None:
    partitions = "3"
    done = run_cli(
        "worker",
        APP,
        "--broker",
        broker.url,
        "--data-dir",
        str(tmp_path / "data"),
        env={"JOINS_NAME": unique_name, "JOINS_CUSTOMER_PARTITIONS": partitions},
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"belvedere: {APP}: view 'totals' reads view 'customers', which is not co-partitioned "
        f"with its source: '{unique_name}-orders' has 4 partition(s) hashed by murmur2, view "
        f"'customers' has {partitions} hashed by murmur2; give both sources the same partition "
        "count and partitioner, or make 'customers' a global view"
    ]


def test_check_refuses_a_lookup_hashed_otherwise_and_lets_global_views_be(tmp_path: Any) -> None:
    """The keys of a crc32 topic land elsewhere than murmur2 ones, even with as many
    partitions; a global view is on every worker, so it needs no co-partitioning."""
    app = belvedere.App("joins-check", data_dir=tmp_path / "data")
    orders = app.event_topic("orders", OrderPlaced, partitions=4)
    named = app.event_topic("names", CustomerNamed, partitions=4, partitioner="crc32")
    price_events = app.event_topic("prices", PriceSet, partitions=3)
    customers = app.view("customers", value=str)
    totals = app.view("totals", value=int)
    prices = app.global_view("prices", topic=price_events, value=PriceSet)

    @app.projection(named, view=customers)
    def name(view, event: CustomerNamed) -> None:
        view[event.customer_id] = event.name

    @app.projection(orders, view=totals, reads=[customers, prices])
    def placed(view, event: OrderPlaced) -> None:
        view[event.customer_id] = event.quantity

    refused = "'orders' has 4 partition.* murmur2, view 'customers' has 4 hashed by crc32"
    with pytest.raises(NotCoPartitioned, match=refused):
        app.check()

    fine = belvedere.App("joins-check-global", data_dir=tmp_path / "fine")
    fine_orders = fine.event_topic("orders", OrderPlaced, partitions=4)
    fine_prices = fine.event_topic("prices", PriceSet, partitions=3)
    fine_global = fine.global_view("prices", topic=fine_prices, value=PriceSet)
    fine_totals = fine.view("totals", value=int)
    fine.projection(fine_orders, view=fine_totals, reads=[fine_global])(placed)
    fine.check()
    with pytest.raises(TypeError, match="by= and reads= do not apply"):
        fine.projection(fine_prices, view=fine_global, reads=[fine_totals])


def test_the_test_driver_reads_global_views_before_each_fold(tmp_path: Any) -> None:
    """In process: the prices sent in the same run as the orders are in the global view
    before any order is folded. A read not declared is dead-lettered, and so is a lookup
    of a key another partition holds (here only by chance)."""
    app = belvedere.App("joins-driver", data_dir=tmp_path / "data")
    orders = app.event_topic("orders", OrderPlaced, partitions=4)
    price_events = app.event_topic("prices", PriceSet, partitions=3)
    prices = app.global_view("prices", topic=price_events, value=PriceSet)
    spent = app.view("spent", value=int)
    other = app.view("other", value=int)
    by_product = app.view("by-product", value=int)

    @app.projection(orders, view=spent)
    def placed(view, event: OrderPlaced) -> None:
        price = prices.get(event.product_id).price
        view[event.customer_id] = view.get(event.customer_id, 0) + price * event.quantity

    @app.projection(orders, view=other)
    def peeked(view, event: OrderPlaced) -> None:
        view[event.customer_id] = spent.get(event.customer_id, 0)

    @app.projection(orders, view=by_product, reads=[spent])
    def looked_up(view, event: OrderPlaced) -> None:  # not by the key orders are keyed by
        view[event.customer_id] = spent.get(event.product_id, 0)

    rng = random.Random(7)
    latest: dict[str, int] = {}
    expected: dict[str, int] = {}
    placed_orders: list[tuple[str, str]] = []
    with TestDriver(app, data_dir=tmp_path / "driver") as driver:
        for i in range(40):
            product, price = f"p{i % 6}", rng.randrange(1, 100)
            driver.send(price_events, PriceSet(product_id=product, price=price))
            latest[product] = price
        for i in range(50):
            customer, product = f"c{i % 7}", f"p{rng.randrange(6)}"
            driver.send(orders, OrderPlaced(order_id=f"o{i}", customer_id=customer, product_id=product, quantity=2))  # fmt: skip
            expected[customer] = expected.get(customer, 0) + latest[product] * 2
            placed_orders.append((customer, product))
        driver.run()
        assert driver.rows(prices) == {
            k: PriceSet(product_id=k, price=v) for k, v in latest.items()
        }
        assert driver.rows(spent) == expected
        assert driver.rows(other) == {}
        kinds = Counter((d.view, d.kind) for d in driver.dead_letters())
    elsewhere = sum(partition(c) != partition(p) for c, p in placed_orders)
    assert 0 < elsewhere < 50
    assert kinds == {("other", "undeclared-read"): 50, ("by-product", "wrong-partition"): elsewhere}
