"""The embedded broker's log: durability, offsets, topics, compaction, locking."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from aiokafka.partitioner import DefaultPartitioner
from yarl import URL

from belvedere.streams.embedded import Log, NewRecord, Transport
from belvedere.streams.errors import BrokerError, TopicMismatch
from belvedere.streams.partitioner import partition_for_key


@pytest.fixture
def log(tmp_path: Path):
    log = Log.acquire(tmp_path / "log")
    yield log
    log.release()


def test_append_and_read_back_every_field(log: Log) -> None:
    log.create_topic("t", 2)
    first = log.append(
        "t",
        1,
        [
            NewRecord(b"k", b"v", 1_700_000_000_123, (("eventType", b"OrderCreated"),)),
            NewRecord(None, None, 5),
        ],
    )
    assert first == 0
    got = log.read("t", 1, 0)
    assert [(r.offset, r.key, r.value, r.timestamp_ms, r.headers) for r in got] == [
        (0, b"k", b"v", 1_700_000_000_123, (("eventType", b"OrderCreated"),)),
        (1, None, None, 5, ()),
    ]
    assert log.end_offset("t", 1) == 2
    assert log.end_offset("t", 0) == 0
    assert log.read("t", 1, 2) == []
    assert [r.offset for r in log.read("t", 1, 1)] == [1]


def test_offsets_are_dense_per_partition_and_reads_are_bounded(log: Log) -> None:
    log.create_topic("t", 1)
    for i in range(25):
        assert log.append("t", 0, [NewRecord(b"k", str(i).encode(), 0)]) == i
    assert [r.offset for r in log.read("t", 0, 10, max_records=5)] == [10, 11, 12, 13, 14]


def test_everything_survives_a_reopen(tmp_path: Path) -> None:
    log = Log.acquire(tmp_path / "log")
    log.create_topic("orders", 3, compacting=True)
    log.append("orders", 2, [NewRecord(b"a", b"1", 0), NewRecord(b"b", b"2", 0)])
    log.commit("group-1", {("orders", 2): 1})
    log.release()

    log = Log.acquire(tmp_path / "log")
    try:
        assert log.partitions("orders") == 3
        assert log.topics["orders"].compacting
        assert log.end_offset("orders", 2) == 2
        assert log.committed("group-1", "orders", 2) == 1
        assert log.committed("group-2", "orders", 2) is None
        assert [r.value for r in log.read("orders", 2, 0)] == [b"1", b"2"]
    finally:
        log.release()


def test_acknowledged_appends_survive_kill_9(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal
        from belvedere.streams.embedded import Log, NewRecord
        log = Log.acquire({str(tmp_path / "log")!r})
        log.create_topic("t", 1)
        for i in range(1000):
            log.append("t", 0, [NewRecord(b"k%d" % i, b"v", 0)])
        log.commit("g", {{("t", 0): 1000}})
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9, proc.stderr
    log = Log.acquire(tmp_path / "log")
    try:
        assert log.end_offset("t", 0) == 1000
        assert len(log.read("t", 0, 0, max_records=5000)) == 1000
        assert log.committed("g", "t", 0) == 1000
    finally:
        log.release()


def test_one_instance_per_path_in_a_process(tmp_path: Path) -> None:
    a = Log.acquire(tmp_path / "log")
    b = Log.acquire(tmp_path / "log")
    assert a is b
    a.release()
    a.create_topic("still-open", 1)  # b still holds it
    b.release()


def test_another_process_is_locked_out(tmp_path: Path) -> None:
    log = Log.acquire(tmp_path / "log")
    try:
        script = (
            f"from belvedere.streams.embedded import Log\nLog.acquire({str(tmp_path / 'log')!r})"
        )
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert proc.returncode == 1
        assert "BrokerLocked: the embedded broker log at" in proc.stderr
        assert f"is in use by process {os.getpid()}" in proc.stderr  # the one to stop
    finally:
        log.release()


def test_topic_declared_again_with_another_partition_count_is_refused(log: Log) -> None:
    log.create_topic("t", 4)
    assert log.create_topic("t", 4).partitions == 4
    with pytest.raises(TopicMismatch, match=r"exists with 4 partition.*but 2 were declared"):
        log.create_topic("t", 2)


def test_unknown_topics_and_partitions_are_clear_errors(log: Log) -> None:
    with pytest.raises(BrokerError, match="unknown topic 'nope'"):
        log.append("nope", 0, [NewRecord(b"k", b"v", 0)])
    log.create_topic("t", 2)
    with pytest.raises(BrokerError, match=r"has 2 partition.*no partition 2"):
        log.read("t", 2, 0)
    with pytest.raises(BrokerError, match="partitions must be >= 1"):
        log.create_topic("zero", 0)


def test_compaction_keeps_the_latest_record_per_key(log: Log) -> None:
    log.create_topic("changelog", 1, compacting=True)
    log.append(
        "changelog",
        0,
        [NewRecord(b"a", b"1", 0), NewRecord(b"b", b"1", 0), NewRecord(b"a", b"2", 0)],
    )
    log.append("changelog", 0, [NewRecord(b"b", None, 0), NewRecord(b"c", b"1", 0)])
    assert log.compact("changelog", 0) == 2
    kept = [(r.offset, r.key, r.value) for r in log.read("changelog", 0, 0)]
    assert kept == [(2, b"a", b"2"), (3, b"b", None), (4, b"c", b"1")]
    assert log.end_offset("changelog", 0) == 5
    assert log.start_offset("changelog", 0) == 0
    assert [r.offset for r in log.read("changelog", 0, 1)] == [2, 3, 4]


def test_compaction_runs_by_itself_as_a_partition_grows(log: Log) -> None:
    log.create_topic("changelog", 1, compacting=True)
    for i in range(10_000):
        log.append("changelog", 0, [NewRecord(b"key-%d" % (i % 10), b"%d" % i, 0)])
    kept = log.read("changelog", 0, 0, max_records=20_000)
    assert len(kept) == 10
    assert sorted(int(r.value) for r in kept) == list(range(9_990, 10_000))


def test_compacted_topics_refuse_records_without_a_key(log: Log) -> None:
    log.create_topic("changelog", 1, compacting=True)
    with pytest.raises(BrokerError, match="cannot take a record without a key"):
        log.append("changelog", 0, [NewRecord(None, b"v", 0)])


def test_keys_land_where_kafkas_default_partitioner_puts_them() -> None:
    kafka = DefaultPartitioner()
    rng = random.Random(7)
    for _ in range(2000):
        key = rng.randbytes(rng.randrange(1, 40))
        n = rng.randrange(1, 64)
        assert partition_for_key(key, n) == kafka(key, list(range(n)), list(range(n)))


def test_fsync_policy_comes_from_the_url() -> None:
    app = type("A", (), {"conf": None})()
    assert Transport([URL("embedded://?fsync=always")], app).fsync is True
    assert Transport([URL("embedded://")], app).fsync is False
    with pytest.raises(BrokerError, match="fsync must be one of never, always"):
        Transport([URL("embedded://?fsync=sometimes")], app)
