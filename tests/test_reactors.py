"""Reactors with ``concurrency`` (tests/apps/reactors.py): per-key order with keys at once,
failures and retries, what they publish, a blocked key next to a projection and other keys,
the watermark through kill -9, a stop and a new disk, a stop with the reactor full, and a
rebalance. A job's progress is read from the log its handler appends to."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

import belvedere
from belvedere.streams.clients import NewRecord
from tests.support.brokers import KAFKA_ONLY, Broker
from tests.support.http import call
from tests.support.worker import Worker, wait_for

APP = "tests.apps.reactors:app"


def job(key: str, seq: int, **extra: Any) -> tuple[str, dict[str, Any]]:
    data = {"key": key, "seq": seq, **extra}
    envelope = {"eventId": f"{key}-{seq}", "eventType": "Job", "eventVersion": 1, "data": data}
    return key, {**envelope, "correlationId": f"flow-{key}"}


def produce(worker: Worker, jobs: list[tuple[str, dict[str, Any]]]) -> None:
    """Through the worker: on the embedded broker, while it runs, nothing else can."""
    answer = call(f"{worker.url}/produce", "POST", jobs)
    assert answer.status == 200, answer.raw


def handled(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [orjson.loads(line) for line in log.read_bytes().splitlines() if line.endswith(b"}")]


def seqs_by_key(lines: list[dict[str, Any]]) -> dict[str, list[int]]:
    found: dict[str, list[int]] = defaultdict(list)
    for line in lines:
        found[line["key"]].append(line["seq"])
    return found


class Billing(belvedere.Event):
    user: str


class Paid(Billing):
    amount: int


def test_a_bad_reactor_declaration_raises_one_clear_error(tmp_path: Path) -> None:
    app = belvedere.App("reactors-declared", data_dir=tmp_path / "data")
    app.event_topic("paid", Paid, partitions=1)
    refused = [
        ({"concurrency": 0}, "concurrency must be an int >= 1"),
        ({"concurrency": 2, "key": "nope"}, "key 'nope' is not a field of ['Paid']"),
        ({"key": "user"}, "key= orders concurrent events: pass concurrency="),
        ({"retries": -1}, "retries must be an int >= 0"),
    ]
    for given, error in refused:
        with pytest.raises(ValueError, match=re.escape(error)):
            app.reactor(Paid, **given)(lambda event: None)  # one name: freed each time
    with pytest.raises(TypeError, match=re.escape("takes (event) or (event, ctx)")):
        app.reactor(Paid)(lambda event, ctx, more: None)

    def mail(event: Paid) -> None: ...

    app.reactor(concurrency=2, key="user")(mail)  # an inherited field; the name is free again
    assert app.engine.projections["reactor-mail"].concurrency == 2


@pytest.fixture
def reactors(
    broker: Broker, workers: Callable[..., Worker], unique_name: str, tmp_path: Path
) -> Worker:
    broker.create_topic(f"{unique_name}-jobs", 2)
    return workers(APP, {"REACTORS_NAME": unique_name, "REACTORS_LOG": str(tmp_path / "log")})


def serving(worker: Worker) -> Worker:
    worker.start()
    worker.wait_until("/state", lambda s: s["ready"], what="serving")
    return worker


def test_a_keys_jobs_run_in_order_while_keys_run_at_once_and_a_failure_is_dead_lettered(
    broker: Broker, reactors: Worker, unique_name: str, tmp_path: Path
) -> None:
    serving(reactors)
    # Each of these two waits until the other has started: with one job at a time, neither
    # would ever finish (nor would anything after them).
    produce(reactors, [job("a", 0, meet="b"), job("b", 0, meet="a")])
    keys = [f"k{i}" for i in range(6)]
    produce(reactors, [job(k, seq) for seq in range(25) for k in keys])
    # A job that fails (after its retry) goes to the dead letters; its key's next goes on.
    produce(reactors, [job("f", 0, fail=True), job("f", 1)])
    # Published by the second job of a lane: caused by it, not by the lane's first.
    produce(reactors, [job("p", 0), job("p", 1, publish=True)])
    log = tmp_path / "log"
    wait_for(
        lambda: len(handled(log)) >= 2 + 6 * 25 + 1 + 2,
        timeout=60,
        what="every job handled",
    )
    found = seqs_by_key(handled(log))
    assert found["a"] == found["b"] == [0]
    assert all(found[k] == list(range(25)) for k in keys), dict(found)
    assert found["f"] == [1]
    state = reactors.wait_until("/state", lambda s: s["deadLetters"], what="a dead letter")
    assert state["deadLetters"] == {f"{unique_name}-jobs:handler-error": 1}
    assert state["failed"] == [1, 2]  # tried, and retried once
    sent = wait_for(
        lambda: (a := call(f"{reactors.url}/views/published/p-1")).status == 200 and a,
        timeout=60,
        what="the JobDone",
    )
    assert sent.body == {
        "eventId": f"{unique_name}/work/p-1",
        "correlationId": "flow-p",
        "causationId": "p-1",
    }


def test_a_blocked_key_holds_up_neither_the_projection_nor_the_reactors_other_keys(
    broker: Broker, reactors: Worker, unique_name: str, tmp_path: Path
) -> None:
    serving(reactors)
    # More jobs wait behind the blocked one than the reactor runs at once (4): they take
    # no running slot from other keys.
    produce(reactors, [job("slow", 0, block=True)] + [job("slow", s) for s in range(1, 7)])
    produce(reactors, [job("x", seq) for seq in range(10)])

    def counted(key: str) -> int:
        answer = call(f"{reactors.url}/views/counts/{key}")
        return answer.body if answer.status == 200 else 0

    log = tmp_path / "log"
    wait_for(lambda: counted("x") == 10 and counted("slow") == 7, timeout=60, what="the view")
    wait_for(lambda: seqs_by_key(handled(log))["x"] == list(range(10)), timeout=60, what="x")
    assert "slow" not in seqs_by_key(handled(log))  # still blocked, and its next waits
    assert call(f"{reactors.url}/release").status == 200
    wait_for(lambda: seqs_by_key(handled(log))["slow"] == list(range(7)), timeout=60, what="slow")


@pytest.mark.parametrize("end", ["kill -9", "stop", "kill -9, a new disk"])
def test_a_job_in_flight_at_a_kill_or_stop_is_repeated_with_those_after_it_and_their_keys(
    broker: Broker, reactors: Worker, unique_name: str, tmp_path: Path, end: str
) -> None:
    """A checkpoint taken while a job is in flight stores that job's offset: after a kill
    (or a stop, which waits ``drain_timeout`` for it, then gives up) it is handled again
    (none skipped), and so is every job after it, each with the same idempotency key. On
    a new disk the offset comes from the changelog, as it does to a partition's next owner."""
    reactors.env["REACTORS_DRAIN"] = "0.5"
    records = [job("b", 0, block=True)] + [
        job(f"k{i}", seq) for seq in range(15) for i in range(20)
    ]
    every = {value["eventId"] for _, value in records}
    broker.produce(
        f"{unique_name}-jobs",
        [NewRecord(key.encode(), orjson.dumps(value), 0) for key, value in records],
    )
    log = tmp_path / "log"
    serving(reactors)
    wait_for(lambda: len(handled(log)) == len(every) - 1, timeout=60, what="all but the blocked")

    def checkpointed(state: dict[str, Any]) -> bool:
        progress = state["progress"].values()
        return sum(p["next"] for p in progress) == len(every) and not any(
            p["dirty"] for p in progress
        )

    state = reactors.wait_until("/state", checkpointed, what="a checkpoint after every job")
    assert sorted(p["stored"] for p in state["progress"].values())[0] == 0  # b-0's offset
    if end == "stop":
        assert reactors.stop() == 0
    else:
        reactors.kill()
    if end.endswith("new disk"):
        reactors.data_dir = tmp_path / "new-disk"
    serving(reactors)
    assert call(f"{reactors.url}/release").status == 200
    wait_for(
        lambda: {line["eventId"] for line in handled(log)} == every,
        timeout=60,
        what="every job, none skipped",
    )
    keys_of: dict[str, set[str]] = defaultdict(set)
    for line in handled(log):
        keys_of[line["eventId"]].add(line["idempotencyKey"])
    assert keys_of == {e: {f"{unique_name}/work/{e}"} for e in every}
    b_partition = next(line["partition"] for line in handled(log) if line["key"] == "b")
    again = wait_for(
        lambda: (
            [line for line in handled(log)[len(every) - 1 :] if line["eventId"] != "b-0"] or None
        ),
        timeout=60,
        what="the jobs after b-0 handled again",
    )
    assert {line["partition"] for line in again} == {b_partition}


