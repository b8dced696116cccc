"""The foundation's promises, each run on the embedded broker and on real Kafka."""

from __future__ import annotations

import shutil
import subprocess

import orjson

from belvedere.streams.dead_letters import DeadLetter, dead_letter_topic
from tests.support.brokers import Broker
from tests.support.worker import Worker, run_cli

PARTITIONS = 4


def numbered(keys: list[str], per_key: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    """Events interleaved across keys, numbered per key from ``start``."""
    return [
        (key.encode(), orjson.dumps({"seq": seq}))
        for seq in range(start, start + per_key)
        for key in keys
    ]


def create_topics(broker: Broker, name: str) -> None:
    broker.create_topic(f"{name}-events", PARTITIONS)
    broker.create_topic(f"{name}-singles", 1)


def expected_folds(keys: list[str], per_key: int) -> dict:
    return {k: {"count": per_key, "last": per_key - 1, "disorder": 0} for k in keys}


def test_agent_consumes_topic_into_rocksdb_table(
    broker: Broker, counter: Worker, unique_name: str
) -> None:
    keys = [f"user-{i}" for i in range(12)]
    create_topics(broker, unique_name)
    broker.produce(f"{unique_name}-events", numbered(keys, 5))

    counter.start()
    state = counter.wait_until("/state", lambda s: s["processed"] == 60, what="60 events processed")

    assert state["folds"] == expected_folds(keys, 5)
    table_dbs = sorted(p.name for p in counter.data_dir.glob("v*/tables/folds-*.db"))
    assert table_dbs == [f"folds-{p}.db" for p in range(PARTITIONS)]


def test_restarted_worker_continues_from_committed_offsets(
    broker: Broker, counter: Worker, unique_name: str
) -> None:
    keys = [f"k{i}" for i in range(8)]
    create_topics(broker, unique_name)
    broker.produce(f"{unique_name}-events", numbered(keys, 50))
    counter.start()
    counter.wait_until("/state", lambda s: s["processed"] == 400, what="first 400 events")
    assert counter.stop() == 0

    broker.produce(f"{unique_name}-events", numbered(keys, 30, start=50))
    counter.start()
    state = counter.wait_until(
        "/state", lambda s: s["folds"] == expected_folds(keys, 80), what="all 640 events folded"
    )
    # The second run read only what the first had not committed: nothing counted twice.
    assert state["processed"] == 240


def test_table_restored_from_changelog_when_local_files_are_deleted(
    broker: Broker, counter: Worker, unique_name: str
) -> None:
    keys = [f"order-{i}" for i in range(20)]
    create_topics(broker, unique_name)
    broker.produce(f"{unique_name}-events", numbered(keys, 10))
    broker.produce(f"{unique_name}-singles", [(k.encode(), b"{}") for k in keys[:5]])
    counter.start()
    before = counter.wait_until("/state", lambda s: s["processed"] == 205, what="205 events")
    assert counter.stop() == 0

    tables = next(counter.data_dir.glob("v*/tables"))
    shutil.rmtree(tables)
    counter.start()
    after = counter.wait_until("/state", lambda s: s["ready"], what="tables restored")

    assert after["folds"] == before["folds"] == expected_folds(keys, 10)
    assert after["singles"] == before["singles"] == {k: 1 for k in keys[:5]}
    assert after["processed"] == 0
    assert sorted(p.name for p in tables.glob("folds-*.db")) == [
        f"folds-{p}.db" for p in range(PARTITIONS)
    ]


def test_topics_with_different_partition_counts_side_by_side(
    broker: Broker, counter: Worker, unique_name: str
) -> None:
    # The worker itself declares its topics (4 and 1 partitions) before subscribing.
    counter.start()
    counter.wait_until("/state", lambda s: s["ready"], what="worker ready")
    assert counter.stop() == 0
    assert broker.partitions(f"{unique_name}-events") == PARTITIONS
    assert broker.partitions(f"{unique_name}-singles") == 1

    keys = [f"s{i}" for i in range(6)]
    broker.produce(f"{unique_name}-events", numbered(keys, 3))
    broker.produce(f"{unique_name}-singles", [(k.encode(), b"{}") for k in keys for _ in range(2)])
    counter.start()
    state = counter.wait_until("/state", lambda s: s["processed"] == 30, what="30 events")
    assert state["folds"] == expected_folds(keys, 3)
    assert state["singles"] == {k: 2 for k in keys}


def test_ten_thousand_keyed_events_keep_per_key_order(
    broker: Broker, counter: Worker, unique_name: str
) -> None:
    keys = [f"account-{i}" for i in range(50)]
    create_topics(broker, unique_name)
    broker.produce(f"{unique_name}-events", numbered(keys, 200))
    counter.start()
    state = counter.wait_until(
        "/state", lambda s: s["processed"] >= 10_000, timeout=180, what="10,000 events"
    )
    assert state["processed"] == 10_000
    assert state["folds"] == expected_folds(keys, 200)


def test_a_plain_topic_dead_letters_bad_input_and_its_agent_goes_on(
    broker: Broker, counter: Worker, unique_name: str
) -> None:
    keys = [f"k{i}" for i in range(4)]
    create_topics(broker, unique_name)
    topic = f"{unique_name}-events"
    good = numbered(keys, 3)
    bad = [(b"k0", b"<not json>"), (b"k1", b'{"seq": ')]
    broker.produce(topic, [*good[:5], bad[0], *good[5:9], bad[1], *good[9:]])

    counter.start()
    state = counter.wait_until(
        "/state",
        lambda s: s["processed"] == len(good) and s["deadLetters"],
        what=f"{len(good)} good events past {len(bad)} bad ones",
    )
    assert state["folds"] == expected_folds(keys, 3)
    assert state["deadLetters"] == {f"{topic}:bad-value": 2}
    assert counter.stop() == 0

    letters = [
        DeadLetter.from_record(r.key, r.value, r.headers)
        for r in broker.read(dead_letter_topic(unique_name, topic))
    ]
    assert sorted((x.key, x.value, x.kind, x.topic) for x in letters) == sorted(
        (key, value, "bad-value", topic) for key, value in bad
    )
    assert all("JSONDecodeError" in x.reason for x in letters), letters

    def dlq(command: str) -> subprocess.CompletedProcess:
        return run_cli(
            "dlq", command, "tests.apps.counter:app", topic,
            "--broker", broker.url, "--data-dir", str(counter.data_dir),
            env={"COUNTER_NAME": unique_name},
        )  # fmt: skip

    listing = dlq("list")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.count("bad-value: JSONDecodeError") == 2, listing.stdout

    replay = dlq("replay")
    assert replay.returncode == 0, replay.stderr
    assert "replayed 2 dead letter(s)" in replay.stdout, replay.stdout
    sent = sorted((r.key, r.value) for r in broker.read(topic) if (r.key, r.value) in bad)
    assert sent == sorted(bad * 2), "a plain topic's dead letters go back as their bytes"
