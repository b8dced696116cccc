"""Transforms (tests/apps/flows.py) on both brokers: each kind against a result computed
here, each output once, bad outputs dead-lettered with their reason."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from typing import Any

import orjson
import pytest

import belvedere
from belvedere.streams.embedded.log import Log, NewRecord
from belvedere.streams.outbox import Outbox, sending_to
from belvedere.streams.partitioner import partition_for_key
from tests.support.brokers import Broker
from tests.support.flows import Expected, check_outputs, dead_letters, flows_worker, orders
from tests.support.worker import Worker


class Placed(belvedere.Event, key="order_id"):
    order_id: str


class Other(belvedere.Event, key="order_id"):
    order_id: str


@pytest.fixture
def flows(broker: Broker, workers: Callable[..., Worker], unique_name: str) -> Worker:
    return flows_worker(broker, workers, unique_name)


def test_each_transform_sends_what_its_function_says_once(
    broker: Broker, flows: Worker, unique_name: str
) -> None:
    """Each kind against its result computed here; then the transforms' stores are put
    back behind their changelogs (as a kill between the changelog's append and the local
    write leaves them): the restore takes them forward, and nothing is sent again."""
    first, expected = orders(unique_name, 1_500), orders(unique_name, 2_000)
    broker.produce(f"{unique_name}-orders", first.records)
    flows.start()
    wait_for_all(flows, first)
    assert flows.stop() == 0  # the embedded log is the worker's while it runs
    behind = flows.data_dir.parent / "views-behind"
    shutil.copytree(flows.data_dir / "views", behind)

    broker.produce(f"{unique_name}-orders", expected.records[1_500:])
    flows.start()
    wait_for_all(flows, expected)
    assert flows.stop() == 0
    shutil.rmtree(flows.data_dir / "views")
    behind.rename(flows.data_dir / "views")
    flows.start()
    state = wait_for_all(flows, expected)
    assert flows.stop() == 0

    assert state["deadLetters"] == 0  # this run's: the restore handled nothing again
    check_outputs(broker, unique_name, unique_name, expected)
    letters = dead_letters(broker, unique_name, unique_name)
    assert len(letters) == sum(expected.dead.values())
    receipt = [reason for _, reason in letters if reason.startswith("receipt:")]
    region = [reason for _, reason in letters if reason.startswith("region:")]
    assert len(receipt) == expected.dead["receipt"]
    assert len(region) == expected.dead["region"]
    assert all("Line is not one of" in reason for reason in receipt)
    assert all("returned 'mars', not one of ['eu', 'us']" in reason for reason in region)
    assert {kind for kind, _ in letters} == {"handler-error"}


def wait_for_all(flows: Worker, expected: Expected) -> dict:
    return flows.wait_until(
        "/state",
        lambda s: (
            s["ready"] and s["handled"] == expected.handled and s["totals"] == expected.totals
        ),
        timeout=60,
        what="every order through every transform",
    )


def test_a_bad_transform_declaration_is_refused_at_once(unique_name: str) -> None:
    app = belvedere.App(unique_name)
    placed = app.event_topic(f"{unique_name}-placed", Placed, partitions=2)
    other = app.event_topic(f"{unique_name}-other", Other, partitions=2)
    with pytest.raises(TypeError, match="does not carry Placed"):

        @app.filter(placed, to=other)
        def keep(event: Placed) -> bool:
            return True

    with pytest.raises(TypeError, match="annotate"):

        @app.map(placed, to=other)
        def bare(event):  # no annotation, no events=
            return None

    unsized = app.event_topic(f"{unique_name}-unsized", Placed)
    with pytest.raises(TypeError, match="with partitions="):

        @app.filter(placed, to=unsized)
        def keep_all(event: Placed) -> bool:
            return True

    with pytest.raises(TypeError, match="maps branch names"):
        app.branch(placed, to=[other])  # type: ignore[arg-type]


def test_one_append_writes_to_several_partitions_all_or_nothing(tmp_path) -> None:
    log = Log.acquire(tmp_path / "log")
    try:
        log.create_topic("a", 2)
        log.create_topic("b", 1, compacting=True)
        log.append("a", 1, [NewRecord(b"k", b"0", 0)])
        bases = log.append_atomic(
            [
                ("a", 1, [NewRecord(b"k", b"1", 0), NewRecord(b"k", b"2", 0)]),
                ("b", 0, [NewRecord(b"k", b"x", 0)]),
                ("a", 1, [NewRecord(b"k", b"3", 0)]),
            ]
        )
        assert bases == [1, 0, 3]
        assert [r.value for r in log.read("a", 1, 0)] == [b"0", b"1", b"2", b"3"]
        with pytest.raises(Exception, match="without a key"):  # nothing of it is written
            log.append_atomic([("a", 0, [NewRecord(b"k", b"4", 0)]), ("b", 0, [NewRecord(None, b"y", 0)])])  # fmt: skip
        assert log.end_offset("a", 0) == 0 and log.read("a", 0, 0) == []
    finally:
        log.release()


def test_sends_inside_a_fold_that_buffers_go_to_its_outbox_and_roll_back_with_the_event(
    unique_name: str,
) -> None:
    """What the engine's agents and transforms rely on: ``EventTopic.publish`` and a plain
    topic's ``send`` add to the current outbox (nothing reaches a broker), and an event
    rolled back takes its records back."""
    app = belvedere.App(unique_name, max_event_bytes=1_000)
    placed = app.event_topic(f"{unique_name}-placed", Placed, partitions=2)
    plain = app.topic(f"{unique_name}-plain", key_type=str, value_type=bytes, partitions=3)
    undo: list[Callable[[str], None]] = []
    outbox = Outbox(undo.append)

    async def sends() -> tuple[Any, Any]:
        with sending_to(outbox):
            published = await placed.publish(Placed(order_id="o-1"), event_id="x/1")
            sent = await (await plain.send(key="k", value=b"v"))
            with pytest.raises(ValueError, match=r"over .* limit"):  # not at the checkpoint
                await placed.publish(Placed(order_id="o" * 1_000))
            return published, sent

    published, sent = asyncio.run(sends())
    assert (published.offset, sent.offset) == (-1, -1)
    assert published.partition == partition_for_key(b"o-1", 2)
    assert len(outbox) == 2 and len(undo) == 2
    undo[1]("the second event rolled back")
    [(topic, partition, [(key, value, headers)])] = outbox.take()
    assert (topic, partition, key) == (f"{unique_name}-placed", published.partition, b"o-1")
    assert orjson.loads(value)["eventId"] == "x/1"
    assert ("eventType", b"Placed") in headers
    assert outbox.take() == []
