"""``@app.agent`` and ``app.Table`` on the engine (tests/apps/revenue.py), on both brokers:
the README's example, stream.items()/values/events(), tables over HTTP (``/views``, key
reads, scans, the change feed), rebuild and reset, and what goes to the dead letters."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
from collections import Counter
from collections.abc import Callable

import orjson
import pytest

import belvedere
from belvedere.agents.driven import AgentEnded, AgentProjection
from belvedere.streams.partitioner import partition_for_key
from belvedere.tables.table import Table, TableWriteOutsideAgent
from belvedere.testing import TestDriver
from tests.support.brokers import Broker
from tests.support.http import EventStream
from tests.support.worker import Worker, run_cli, wait_for

APP = "tests.apps.revenue:app"


@pytest.fixture
def shop(broker: Broker, workers: Callable[..., Worker], unique_name: str) -> Worker:
    for topic, partitions in (("orders", 4), ("audit", 2), ("echoes", 2), ("legacy", 2)):
        broker.create_topic(f"{unique_name}-{topic}", partitions)
    return workers(APP, {"REVENUE_NAME": unique_name})


def orders(count: int, users: int = 50, start: int = 0) -> tuple[list, Counter]:
    """``count`` orders over ``users`` users, amounts 1..7; and each user's total."""
    records, totals = [], Counter()
    for i in range(start, start + count):
        user, amount = f"user-{i * 7 % users}", i % 7 + 1
        records.append((user.encode(), orjson.dumps({"amount": amount})))
        totals[user] += amount
    return records, totals


def revenue(worker: Worker) -> dict[str, float]:
    rows, after = {}, ""
    while True:
        page = worker.get(f"/views/revenue?limit=1000{after}")
        assert page is not None
        rows.update((row["key"], row["value"]) for row in page["rows"])
        if not page["next"]:
            return rows
        after = f"&after={page['next']}"


def by_amount(count: int, start: int = 0) -> dict[str, int]:
    """How many of ``orders(count, start=start)`` have each amount."""
    return dict(Counter(str(i % 7 + 1) for i in range(start, start + count)))


def scan(worker: Worker, view: str) -> dict:
    page = worker.get(f"/views/{view}?limit=1000")
    return {} if page is None else {row["key"]: row["value"] for row in page["rows"]}


def by_name(body: dict) -> dict:
    return {view["name"]: view for view in body["views"]}


def folded(count: int) -> Callable[[dict], bool]:
    """``/views`` says revenue has folded ``count`` events."""
    return lambda body: by_name(body)["revenue"]["eventsProcessed"] >= count


def test_the_readme_example_totals_exactly_and_its_table_is_served(
    broker: Broker, shop: Worker, unique_name: str
) -> None:
    records, totals = orders(3_000)
    broker.produce(f"{unique_name}-orders", records)
    shop.start()
    views = by_name(shop.wait_until("/views", folded(3_000), what="3,000 orders"))
    assert views["revenue"]["keys"] == 50 and not views["revenue"]["internal"]
    assert revenue(shop) == {user: float(total) for user, total in totals.items()}
    assert shop.get("/views/revenue/user-7") == totals["user-7"]
    assert "agent-echoed" in views  # an agent without a table keeps its progress in a view
    wait_for(  # re-keyed by amount through the agent's repartition topic
        lambda: scan(shop, "orders-by-amount") == by_amount(3_000),
        timeout=30,
        what="group_by's counts",
    )
    feed = EventStream(shop.url + "/views/revenue/changes?from=start")

    def latest() -> dict:
        changes = [e["data"] for e in list(feed.events) if e["event"] == "change"]
        return {change["key"]: change["value"] for change in changes}

    try:
        wait_for(
            lambda: latest() == {user: float(total) for user, total in totals.items()},
            timeout=30,
            what="the table's change feed to reach the totals",
        )
    finally:
        feed.close()