def test_a_worker_whose_reactor_is_full_of_stuck_jobs_still_stops_and_redoes_them(
    broker: Broker, reactors: Worker, unique_name: str, tmp_path: Path
) -> None:
    """Jobs of one key behind a blocked one fill the reactor (4 x 8 handed over): the fold
    waits for room, holding the engine's lock. A stop gives up on them after
    ``drain_timeout``; the next start handles them all."""
    reactors.env["REACTORS_DRAIN"] = "0.5"
    records = [job("b", 0, block=True)] + [job("b", seq) for seq in range(1, 40)]
    broker.produce(
        f"{unique_name}-jobs",
        [NewRecord(key.encode(), orjson.dumps(value), 0) for key, value in records],
    )
    serving(reactors)
    reactors.wait_until(
        "/state",
        lambda s: sum(p["next"] for p in s["progress"].values()) == 32,  # b-0..b-31 taken
        what="the reactor full",
    )
    assert reactors.stop() == 0
    log = reactors.data_dir.parent / "log"
    assert handled(log) == []
    serving(reactors)
    assert call(f"{reactors.url}/release").status == 200
    wait_for(
        lambda: seqs_by_key(handled(log))["b"] == list(range(40)),
        timeout=60,
        what="every job of b, in order",
    )


@KAFKA_ONLY
def test_a_rebalance_cancels_the_jobs_in_flight_of_a_partition_given_up(
    broker: Broker, reactors: Worker, workers: Callable[..., Worker], unique_name: str
) -> None:
    """A second worker joins while a job is blocked: the partition holding it is given up
    (the job cancelled after ``drain_timeout``), and its next owner handles the job."""
    reactors.env["REACTORS_DRAIN"] = "0.5"
    records = [job("b", 0, block=True)] + [job(f"k{i}", seq) for seq in range(5) for i in range(10)]
    topic = f"{unique_name}-jobs"
    broker.produce(topic, [NewRecord(k.encode(), orjson.dumps(v), 0) for k, v in records])
    b_partition = str(next(r.partition for r in broker.read(topic) if r.key == b"b"))
    log = reactors.data_dir.parent / "log"
    serving(reactors)
    wait_for(lambda: len(handled(log)) == len(records) - 1, timeout=60, what="all but b-0")
    second = serving(workers(APP, reactors.env, data_dir="second"))
    crew = (reactors, second)

    def split() -> Worker | None:
        states = [worker.get("/state") for worker in crew]
        if any(state is None or not state["ready"] for state in states):
            return None
        held = [set(state["progress"]) for state in states]  # type: ignore[index]
        if not all(held) or held[0] & held[1]:
            return None
        return crew[0] if b_partition in held[0] else crew[1]

    owner = wait_for(split, timeout=60, what="the partitions split between the workers")
    print(f"b-0's partition {b_partition} went to the {'first' if owner is reactors else 'second'}")
    assert reactors.get("/state")["cancelled"] == ["b-0"]
    assert call(f"{owner.url}/release").status == 200
    assert owner.proc is not None
    wait_for(
        lambda: [line["pid"] for line in handled(log) if line["key"] == "b"] == [owner.proc.pid],
        timeout=60,
        what="b-0 handled by its partition's owner",
    )
