"""A replicated Kafka cluster, as production runs it: three KRaft nodes, every topic with
three copies, ``min.insync.replicas=2``. Mid-stream the broker leading a source partition
is killed (SIGKILL), later the one leading a changelog partition; HTTP reads go on all
along. No read may fail, no worker may need a restart, and every view must end as the
fold of the events produced (docs/reliability.md).

The cluster is the test's own (ci/kafka/start-cluster.sh), not the session's broker.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from belvedere.streams.clients import KafkaClient
from tests.faults.test_worker_faults import (
    REPLAY,
    SEED,
    Feeder,
    Truth,
    assert_no_dead_letters,
    converge,
    read_views,
)
from tests.support import kafka_outage
from tests.support.brokers import LEDGER_TOPICS, Broker
from tests.support.http import Answer, call
from tests.support.kafka import (
    KafkaCluster,
    KafkaStartFailed,
    kafka_unavailable,
    missing_tools,
    private_kafka_cluster,
)
from tests.support.worker import Worker, wait_for
from tests.test_projections import PARTITIONS

pytestmark = pytest.mark.kafka

APP = "tests.apps.ledger:app"
EVENTS = 12_000
REPLICAS = 3


class Reads(threading.Thread):
    """Reads views over HTTP through every worker, without pause, until stopped: scans
    (gathered from both workers) and single rows (served here or forwarded). Keeps every
    answer that was not a 2xx or 4xx."""

    def __init__(self, crew: list[Worker], keys: list[str]) -> None:
        super().__init__(daemon=True)
        self.paths = ["/views/balances?limit=1000", "/views/revenue?limit=1000"]
        self.paths += [f"/views/balances/{key}" for key in keys]
        self.crew = crew
        self.done = threading.Event()
        self.statuses: Counter[int] = Counter()
        self.failures: list[str] = []

    def run(self) -> None:
        i = 0
        while not self.done.is_set():
            worker = self.crew[i % len(self.crew)]
            path = self.paths[i % len(self.paths)]
            try:
                answer = call(worker.url + path, timeout=30)
            except Exception as exc:  # kept as a failure: the thread must go on reading
                answer = Answer(0, {}, repr(exc).encode())
            self.statuses[answer.status] += 1
            if answer.status == 0 or answer.status >= 500:
                self.failures.append(f"{worker.url}{path}: {answer.status} {answer.body!r:.300}")
            i += 1

    @property
    def count(self) -> int:
        return self.statuses.total()

    def stop(self) -> None:
        self.done.set()
        self.join(60)
        assert not self.is_alive(), "the reads did not stop"


def leader_of(cluster: KafkaCluster, topic: str, partition: int) -> int:
    return cluster.partitions()[(topic, partition)].leader


def all_in_sync(cluster: KafkaCluster) -> bool:
    return all(len(state.isr) == len(state.replicas) for state in cluster.partitions().values())


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[KafkaCluster]:
    """The test's own three-node cluster, stopped (every node, by PID) after the test."""
    missing = missing_tools()
    if missing:
        kafka_unavailable(f"{missing}: the cluster test starts its own three brokers")
    try:
        with private_kafka_cluster(tmp_path / "cluster") as started:
            yield started
    except KafkaStartFailed as exc:
        kafka_unavailable(f"starting the three-node cluster failed: {exc}")


def test_a_replicated_cluster_loses_a_source_leader_then_a_changelog_leader_and_views_stay_exact(
    cluster: KafkaCluster, spawn: Callable[..., Worker], unique_name: str
) -> None:
    rng = random.Random(SEED)
    name = unique_name
    kafka = Broker("kafka", KafkaClient(cluster.bootstrap))
    for topic in LEDGER_TOPICS:
        kafka.client.create_topic(f"{name}-{topic}", PARTITIONS, replication=REPLICAS)
    truth = Truth.make(EVENTS, SEED)
    env = {
        "LEDGER_NAME": name,
        "BELVEDERE_TOPIC_REPLICATION_FACTOR": str(REPLICAS),
        # a session that outlasts the coordinator's move to another broker, as
        # docs/operations.md advises on a cluster: a broker's death is no reason to rebalance
        "BELVEDERE_BROKER_SESSION_TIMEOUT": "30",
    }
    crew = [spawn(APP, kafka.url, env, f"w{i}").start() for i in range(2)]
    pids = [w.proc.pid for w in crew if w.proc is not None]
    for worker in crew:
        wait_for(lambda w=worker: read_views(w, list(truth.views)) is not None, timeout=120,
                 what=f"{worker.url} serving every view")  # fmt: skip

    # every topic the app created has three copies, like the cluster's own
    made = {t: s for (t, _), s in cluster.partitions().items() if t.startswith(name)}
    changelog = f"{name}-view-balances-g1-changelog"
    assert changelog in made, f"no changelog among the app's topics: {sorted(made)}"
    single = sorted(t for t, s in made.items() if len(s.replicas) != REPLICAS)
    assert not single, f"topics with fewer than {REPLICAS} copies: {single}"

    reads = Reads(crew, [f"acct-{i}" for i in range(0, 100, 7)])
    reads.start()
    try:
        schedule: list[str] = []
        t0 = time.monotonic()

        def fault(feeder: Feeder, share: float, topic: str) -> int:
            """Once ``feeder`` is ``share`` of the way through, SIGKILL the node leading a
            partition of ``topic``; returns its node id."""
            wait_for(lambda: feeder.error or feeder.sent >= share * len(feeder.plan),
                     timeout=120, what=f"the feeder {share:.0%} through")  # fmt: skip
            partition = rng.randrange(PARTITIONS)
            node = leader_of(cluster, topic, partition)
            dead[node] = kafka_outage.kill(cluster.nodes[node])
            schedule.append(f"{time.monotonic() - t0:.1f}s: killed node {node}, leader of "
                            f"{topic}[{partition}]")  # fmt: skip
            return node

        # 1. the leader of a source partition dies in the first half of the stream; it is
        # back, and in sync, before the second half
        dead: dict[int, list[str]] = {}
        first_half = Feeder(kafka.client, truth.feed(name, slice(0, 0.5)), chunks=20, seconds=16)
        first_half.start()
        before = reads.count
        first = fault(first_half, 0.3, f"{name}-movements")
        first_half.finish()
        kafka_outage.start_again(cluster.nodes[first], dead.pop(first))
        wait_for(lambda: all_in_sync(cluster), timeout=120, what="every replica back in sync")
        schedule.append(f"{time.monotonic() - t0:.1f}s: node {first} back, all in sync")
        assert reads.count > before, "no reads while the source's leader was down"

        # 2. the leader of a changelog partition dies in the second half, and stays down
        second_half = Feeder(kafka.client, truth.feed(name, slice(0.5, 1)), chunks=20, seconds=16)
        second_half.start()
        before = reads.count
        fault(second_half, 0.3, changelog)
        second_half.finish()
        schedule.append(f"{time.monotonic() - t0:.1f}s: all {EVENTS:,} events produced")

        try:
            converge(crew, truth, timeout=120, what=f"{EVENTS:,} events on a cluster")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nfaults: {schedule}") from None
    finally:
        reads.stop()
    assert reads.count > before, "no reads while the changelog's leader was down"
    assert not reads.failures, (
        f"{len(reads.failures)} of {reads.count} reads failed ({dict(reads.statuses)}): "
        f"{reads.failures[:5]}\n"
        f"faults: {schedule}; {REPLAY}"
    )
    assert [w.proc.pid for w in crew if w.proc is not None] == pids, "a worker was restarted"
    assert all(w.runs == 1 for w in crew)
    assert_no_dead_letters(kafka, name)