def test_items_values_events_and_what_goes_to_the_dead_letters(
    broker: Broker, shop: Worker, unique_name: str
) -> None:
    here = partition_for_key(b"a", 2)
    elsewhere = next(
        key for i in itertools.count() if partition_for_key((key := f"k{i}").encode(), 2) != here
    )
    broker.produce(
        f"{unique_name}-audit",
        [
            (b"a", orjson.dumps({"x": 1})),
            (b"a", b"{not json"),
            (b"a", orjson.dumps({"boom": True})),  # the body raises; the agent goes on
            (b"a", orjson.dumps({"write_to": elsewhere})),
            (b"\xff", orjson.dumps({"x": 3})),  # a key that is not UTF-8: the agent reads it
            (b"a", orjson.dumps({"x": 2})),
        ],
    )
    broker.produce(f"{unique_name}-legacy", [(b"k", b"{}")] * 3)
    shop.start()
    state = shop.wait_until(
        "/state",
        lambda s: len(s["echoed"]) == 2 and s["legacy"] == {"k": 3},
        what="the audit events and faust's agent",
    )
    assert state["echoed"] == [{"x": 1}, {"x": 2}]  # sent on by `inspect`, read as values
    row = shop.wait_until("/views/seen/a", lambda r: r["n"] == 2, what="a's row checkpointed")
    last = 5 if partition_for_key(b"\xff", 2) == here else 4  # {"x": 2}'s offset
    assert row == {"n": 2, "partition": here, "offset": last, "current": last}
    assert shop.get(f"/views/seen/{elsewhere}") is None
    topic = f"{unique_name}-audit"
    assert state["deadLetters"] == {
        f"{topic}:bad-value": 1,
        f"{topic}:bad-key": 1,
        f"{topic}:handler-error": 1,
        f"{topic}:wrong-partition": 1,
    }
    letters = shop.get("/dead-letters?view=seen")
    reasons = {letter["kind"]: letter["reason"] for letter in letters["deadLetters"]}
    assert f"key {elsewhere!r} lives in partition" in reasons["wrong-partition"]
    assert "ValueError('boom')" in reasons["handler-error"]


def test_a_table_is_rebuilt_and_reset(broker: Broker, shop: Worker, unique_name: str) -> None:
    records, totals = orders(2_000)
    broker.produce(f"{unique_name}-orders", records)
    shop.start()
    shop.wait_until("/views", folded(2_000), what="2,000 orders")
    env = {"REVENUE_NAME": unique_name}
    rebuilt = run_cli("rebuild", APP, "revenue", "--url", shop.url, env=env, timeout=240)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "now serves generation 2" in rebuilt.stdout
    expected = {user: float(total) for user, total in totals.items()}
    assert revenue(shop) == expected
    assert shop.stop() == 0

    def reset_once() -> subprocess.CompletedProcess | None:
        done = run_cli(
            "reset", APP, "revenue", "--broker", broker.url, "--data-dir", str(shop.data_dir),
            env=env,
        )  # fmt: skip
        # a process the stopped worker forked may hold its data dir a moment longer
        return None if "is in use by process" in done.stderr else done

    reset = wait_for(reset_once, timeout=30, what="the data dir to be released")
    assert reset.returncode == 0, reset.stderr
    assert "reset view revenue" in reset.stdout
    shop.start()
    shop.wait_until("/views", folded(2_000), what="revenue folded again")
    assert revenue(shop) == expected


# -- declarations (no broker) ------------------------------------------------------------


def test_an_agent_finds_the_table_it_writes() -> None:
    app = belvedere.App("shop")
    topic = app.topic("orders", key_type=str, partitions=4)
    totals = app.Table("totals", default=int, partitions=4)

    @app.agent(topic)
    async def count(stream):
        async for user, _ in stream.items():
            totals[user] += 1

    assert isinstance(count, AgentProjection) and count.view is totals
    assert count.not_rebuildable is None and count.repartition is None

    by_amount = app.Table("by-amount", default=int, partitions=8)

    @app.agent(topic)
    async def amounts(stream):
        async for order in stream.group_by(lambda order: str(order["amount"]), name="amount"):
            by_amount[str(order["amount"])] += 1

    assert amounts.by({"amount": 3}) == "3"
    assert amounts.repartition.get_topic_name() == "shop-agent-amounts-repartition"
    assert amounts.repartition.partitions == 8  # the table's, not the topic's
    assert isinstance(totals, Table) and app.views["totals"] is totals
    with pytest.raises(TableWriteOutsideAgent, match="written by its agent only"):
        totals["alice"] = 1

    with pytest.raises(TypeError, match="'totals' is already written by 'count'"):

        @app.agent(app.topic("more", partitions=4))
        async def count_again(stream):
            async for user, _ in stream.items():
                totals[user] += 1

    sent = app.Table("sent", partitions=4)

    @app.agent(app.topic("outbound", partitions=4))
    async def forward(stream):
        async for user, value in stream.items():
            sent[user] = value
            await topic.send(key=user, value=value)

    assert forward.not_rebuildable is None  # a rebuild's sends go nowhere (the outbox)

    @app.agent(topic, engine=False)
    async def beside(stream):
        async for _ in stream:
            pass

    with pytest.raises(ValueError, match=r"agent .*beside' consumes 'orders'"):
        app.check()


