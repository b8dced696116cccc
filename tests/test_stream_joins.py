"""Windowed stream-stream joins (tests/apps/stream_joins.py) on both brokers: the pairs and
the unmatched events against a result computed here by brute force, late events
dead-lettered, state deleted once windows close, each output once across kill -9s."""

from __future__ import annotations

import random
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import orjson
import pytest

import belvedere
from belvedere.streams.clients import NewRecord
from belvedere.streams.partitioner import partition_for_key
from belvedere.testing import TestDriver
from tests.support.brokers import Broker
from tests.support.worker import Worker

APP = "tests.apps.stream_joins:app"
WITHIN, GRACE = 900, 7_200  # seconds, as the app declares them
T0 = 1_700_000_000
#: Phase one's event times span less than the grace: whatever order the two inputs'
#: copies meet in, no event of it is late and no window of it closes during it.
SPAN = 7_000
#: Past every phase-one window's close: the ticks' time.
T_TICK = T0 + SPAN + WITHIN + GRACE + 1


@dataclass
class Source:
    """Events for the app's two topics, what the join must send for them, computed here."""

    name: str
    orders: list[NewRecord] = field(default_factory=list)
    payments: list[NewRecord] = field(default_factory=list)
    times: dict[str, tuple[str, int]] = field(default_factory=dict)  # event id -> (key, at)
    origins: dict[str, str] = field(default_factory=dict)  # event id -> topic-partition-offset
    positions: Counter = field(default_factory=Counter)

    def add(self, kind: str, data: dict[str, Any], event_id: str) -> None:
        topic, partitions = ("orders", 4) if kind == "OrderPlaced" else ("payments", 3)
        key = (data["orderId"] if kind == "OrderPlaced" else data["paymentId"]).encode()
        envelope = {
            "eventId": event_id,
            "eventType": kind,
            "eventVersion": 1,
            "correlationId": f"c-{event_id}",
            "data": data,
        }
        (self.orders if topic == "orders" else self.payments).append(
            NewRecord(key, orjson.dumps(envelope), 0)
        )
        p = partition_for_key(key, partitions)
        self.origins[event_id] = f"{self.name}-{topic}-{p}-{self.positions[topic, p]}"
        self.positions[topic, p] += 1
        self.times[event_id] = (data["orderId"], data["at"])

    def produce(self, broker: Broker, worker: Worker | None = None) -> None:
        """Append what was added; on the embedded broker a running ``worker`` is stopped
        for it and started again (the embedded log is the worker's while it runs)."""
        stopping = worker is not None and broker.name == "embedded"
        if stopping:
            assert worker.stop() == 0
        broker.produce(f"{self.name}-orders", self.orders)
        broker.produce(f"{self.name}-payments", self.payments)
        self.orders, self.payments = [], []
        if stopping:
            worker.start()


