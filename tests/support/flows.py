"""The transforms of tests/apps/flows.py computed here, and their outputs read back."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from belvedere.streams.clients import NewRecord
from belvedere.streams.partitioner import partition_for_key
from tests.support.brokers import Broker
from tests.support.worker import Worker

#: tests/apps/flows.py's output topics (each under the app's name), by what sends to them.
OUTPUTS = {"is_big": "big", "receipt": "receipts", "split": "lines", "region": ("eu", "us")}


def flows_worker(broker: Broker, workers: Callable[..., Worker], name: str, **env: str) -> Worker:
    """A worker of tests/apps/flows.py (not started), its topics created."""
    for topic, partitions in (("orders", 4), ("big", 4), ("receipts", 4), ("lines", 3)):
        broker.create_topic(f"{name}-{topic}", partitions)
    return workers("tests.apps.flows:app", {"FLOWS_NAME": name, **env})


@dataclass
class Expected:
    """What the app must send and fold for a list of orders."""

    records: list[NewRecord] = field(default_factory=list)
    #: topic suffix -> {eventId: (causationId, eventType, data)}
    outputs: dict[str, dict[str, tuple[str, str, dict]]] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    handled: dict[str, int] = field(default_factory=dict)
    #: Dead letters expected per transform.
    dead: Counter = field(default_factory=Counter)


def orders(name: str, n: int, seed: int = 1) -> Expected:
    """``n`` orders, and what each transform makes of them, computed independently."""
    rng = random.Random(seed)
    out = Expected(outputs={t: {} for t in ("big", "receipts", "lines", "eu", "us")})
    source = f"{name}-orders"
    positions: Counter = Counter()
    for i in range(n):
        order_id, user = f"o-{i}", f"u-{rng.randrange(40)}"
        region = rng.choices(["eu", "us", "xx", "mars"], [45, 45, 8, 2])[0]
        amount = 13 if rng.random() < 0.02 else rng.randrange(1, 101)
        data = {"orderId": order_id, "userId": user, "region": region, "amount": amount}
        envelope = {
            "eventId": f"e-{i}",
            "eventType": "OrderPlaced",
            "eventVersion": 1,
            "correlationId": f"c-{i}",
            "data": data,
        }
        key = order_id.encode()
        out.records.append(NewRecord(key, orjson.dumps(envelope), 0))
        p = partition_for_key(key, 4)
        origin = f"{source}-{p}-{positions[p]}"
        positions[p] += 1
        cause = f"e-{i}"

        def sent(topic: str, flow: str, n: int, kind: str, body: dict, at: str = origin, cause: str = cause) -> None:  # fmt: skip
            out.outputs[topic][f"{at}/{flow}/{n}"] = (cause, kind, body)

        if amount >= 50:
            sent("big", "is_big", 0, "OrderPlaced", data)
            out.totals[user] = out.totals.get(user, 0) + amount
        if amount == 13:
            out.dead["receipt"] += 1
        elif amount % 10:
            sent("receipts", "receipt", 0, "Receipt", {"orderId": order_id, "amount": amount})
        for k in range(amount % 3):
            sent("lines", "split", k, "Line", {"orderId": order_id, "n": k})
        if region == "mars":
            out.dead["region"] += 1
        elif region != "xx":
            sent(region, "region", 0, "OrderPlaced", data)
    out.handled = {
        "is_big": n,
        "receipt": n - out.dead["receipt"],
        "split": n,
        "region": n - out.dead["region"],
        f"{name}-big-by-user_id": len(out.outputs["big"]),
    }
    return out


def check_outputs(broker: Broker, name: str, app_id: str, expected: Expected) -> None:
    """Every output topic holds exactly the expected events, each once (by eventId), read
    committed on Kafka; the re-keyed topic holds each big order once, keyed by user."""
    for suffix, want in expected.outputs.items():
        records = broker.read(f"{name}-{suffix}")
        envelopes = [orjson.loads(r.value) for r in records]
        ids = Counter(e["eventId"] for e in envelopes)
        twice = [i for i, c in ids.items() if c > 1]
        assert not twice, f"{suffix}: {len(twice)} events sent twice, e.g. {twice[:3]}"
        got = {e["eventId"]: (e["causationId"], e["eventType"], e["data"]) for e in envelopes}
        assert got == want, f"{suffix}: {len(got)} events, {len(want)} expected"
        for e in envelopes:  # the correlation continues the source's
            assert e["correlationId"] == "c-" + e["causationId"][2:]
    rekeyed = broker.read(f"{app_id}-rekey-{name}-big-by-user_id")
    envelopes = [orjson.loads(r.value) for r in rekeyed]
    ids = Counter(e["eventId"] for e in envelopes)
    assert max(ids.values(), default=1) == 1, "a re-keyed event twice"
    assert set(ids) == set(expected.outputs["big"])  # the filter's outputs, copied as they are
    assert all(r.key == orjson.loads(r.value)["data"]["userId"].encode() for r in rekeyed)


def dead_letters(broker: Broker, app_id: str, name: str) -> list[tuple[str, str]]:
    """(kind, reason) of each dead letter of the orders topic."""
    found = []
    for record in broker.read(f"{app_id}-{name}-orders-dead-letters"):
        headers = {k.rsplit("-", 1)[-1]: bytes(v).decode() for k, v in record.headers}
        found.append((headers["kind"], headers["reason"]))
    return found