def test_what_the_engine_cannot_run_is_refused_at_declaration() -> None:
    app = belvedere.App("shop")
    topic = app.topic("orders", key_type=str, partitions=2)
    one, two = app.Table("one", partitions=2), app.Table("two", partitions=2)

    with pytest.raises(TypeError, match="writes 2 tables"):

        @app.agent(topic)
        async def both(stream):
            async for key, value in stream.items():
                one[key] = two[key] = value

    with pytest.raises(TypeError, match=r"stream.take\(\) does not run on the engine"):

        @app.agent(topic)
        async def batches(stream):
            async for values in stream.take(100, within=1):
                one["last"] = values

    with pytest.raises(TypeError, match="group_by re-keys into the table the agent writes"):

        @app.agent(topic)
        async def regroup(stream):
            async for value in stream.group_by("user"):
                print(value)

    with pytest.raises(TypeError, match="yields"):

        @app.agent(topic)
        async def answers(stream):
            async for value in stream:
                yield value

    with pytest.raises(TypeError, match=r"concurrency.*engine=False"):

        @app.agent(topic, concurrency=4)
        async def wide(stream):
            async for _ in stream:
                pass

    with pytest.raises(ValueError, match="'one' has 2 partitions but 'wider' has 8"):

        @app.agent(app.topic("wider", partitions=8))
        async def widen(stream):
            async for key, value in stream.items():
                one[key] = value

    with pytest.raises(TypeError, match=r"window.*engine=False"):
        app.Table("windowed", window=object())

    @app.agent(app.topic("faust-path", partitions=2), engine=False)
    async def legacy(stream):
        async for _ in stream:
            pass

    assert f"{__name__}.legacy" in app.agents
    assert app.Table("faust-table", default=int, engine=False).default is int


def test_a_step_that_awaits_is_awaited_and_the_agent_resumes() -> None:
    app = belvedere.App("shop")
    topic = app.topic("orders", key_type=str, partitions=1)
    seen: list = []

    @app.agent(topic)
    async def slow(stream):
        async for value in stream:
            await asyncio.sleep(0.001)
            seen.append(value)

    class Txn:
        record = None

    async def run() -> None:
        for value in (1, 2, 3):
            result = slow.every_event.fn(Txn(), value)
            assert result is not None  # the body awaited a real future
            await result

    asyncio.run(run())
    assert seen == [1, 2, 3]

    async def interleaved() -> None:
        first = asyncio.ensure_future(slow.every_event.fn(Txn(), 4))
        await asyncio.sleep(0)  # the first step now awaits its sleep
        second = slow.every_event.fn(Txn(), 5)  # another partition's fold meanwhile
        assert second is not None  # it waits for the first step to finish
        await asyncio.gather(first, second)

    asyncio.run(interleaved())
    assert seen == [1, 2, 3, 4, 5]


def test_a_body_that_raises_starts_over_and_one_that_returns_has_ended() -> None:
    app = belvedere.App("shop")
    topic = app.topic("orders", key_type=str, partitions=1)
    starts: list[int] = []

    @app.agent(topic)
    async def fussy(stream):
        starts.append(len(starts))
        async for value in stream:
            if value == "raise":
                raise ValueError(value)
            if value == "return":
                return

    class Txn:
        record = None

    step = fussy.every_event.fn
    assert step(Txn(), "ok") is None and starts == [0]
    with pytest.raises(ValueError, match="raise"):
        step(Txn(), "raise")
    assert step(Txn(), "ok") is None and starts == [0, 1]  # a fresh coroutine
    assert step(Txn(), "return") is None  # it took the event, then ended
    with pytest.raises(AgentEnded, match="returned"):
        step(Txn(), "ok")


def test_the_test_driver_runs_the_readme_example() -> None:
    app = belvedere.App("shop-driven")
    orders = app.topic("orders", key_type=str, partitions=4)
    revenue = app.Table("revenue", default=float, partitions=4)

    @app.agent(orders)
    async def total(stream):
        async for user, order in stream.items():
            revenue[user] += order["amount"]

    with TestDriver(app) as driver:
        for user, amount in (("alice", 3), ("bob", 2), ("alice", 4)):
            driver.send_raw(
                orders,
                orjson.dumps({"amount": amount}),
                key=user,
                partition=partition_for_key(user.encode(), 4),
            )
        driver.send_raw(orders, b"{not json", key="carol", partition=0)
        driver.run()
        assert driver.rows(revenue) == {"alice": 7.0, "bob": 2.0}
        assert [letter.kind for letter in driver.dead_letters()] == ["bad-value"]
