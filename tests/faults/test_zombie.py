"""A zombie worker on real Kafka: paused (SIGSTOP) past its session timeout, its partitions
given to the others, then resumed (SIGCONT) with their state still in memory. It must write
nothing for the partitions it lost: no changelog record, no checkpoint, no output event
(belvedere.streams.transactions fences it).

The app is tests/apps/ledger.py; its ``balances`` projection publishes a LargeDeposit for
each deposit of 50 by owner-0, the output counted here by the source event that caused it.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable

import orjson
import pytest

from tests.faults.test_worker_faults import APP, REPLAY, SEED, Feeder, Truth, converge
from tests.support.brokers import Broker
from tests.support.worker import Worker, wait_for
from tests.test_projections import PARTITIONS

pytestmark = pytest.mark.kafka

#: Past Belvedere's default Kafka session timeout (6 s): the group gives the partitions away.
PAUSE = 12.0


def large_deposits(truth: Truth) -> set[str]:
    """The event ids of the deposits the balances projection publishes an alert for."""
    found = set()
    for record in truth.moves:
        envelope = orjson.loads(record.value)
        data = envelope["data"]
        kind = envelope["eventType"]
        if kind == "Deposited" and data["amount"] == 50 and data["owner"] == "owner-0":
            found.add(envelope["eventId"])
    return found


def assert_each_alert_published_once(kafka: Broker, name: str, expected: set[str]) -> None:
    """Read committed, as any downstream consumer of a transactional app must."""
    alerts = kafka.read(f"{name}-alerts")
    causes = Counter(orjson.loads(r.value)["causationId"] for r in alerts)
    twice = {cause: n for cause, n in causes.items() if n > 1}
    assert not twice, (
        f"{len(twice)} events published more than once: {list(twice.items())[:5]}; {REPLAY}"
    )
    assert set(causes) == expected, (
        f"{len(expected - set(causes))} alerts missing, {len(set(causes) - expected)} unexpected; {REPLAY}"
    )


def serving(worker: Worker) -> list[int]:
    parts = worker.get("/partitions")
    if parts is None:
        return []
    return [int(p) for p, s in parts["balances"]["active"].items() if s["state"] == "serving"]


def test_a_worker_paused_past_its_session_and_resumed_writes_nothing_for_the_partitions_it_lost(
    kafka: Broker, spawn: Callable[..., Worker], unique_name: str
) -> None:
    kafka.create_ledger_topics(unique_name)
    truth = Truth.make(100_000, SEED)
    # Each balances event takes a little while, so that folding goes on all the time and a
    # pause lands mid-batch, with uncommitted state in memory, rather than between batches.
    env = {"LEDGER_NAME": unique_name, "LEDGER_BALANCES_DELAY": "0.0003"}
    crew = [spawn(APP, kafka.url, env, f"w{i}").start() for i in range(3)]
    wait_for(
        lambda: sorted(p for w in crew for p in serving(w)) == list(range(PARTITIONS)),
        timeout=120,
        what="three workers serving every partition",
    )
    feeder = Feeder(kafka.client, truth.feed(unique_name), chunks=120, seconds=60.0)
    started = time.monotonic()
    feeder.start()
    schedule = []
    for victim, at in ((0, 8.0), (1, 32.0)):
        time.sleep(max(0.0, started + at - time.monotonic()))  # the fault's timing
        paused = crew[victim]
        held = serving(paused)
        assert paused.proc is not None
        os.kill(paused.proc.pid, signal.SIGSTOP)
        schedule.append(f"{time.monotonic() - started:.1f}s: w{victim} (serving {held}) paused")
        time.sleep(PAUSE)  # the fault: a pause past the session timeout
        os.kill(paused.proc.pid, signal.SIGCONT)
        schedule.append(f"{time.monotonic() - started:.1f}s: w{victim} resumed")
    feeder.finish()
    expected = large_deposits(truth)

    try:
        converge(crew, truth, timeout=240, what=f"100,000 events after pauses {schedule}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\npauses: {schedule}") from None
    dropped = {
        f"w{i}": w.logfile.read_text().count("unwritten since the last checkpoint")
        for i, w in enumerate(crew)
    }
    print(f"pauses: {schedule}; partitions dropped unwritten (fenced): {dropped}")

    # Every worker again, on an empty data directory: the views from the changelogs alone.
    for worker in crew:
        worker.kill()
    fresh = [spawn(APP, kafka.url, env, f"fresh-w{i}").start() for i in range(3)]
    try:
        converge(fresh, truth, timeout=240, what="the views restored from the changelogs alone")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\npauses: {schedule}") from None
    assert_each_alert_published_once(kafka, unique_name, expected)
