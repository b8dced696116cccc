"""Events from producers that are not Belvedere: the envelope exactly as other
frameworks write it (``"eventVersion": "1.0"``), and keys hashed by librdkafka's partitioners (kcat).

The envelope test runs on both brokers, with the foreign bytes written by the repo's
clients; kcat only talks to Kafka, so the partitioner tests run there only.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import orjson
import pytest

from belvedere.streams.clients import NewRecord
from belvedere.streams.dead_letters import DeadLetter, dead_letter_topic
from belvedere.streams.partitioner import crc32_partition, partition_for_key
from tests.support.brokers import KAFKA_ONLY, Broker
from tests.support.http import call
from tests.support.kcat import find_kcat, kcat_produce
from tests.support.worker import Worker, run_cli

TOPICS = ("orders", "crc-orders", "any-orders")
PARTITIONS = 4  # tests/apps/foreign.py


def source_material(
    order_id: str, version: str, data: bytes, event_type: str = "OrderCreated"
) -> bytes:
    """The envelope laid out as other frameworks write it, a string eventVersion."""
    return b"""{
"eventId": "%s",
"eventType": "%s",
"eventVersion": "%s",
"timestamp": "2024-01-15T10:30:00Z",
"correlationId": "%s",
"causationId": "command-456",
"producer": "order-service",
"data": %s
}""" % (
        f"evt-{event_type}-{order_id}-{version}".encode(),
        event_type.encode(),
        version.encode(),
        order_id.encode(),
        data,
    )


def v1_data(order_id: str, cents: int) -> bytes:
    return b'{ "orderId": "%s", "userId": "user-456", "totalCents": %d }' % (
        order_id.encode(),
        cents,
    )


def v2_data(order_id: str, amount: str) -> bytes:
    return b'{ "orderId": "%s", "userId": "user-456", "amount": "%s", "coupon": "x" }' % (
        order_id.encode(),
        amount.encode(),
    )


@pytest.fixture
def name(unique_name: str) -> str:
    return unique_name


@pytest.fixture
def foreign(broker: Broker, workers: Callable[..., Worker], name: str) -> Worker:
    for topic in TOPICS:
        broker.create_topic(f"{name}-{topic}", PARTITIONS)
    return workers("tests.apps.foreign:app", {"FOREIGN_NAME": name})


def test_the_source_materials_envelope_is_read_and_written_back_in_its_form(
    broker: Broker, foreign: Worker, name: str
) -> None:
    topic = f"{name}-orders"
    noted = source_material(
        "order-1", "1.0", b'{ "orderId": "order-1", "text": "hi" }', "OrderNoted"
    )
    broker.produce(
        topic,
        [
            NewRecord(b"order-1", source_material("order-1", "1.0", v1_data("order-1", 12345)), 0),
            NewRecord(b"order-2", source_material("order-2", "2.1", v2_data("order-2", "5.50")), 0),
            NewRecord(b"order-3", source_material("order-3", "2", v2_data("order-3", "7")), 0),
            NewRecord(b"order-4", source_material("order-4", "one", v2_data("order-4", "1")), 0),
            NewRecord(b"order-5", source_material("order-5", "3.0", v2_data("order-5", "1")), 0),
            NewRecord(b"order-1", noted, 0),  # a type this code does not know yet
        ],
    )
    foreign.start()
    state = foreign.wait_until(
        "/state",
        lambda s: len(s["views"]["orders"]) == 3 and sum(s["deadLetters"].values()) == 3,
        what="three events applied, three dead-lettered",
    )
    rows = state["views"]["orders"]
    assert rows["order-1"] == {  # "1.0": major 1, upcast to the class's v2
        "amount": "123.45",
        "version": 1,
        "written": "1.0",
        "eventId": "evt-OrderCreated-order-1-1.0",
    }
    assert (rows["order-2"]["amount"], rows["order-2"]["version"], rows["order-2"]["written"]) == (
        "5.50",
        2,
        "2.1",  # a minor change: its extra field is ignored
    )
    assert (rows["order-3"]["version"], rows["order-3"]["written"]) == (2, "2")
    assert state["deadLetters"] == {
        f"{topic}:bad-envelope": 1,
        f"{topic}:newer-version": 1,
        f"{topic}:unknown-type": 1,
    }

    # POST /events takes the same envelope and writes it as it was given.
    posted = call(
        f"{foreign.url}/events/{topic}",
        "POST",
        source_material("order-6", "1.0", v1_data("order-6", 600)),
    )
    assert posted.status == 201, posted.body
    foreign.wait_until(
        "/state",
        lambda s: s["views"]["orders"].get("order-6", {}).get("written") == "1.0",
        what="the posted event applied",
    )
    assert foreign.stop() == 0

    # After the fix, the dead-lettered OrderNoted is replayed, still at "1.0".
    replayed = run_cli(
        "dlq", "replay", "tests.apps.foreign:app", topic,
        "--broker", broker.url, "--data-dir", str(foreign.data_dir),
        env={"FOREIGN_NAME": name, "FOREIGN_FIXED": "1"},
    )  # fmt: skip
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 1 dead letter(s)" in replayed.stdout
    assert "eventVersion must be an integer or a version string" in replayed.stdout
    assert "OrderCreated v3 is newer than this code knows (v2)" in replayed.stdout

    written = {orjson.loads(r.value)["eventId"]: r for r in broker.read(topic)}
    posted_record = written["evt-OrderCreated-order-6-1.0"]
    doc = orjson.loads(posted_record.value)
    assert doc["eventVersion"] == "1.0" and doc["data"]["totalCents"] == 600
    assert dict(posted_record.headers)["eventVersion"] == b"1.0"
    copies = [r for r in broker.read(topic) if r.value != noted and b"OrderNoted" in r.value]
    (copy,) = copies
    doc = orjson.loads(copy.value)
    assert doc["eventVersion"] == "1.0" and doc["data"] == {"orderId": "order-1", "text": "hi"}
    assert dict(copy.headers)["eventVersion"] == b"1.0"
    assert (copy.key, doc["eventId"], doc["correlationId"]) == (
        b"order-1",
        "evt-OrderNoted-order-1-1.0",
        "order-1",
    )


#: Which hash each topic of tests/apps/foreign.py expects its producers to use.
DECLARED = {"orders": "murmur2", "crc-orders": "crc32", "any-orders": "any"}


@KAFKA_ONLY
@pytest.mark.parametrize(
    ("settings", "producer_hash"),
    [((), "crc32"), (("partitioner=murmur2_random",), "murmur2")],
    ids=["kcat-default", "kcat-murmur2_random"],
)
def test_kcat_events_are_folded_where_the_topic_declares_the_producers_partitioner(
    broker: Broker,
    foreign: Worker,
    name: str,
    kafka_bootstrap: str,
    settings: tuple[str, ...],
    producer_hash: str,
) -> None:
    kcat = find_kcat()
    keys = [f"order-{i}" for i in range(24)]
    for topic in TOPICS:
        kcat_produce(
            kcat,
            kafka_bootstrap,
            f"{name}-{topic}",
            [
                (key, source_material(key, "1.0", v1_data(key, 100 + i)))
                for i, key in enumerate(keys)
            ],
            settings,
        )
    # Where kcat put each key, read back: its partitioner is what the test says it is.
    hashes = {"murmur2": partition_for_key, "crc32": crc32_partition}
    for record in broker.read(f"{name}-orders"):
        assert record.partition == hashes[producer_hash](record.key, PARTITIONS)

    def misplaced(declared: str) -> set[str]:
        """Keys a topic declaring ``declared`` finds outside their partition."""
        if declared in ("any", producer_hash):
            return set()
        ours = hashes[declared]
        theirs = hashes[producer_hash]
        return {k for k in keys if ours(k.encode(), PARTITIONS) != theirs(k.encode(), PARTITIONS)}

    expected_letters = {t: misplaced(d) for t, d in DECLARED.items()}
    assert expected_letters["orders" if producer_hash == "crc32" else "crc-orders"], (
        "no key would show the difference"
    )
    foreign.start()
    state = foreign.wait_until(
        "/state",
        lambda s: (
            all(len(s["views"][t]) == len(keys) - len(expected_letters[t]) for t in TOPICS)
            and sum(s["deadLetters"].values()) == sum(map(len, expected_letters.values()))
        ),
        what="every event applied or dead-lettered",
    )
    for topic in TOPICS:
        applied = state["views"][topic]
        assert set(applied) == set(keys) - expected_letters[topic], topic
        for key, row in applied.items():
            assert (row["written"], row["version"]) == ("1.0", 1)
            assert row["amount"] == str(Decimal(100 + keys.index(key)) / 100)
            # A read finds the key where the view's partitioner puts it.
            read = call(f"{foreign.url}/views/{topic}/{key}")
            assert read.status == 200 and read.body == row, (topic, key, read.status)
    assert foreign.stop() == 0

    for topic in TOPICS:
        letters = [
            DeadLetter.from_record(r.key, r.value, r.headers)
            for r in broker.read(dead_letter_topic(name, f"{name}-{topic}"))
        ] if expected_letters[topic] else []  # fmt: skip
        assert {letter.key.decode() for letter in letters} == expected_letters[topic]
        for letter in letters:
            assert letter.kind == "wrong-partition"
            assert f"partitioner {producer_hash}" in letter.reason
            assert f"partitioner={producer_hash!r}" in letter.reason
        if letters:  # the first is logged with its reason (the others are counted)
            log = foreign.logfile.read_text()
            logged = [
                line for line in log.splitlines()
                if "dead letter:" in line and f"{name}-{topic}[" in line
            ]  # fmt: skip
            assert len(logged) == 1 and f"partitioner {producer_hash}" in logged[0], logged
