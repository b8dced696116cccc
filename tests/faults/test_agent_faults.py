"""kill -9 of workers running the README's first example (``@app.agent`` into an
``app.Table``, on the engine): the table totals every order exactly once, and so does the
agent that re-keys the same orders with ``stream.group_by``.

On Kafka, two workers share the group while orders arrive and one of them is killed
several times; on the embedded broker (one group member), the one worker is killed while
it folds, and restarted."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from itertools import pairwise

from belvedere.streams.clients import KafkaClient, NewRecord
from tests.faults.test_worker_faults import REPLAY, SEED, Feeder
from tests.support.brokers import Broker
from tests.support.worker import Worker, wait_for
from tests.test_agents import APP, by_amount, orders, revenue, scan

EVENTS = 6_000
KILLS = 3


def create_topics(broker: Broker, name: str) -> None:
    for topic, partitions in (("orders", 4), ("audit", 2), ("echoes", 2), ("legacy", 2)):
        broker.create_topic(f"{name}-{topic}", partitions)


def converge(crew: list[Worker], expected: dict[str, float], what: str) -> None:
    goal = sum(expected.values())
    for worker in crew:

        def caught_up(worker: Worker = worker) -> dict | None:
            try:
                rows = revenue(worker)
            except AssertionError:  # not answering yet
                return None
            return rows if sum(rows.values()) >= goal else None

        try:
            rows = wait_for(caught_up, timeout=180, what=f"{what} via {worker.url}")
        except AssertionError as exc:
            tails = "\n".join(f"--- {w.url} ---\n{w.log_tail(25)}" for w in crew)
            raise AssertionError(f"{exc}\n{REPLAY}\n{tails}") from None
        assert rows == expected, f"revenue via {worker.url} is not the fold; {what}; {REPLAY}"


def test_kill_9_of_agent_workers_totals_every_order_exactly_once(
    broker: Broker, workers: Callable[..., Worker], unique_name: str
) -> None:
    rng = random.Random(SEED)
    create_topics(broker, unique_name)
    records, totals = orders(EVENTS, users=200)
    expected = {user: float(total) for user, total in totals.items()}
    env = {"REVENUE_NAME": unique_name}
    schedule: list[str] = []
    started = time.monotonic()
    if broker.name == "kafka":
        crew = [workers(APP, env, f"w{i}").start() for i in range(2)]
        assert isinstance(broker.client, KafkaClient)
        feed = [(f"{unique_name}-orders", [NewRecord(key, value, 0) for key, value in records])]
        feeder = Feeder(broker.client, feed, chunks=20, seconds=2.5 * KILLS)
        feeder.start()
        for _ in range(KILLS):
            time.sleep(rng.uniform(1.0, 3.0))
            victim = rng.randrange(len(crew))
            schedule.append(f"{time.monotonic() - started:.1f}s: w{victim}")
            crew[victim].kill()
            crew[victim].start()
        feeder.finish()
    else:  # the embedded log is the worker's while it runs: produce between the kills
        crew = [workers(APP, env)]
        chunks = [records[a:b] for a, b in pairwise(range(0, EVENTS + 1, EVENTS // KILLS))]
        for chunk in chunks:
            broker.produce(f"{unique_name}-orders", chunk)
            crew[0].start()
            crew[0].wait_until("/ready", lambda _: True, what="the worker serving")
            time.sleep(rng.uniform(0.0, 0.3))
            schedule.append(f"{time.monotonic() - started:.1f}s")
            crew[0].kill()
        crew[0].start()
    what = f"{EVENTS:,} orders after kills at {schedule}"
    converge(crew, expected, what)
    amounts = by_amount(EVENTS)  # re-keyed through group_by's topic: exact too
    for worker in crew:
        wait_for(lambda w=worker: scan(w, "orders-by-amount") == amounts, timeout=60, what=what)
