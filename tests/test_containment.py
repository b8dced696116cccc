"""One event never stops a worker: an integer past 64 bits, a state that outgrows what the
store can encode, a value JSON has no form for. Each is refused (HTTP 400) or dead-lettered
alone with its kind and reason, on projections, aggregates and sagas, on both brokers; the
worker stays ready, and a restart is clean (nothing applied or dead-lettered twice)."""

from __future__ import annotations

from collections.abc import Callable

import orjson

from belvedere.streams.clients import Record
from belvedere.streams.dead_letters import DeadLetter, dead_letter_topic
from tests.support.brokers import Broker
from tests.support.http import Answer, call
from tests.support.worker import Worker, wait_for

BIG = 2**63 - 1  # the largest a field takes; three of them overflow orjson's 64 bits
TOPICS = ("tank-events", "tank-commands", "readings", "log-commands", "log-events")


def envelope(event_type: str, data_json: bytes, event_id: str) -> bytes:
    """A foreign producer's bytes, with ``data`` as given (orjson would refuse 2**64)."""
    head = {"eventId": event_id, "eventType": event_type, "eventVersion": 1}
    return orjson.dumps(head)[:-1] + b',"data":' + data_json + b"}"


def reading(tank: str, qty: int, event_id: str, event_type: str = "Filled") -> Record:
    data = b'{"tank":"%s","qty":%d}' % (tank.encode(), qty)
    return Record(tank.encode(), envelope(event_type, data, event_id), 0)


def tagged(tank: str, tag: str, event_id: str) -> Record:
    data = orjson.dumps({"tank": tank, "tag": tag})
    return Record(tank.encode(), envelope("Tagged", data, event_id), 0)


def fill(worker: Worker, tank: str, qty: int, flow: str) -> Answer:
    return call(
        f"{worker.url}/commands/Fill",
        "POST",
        b'{"tank":"%s","qty":%d}' % (tank.encode(), qty),
        {"X-Correlation-Id": flow},
    )


def letters(broker: Broker, name: str, topic: str) -> list[DeadLetter]:
    return [
        DeadLetter.from_record(r.key, r.value, r.headers)
        for r in broker.read(dead_letter_topic(name, f"{name}-{topic}"))
    ]


def test_one_event_never_stops_a_worker_and_a_restart_is_clean(
    broker: Broker, workers: Callable[..., Worker], unique_name: str
) -> None:
    name = unique_name
    for topic in TOPICS:
        broker.create_topic(f"{name}-{topic}", 2)
    # topics, written first (the embedded log opens in one process at a time): foreign bytes with 2**64, an overflowing sum, a value with no JSON form
    broker.produce(
        f"{name}-readings",
        [
            reading("t2", 2**64, "r-huge"),
            reading("t2", 2**64 - 1, "r-over"),
            reading("t2", BIG, "r-1"),
            tagged("t2", "a", "r-2"),
            reading("t2", BIG, "r-3"),
            reading("t2", BIG, "r-overflow"),
            tagged("t2", "set", "r-set"),
            reading("t2", 1, "r-4"),
        ],
    )
    broker.produce(f"{name}-tank-commands", [reading("t3", 2**64, "c-huge", "Fill")])

    worker = workers("tests.apps.tanks:app", {"TANKS_NAME": name}).start()
    worker.wait_until("/state", lambda s: s["ready"], what="ready")

    # HTTP: a field past 64 bits is a 400 naming it, before anything is sent
    for qty in (2**64, 2**64 - 1, 2**63, -(2**63) - 1):
        refused = fill(worker, "t1", qty, "flow-x")
        assert refused.status == 400, refused.raw
        assert refused.body["error"] == "invalid-data" and "qty" in refused.body["detail"]
    # an aggregate whose state would overflow 64 bits: that command fails alone
    assert fill(worker, "t1", BIG, "flow-1").status == 202
    second = fill(worker, "t1", BIG, "flow-2")
    assert second.status == 500 and second.body["error"] == "handler-failed", second.raw
    assert "its state after version 2 cannot be stored" in second.body["detail"]
    assert "Tank.level" in second.body["detail"]
    assert fill(worker, "t1", -5, "flow-3").status == 202
    assert fill(worker, "t9", 7, "flow-4").status == 202  # the partition goes on

    expected = {
        "readings": {
            "r-huge": ("invalid-data", "qty"),
            "r-over": ("invalid-data", "qty"),
            "r-overflow": ("unencodable-state", "Integer exceeds 64-bit range"),
            "r-set": ("unencodable-state", "view 'totals'"),
        },
        "tank-commands": {
            "c-huge": ("invalid-data", "qty"),
            None: ("unencodable-state", "Tank.level"),  # the second Fill (its id generated)
        },
    }

    def dead_lettered() -> dict[str, int]:
        return worker.get("/state")["deadLetters"]

    want = {
        f"{name}-readings:invalid-data": 2,
        f"{name}-readings:unencodable-state": 2,
        f"{name}-tank-commands:invalid-data": 1,
        f"{name}-tank-commands:unencodable-state": 1,
    }
    wait_for(lambda: dead_lettered() == want, timeout=60, what=f"dead letters {want}")
    t2 = wait_for(
        lambda: (
            (row := call(f"{worker.url}/views/totals/t2").body) and row.get("fills") == 3 and row
        ),
        timeout=60,
        what="t2's three good readings",
    )
    assert t2 == {"total": 2 * BIG + 1, "fills": 3, "tags": ["a"]}
    tank = call(f"{worker.url}/aggregates/Tank/t1").body
    assert (tank["version"], tank["state"]["level"]) == (2, BIG - 5)
    wait_for(
        lambda: call(f"{worker.url}/sagas/fill-log/flow-1").body.get("status") == "completed",
        timeout=60,
        what="the saga of the first fill completed",
    )
    assert call(f"{worker.url}/sagas/fill-log/flow-2").status == 404  # its Filled never was
    assert worker.get("/state")["ready"]

    # a restart: ready again, nothing re-applied or dead-lettered again
    assert worker.stop() == 0
    broker.produce(f"{name}-readings", [reading(t, -1, f"after-{t}") for t in ("t2", "t5", "t6")])
    worker.start()
    worker.wait_until("/state", lambda s: s["ready"], what="ready after a restart")
    wait_for(
        lambda: (
            all(call(f"{worker.url}/views/totals/{t}").status == 200 for t in ("t5", "t6"))
            and call(f"{worker.url}/views/totals/t2").body["fills"] == 4
        ),
        timeout=60,
        what="readings after the restart",
    )
    assert call(f"{worker.url}/views/totals/t2").body["total"] == 2 * BIG
    assert dead_lettered() == {}  # this run sent none
    assert call(f"{worker.url}/aggregates/Tank/t1").body["version"] == 2
    assert fill(worker, "t1", 5, "flow-5").status == 202
    assert worker.stop() == 0

    # each dead letter once, with its kind and a reason naming what failed (read once the
    # worker is gone: the embedded log opens in one process at a time)
    for topic, kinds in expected.items():
        found = letters(broker, name, topic)
        assert len(found) == len(kinds), (topic, found)
        for letter in found:
            kind, word = kinds.get(orjson.loads(letter.value)["eventId"]) or kinds[None]
            assert (letter.kind, letter.topic) == (kind, f"{name}-{topic}"), letter
            assert word in letter.reason, letter