def phase_one(source: Source, orders: int, seed: int) -> tuple[list[str], list[str]]:
    """Orders, 0 to 3 payments each (some exactly ``WITHIN`` away, some a second more),
    payments of no order; each topic's events out of time order. Their ids."""
    rng = random.Random(seed)
    placed, paid = [], []
    events: list[tuple[str, dict[str, Any], str]] = []
    for i in range(orders):
        at = T0 + rng.randrange(SPAN)
        events.append(("OrderPlaced", {"orderId": f"o-{i}", "at": at}, f"o-{i}"))
        for k in range(rng.choice([0, 0, 1, 1, 1, 2, 3])):
            off = rng.choice([rng.randrange(-1_500, 1_500), WITHIN, -WITHIN, WITHIN + 1])
            when = min(max(at + off, T0), T0 + SPAN - 1)
            pid = f"p-{i}-{k}"
            events.append(("PaymentReceived", {"paymentId": pid, "orderId": f"o-{i}", "at": when}, pid))  # fmt: skip
    for j in range(orders // 10):
        pid = f"p-x{j}"
        at = T0 + rng.randrange(SPAN)
        events.append(("PaymentReceived", {"paymentId": pid, "orderId": f"x-{j}", "at": at}, pid))
    rng.shuffle(events)
    for kind, data, event_id in events:
        source.add(kind, data, event_id)
        (placed if kind == "OrderPlaced" else paid).append(event_id)
    return placed, paid


def ticks(source: Source) -> None:
    """An order in each partition of the merged topic (keyed by order id, 4 partitions),
    at a time that closes every window of phase one."""
    hit: set[int] = set()
    i = 0
    while len(hit) < 4:
        key = f"tick-{i}"
        if partition_for_key(key.encode(), 4) not in hit:
            hit.add(partition_for_key(key.encode(), 4))
            source.add("OrderPlaced", {"orderId": key, "at": T_TICK}, key)
        i += 1


def expected(source: Source, placed: list[str], paid: list[str]) -> tuple[Counter, dict]:
    """By brute force over the events' times: each pair (orderId, paymentId, True) once;
    each unmatched event's output by its event id."""
    pairs: Counter = Counter()
    matched: set[str] = set()
    for o in placed:
        key, at = source.times[o]
        for p in paid:
            other, when = source.times[p]
            if other == key and abs(at - when) <= WITHIN:
                pairs[(key, p, True)] += 1
                matched.update((o, p))
    unmatched = {}
    for o in placed:
        if o not in matched:
            unmatched[f"{source.origins[o]}/pay/0"] = (o, (source.times[o][0], None, True))
    for p in paid:
        if p not in matched:
            unmatched[f"{source.origins[p]}/pay/0"] = (p, (source.times[p][0], p, False))
    return pairs, unmatched


def check_outputs(broker: Broker, source: Source, placed: list[str], paid: list[str]) -> None:
    pairs, unmatched = expected(source, placed, paid)
    envelopes = [orjson.loads(r.value) for r in broker.read(f"{source.name}-paid")]
    ids = Counter(e["eventId"] for e in envelopes)
    twice = [i for i, n in ids.items() if n > 1]
    assert not twice, f"{len(twice)} outputs sent twice, e.g. {twice[:3]}"
    got_pairs: Counter = Counter()
    got_unmatched = {}
    for e in envelopes:
        d = e["data"]
        assert e["correlationId"] == f"c-{e['causationId']}"  # continues its source's
        row = (d["orderId"], d["paymentId"], d["placed"])
        if d["paymentId"] is not None and d["placed"]:
            got_pairs[row] += 1
            # sent when its second event came: named after that one's position
            trigger = e["causationId"]
            assert trigger in (row[1], f"o-{row[0][2:]}")
            assert e["eventId"].startswith(f"{source.origins[trigger]}/pay/")
        else:
            got_unmatched[e["eventId"]] = (e["causationId"], row)
    assert got_pairs == pairs, f"pairs: {len(got_pairs)} got, {len(pairs)} expected"
    assert got_unmatched == unmatched, f"{len(got_unmatched)} unmatched, {len(unmatched)} expected"


def late_letters(broker: Broker, name: str) -> Counter:
    """Dead letters of the merged topic by (kind, offset): at least once, so maybe twice."""
    found: Counter = Counter()
    for record in broker.read(f"{name}-{name}-join-pay-dead-letters"):
        headers = {k.rsplit("-", 1)[-1]: bytes(v).decode() for k, v in record.headers}
        found[(headers["kind"], headers["offset"])] += 1
    return found


@pytest.fixture
def joins(broker: Broker, workers: Callable[..., Worker], unique_name: str) -> Worker:
    for topic, partitions in (("orders", 4), ("payments", 3), ("paid", 4)):
        broker.create_topic(f"{unique_name}-{topic}", partitions)
    return workers(APP, {"SJ_NAME": unique_name})


def wait_state(worker: Worker, what: str, **want: int) -> dict:
    return worker.wait_until(
        "/state",
        lambda s: s["ready"] and all(s[k] == v for k, v in want.items()),
        timeout=60,
        what=what,
    )


def test_pairs_and_unmatched_equal_a_brute_force_result_and_late_ones_are_dead_lettered(
    broker: Broker, joins: Worker, unique_name: str
) -> None:
    """Phase one (out of order, within the grace): every pair once, nothing closed yet.
    Ticks close every window: each unmatched event sent once, the view left with the
    ticks only. Then events of phase one's times: late, dead-lettered, nothing sent. A
    restore from the changelogs brings no closed event back and sends nothing again."""
    source = Source(unique_name)
    placed, paid = phase_one(source, 150, seed=3)
    source.produce(broker)
    joins.start()
    n = len(placed) + len(paid)
    wait_state(joins, "phase one joined", copied=n, stored=n)
    ticks(source)
    source.produce(broker, joins)
    wait_state(joins, "every window closed", copied=n + 4, stored=4)
    for i in range(5):  # an order, and a payment of an order of phase one
        source.add("OrderPlaced", {"orderId": f"o-{i}", "at": T0 + 10}, f"late-o-{i}")
        source.add("PaymentReceived", {"paymentId": f"late-p-{i}", "orderId": f"o-{i}", "at": source.times[f"o-{i}"][1]}, f"late-p-{i}")  # fmt: skip
    source.produce(broker, joins)
    wait_state(joins, "the late events dead-lettered", copied=n + 14, deadLetters=10, stored=4)
    assert joins.stop() == 0
    shutil.rmtree(joins.data_dir / "views")  # restored from the changelogs: no closed event
    joins.start()
    wait_state(joins, "the views restored", copied=n + 14, deadLetters=0, stored=4)
    assert joins.stop() == 0

    check_outputs(broker, source, placed, paid)
    letters = late_letters(broker, unique_name)
    assert {kind for kind, _ in letters} == {"late"} and len(letters) == 10


def test_kill_9_mid_stream_sends_each_output_once(
    broker: Broker, workers: Callable[..., Worker], unique_name: str
) -> None:
    """A few thousand events, the worker killed while it pairs and again once the ticks
    are copied (while it sends the unmatched, or before): the output topic holds every
    expected output once."""
    for topic, partitions in (("orders", 4), ("payments", 3), ("paid", 4)):
        broker.create_topic(f"{unique_name}-{topic}", partitions)
    worker = workers(APP, {"SJ_NAME": unique_name, "SJ_SLOW": "0.002"})
    source = Source(unique_name)
    placed, paid = phase_one(source, 1_000, seed=11)
    n = len(placed) + len(paid)
    source.produce(broker)
    worker.start()
    state = worker.wait_until("/state", lambda s: s["ready"] and s["stored"] >= n // 3, timeout=60)
    worker.kill()
    assert state["stored"] < n, f"the kill must land mid-stream: {state['stored']} of {n}"
    worker.start()
    wait_state(worker, "phase one joined after a kill", copied=n, stored=n)
    ticks(source)
    source.produce(broker, worker)
    worker.wait_until("/state", lambda s: s["copied"] == n + 4, timeout=60)
    worker.kill()
    worker.start()
    wait_state(worker, "every window closed after a kill", copied=n + 4, stored=4)
    assert worker.stop() == 0
    check_outputs(broker, source, placed, paid)


# -- in process ------------------------------------------------------------------------------


class Placed(belvedere.Event, key="order_id"):
    order_id: str


class Shipped(belvedere.Event):
    order_id: str


def test_a_bad_join_declaration_is_refused_in_one_line(unique_name: str) -> None:
    app = belvedere.App(unique_name)
    placed = app.event_topic(f"{unique_name}-placed", Placed, partitions=2)
    shipped = app.event_topic(f"{unique_name}-shipped", Shipped, partitions=2)
    out = app.event_topic(f"{unique_name}-out", Placed, partitions=2)
    unsized = app.event_topic(f"{unique_name}-unsized", Placed)
    minute = timedelta(minutes=1)

    def both(a: Placed | None, b: Shipped | None) -> None:
        return None

    refusals: list[tuple[type[Exception], str, dict[str, Any]]] = [
        (TypeError, "to= must be the event topic", {}),
        (TypeError, "with partitions=", {"to": unsized}),
        (ValueError, "within must be positive", {"to": out, "within": 0}),
        (ValueError, "how must be one of inner, left, right, outer", {"to": out, "how": "full"}),
        (ValueError, "grace must not be negative", {"to": out, "grace": -1}),
        (ValueError, "on_late must be one of", {"to": out, "on_late": "drop"}),
        (TypeError, "time must be a field name or a function", {"to": out, "time": 3}),
        (TypeError, "on= is a field name, a function, or a pair", {"to": out, "on": 3}),
    ]
    for error, message, options in refusals:
        with pytest.raises(error, match=message):
            app.join(placed, shipped, **{"within": minute, **options})(both)
    with pytest.raises(TypeError, match="the right source must be an event topic"):
        app.join(placed, "shipped", within=minute, to=out)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Shipped has no key field: give on="):
        app.join(placed, shipped, within=minute, to=out)(both)
    with pytest.raises(TypeError, match="Placed is not carried by"):
        app.join(shipped, placed, within=minute, to=out, on="order_id")(both)
    with pytest.raises(TypeError, match="takes \\(left, right\\)"):
        app.join(placed, shipped, within=minute, to=out, on="order_id")(lambda a: None)
    with pytest.raises(ValueError, match="view 'join-both' is already declared"):
        app.join(placed, shipped, within=minute, to=out, on="order_id")(both)
        app.join(placed, shipped, within=minute, to=out, on="order_id")(both)
    with pytest.raises(TypeError, match="a type on both sides of one topic"):

        @app.join(placed, placed, within=minute, to=out)
        def itself(a: Placed, b: Placed) -> None:
            return None


def test_pairs_unmatched_late_and_event_ids_in_process(unique_name: str) -> None:
    """A left join, by the envelopes' timestamps: pairs at exactly ``within`` and not a
    millisecond more, a partner whose window closed (not deleted yet) not paired, a late
    event counted, each output's id from the position of the event that made it (the
    pair's second event; the unmatched event itself), the same on a second run."""

    def run() -> tuple[list[tuple[str, str | None, str]], int]:
        app = belvedere.App(unique_name)
        placed = app.event_topic(f"{unique_name}-placed", Placed, partitions=1)
        shipped = app.event_topic(f"{unique_name}-shipped", Shipped, partitions=1)
        out = app.event_topic(f"{unique_name}-out", Placed, partitions=1)

        @app.join(placed, shipped, within=60, how="left", on="order_id", to=out, on_late="count")
        def ship(order: Placed | None, shipment: Shipped | None) -> Placed:
            assert order is not None
            if order.order_id == "h" and shipment is None:
                raise RuntimeError("no unpaid h")
            if shipment is not None and shipment.meta.event_id == "i730":
                return Shipped(order_id="i")  # not carried by out
            return Placed(order_id=f"{order.order_id}:{shipment is not None}")

        with TestDriver(app) as driver:
            for order_id, t, what in [
                ("a", 0, placed), ("a", 30, shipped), ("b", 10, placed), ("c", 70, shipped),
                ("c", 100, placed), ("a", 61, shipped), ("d", 200, placed), ("b", 15, shipped),
                ("d", 300, shipped), ("e", 500, placed), ("e", 560.001, shipped),
                ("f", 600, placed), ("g", 700, placed), ("f", 660, shipped), ("h", 700, placed),
                ("i", 700, placed), ("i", 730, shipped), ("j", 800, placed),
            ]:  # fmt: skip
                event = Placed(order_id=order_id) if what is placed else Shipped(order_id=order_id)
                driver.send(what, event, key=order_id, timestamp=T0 + t, event_id=f"{order_id}{t}")
                driver.run()  # one event at a time: the merged topic in this order
            late = driver.rows("join-ship")["\0"]["late"]
            sent = [(e.meta.event_id, e.meta.causation_id, e.order_id) for e in driver.sent(out)]
            failed = [(d.kind, d.offset, d.reason.split(":")[0]) for d in driver.dead_letters()]
        return sorted(sent), late, failed

    sent, late, failed = run()
    assert late == 1  # b at 15: b's window closed at 70, the stream time is 200
    placed, shipped = f"{unique_name}-placed-0", f"{unique_name}-shipped-0"
    assert sent == sorted(
        [
            (f"{shipped}-0/ship/0", "a30", "a:True"),  # a at 61: 61 s from a at 0
            (f"{placed}-1/ship/0", "b10", "b:False"),
            (f"{placed}-2/ship/0", "c100", "c:True"),  # the pair's second event
            (f"{placed}-3/ship/0", "d200", "d:False"),  # d at 300: 100 s away
            (f"{placed}-4/ship/0", "e500", "e:False"),  # e at 560.001: 1 ms too far
            (f"{placed}-5/ship/0", "f600", "f:False"),  # f at 660: f's window closed at 700
            (f"{placed}-6/ship/0", "g700", "g:False"),  # j at 800 closed it; not j's
            (f"{placed}-8/ship/0", "i700", "i:False"),  # its pair failed: dead-lettered
        ]
    )
    # both name the join; by their offsets in the merged topic: h at 700, i at 730
    assert sorted(failed) == [("handler-error", 14, "ship"), ("handler-error", 16, "ship")]
    assert run() == (sent, late, failed)


def test_before_and_after_bound_each_side_and_close_its_window(unique_name: str) -> None:
    """A shipment may come up to 60 s after its order, never before (``before=0``), with
    a grace of 30 s: a shipment 10 s early does not pair (it would within 60 s either
    way), and closes 30 s after its time; an order closes 90 s after its time."""
    app = belvedere.App(unique_name)
    placed = app.event_topic(f"{unique_name}-placed", Placed, partitions=1)
    shipped = app.event_topic(f"{unique_name}-shipped", Shipped, partitions=1)
    out = app.event_topic(f"{unique_name}-out", Placed, partitions=1)

    @app.join(placed, shipped, before=0, after=60, grace=30, how="outer", on="order_id", to=out, on_late="count")  # fmt: skip
    def ship(order: Placed | None, shipment: Shipped | None) -> Placed:
        either = order or shipment
        assert either is not None
        return Placed(order_id=f"{either.order_id}:{order is not None}:{shipment is not None}")

    with TestDriver(app) as driver:
        for order_id, t, what in [
            ("a", 100, placed), ("a", 90, shipped), ("a", 160, shipped), ("b", 200, placed),
            ("b", 170, shipped), ("c", 300, placed), ("c", 361, shipped),
        ]:  # fmt: skip
            event = Placed(order_id=order_id) if what is placed else Shipped(order_id=order_id)
            driver.send(what, event, key=order_id, timestamp=T0 + t, event_id=f"{order_id}{t}")
            driver.run()
        assert driver.rows("join-ship")["\0"]["late"] == 1  # b at 170: closed at 200
        sent = sorted((e.meta.causation_id, e.order_id) for e in driver.sent(out))
        assert sent == [("a160", "a:True:True"), ("a90", "a:False:True"), ("b200", "b:True:False")]
        open_events = {e["origin"] for row in driver.rows("join-ship").values() for e in row.get("events", ())}  # fmt: skip
        assert open_events == {f"{unique_name}-placed-0-2", f"{unique_name}-shipped-0-3"}  # c's

    with pytest.raises(TypeError, match="give within= \\(or both before= and after=\\)"):
        app.join(placed, shipped, before=10, to=out)
    with pytest.raises(ValueError, match="must not be negative, nor both zero"):
        app.join(placed, shipped, before=0, after=0, to=out)
