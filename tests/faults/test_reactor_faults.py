"""kill -9 of workers in a group while a concurrent reactor works through its jobs
(tests/apps/reactors.py, on real Kafka): every job is handled at least once, and every
delivery of a job carries its one idempotency key. This runs the whole path through kills
and the rebalances they cause; whether a kill lands between a checkpoint and the end of a
job it stored past is chance here, so tests/test_reactors.py holds a job in flight across a
checkpoint on purpose.

Random choices come from one seed, printed in every failure; ``BELVEDERE_FAULT_SEED=N``
replays a run's choices.
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from belvedere.streams.clients import NewRecord
from tests.support.brokers import Broker
from tests.support.worker import Worker, wait_for
from tests.test_reactors import handled, job, seqs_by_key

pytestmark = pytest.mark.kafka

APP = "tests.apps.reactors:app"
SEED = int(os.environ.get("BELVEDERE_FAULT_SEED") or random.SystemRandom().randrange(1 << 31))
REPLAY = f"seed {SEED} (BELVEDERE_FAULT_SEED={SEED} replays it)"


def test_kill_9_of_workers_skips_no_job_and_repeats_each_with_its_idempotency_key(
    kafka: Broker, spawn: Callable[..., Worker], unique_name: str, tmp_path: Path
) -> None:
    chooser = random.Random(SEED)
    keys = [f"k{i}" for i in range(40)]
    records = [job(k, seq) for seq in range(50) for k in keys]
    every = {value["eventId"] for _, value in records}
    topic = f"{unique_name}-jobs"
    kafka.create_topic(topic, 4)
    kafka.produce(topic, [NewRecord(k.encode(), orjson.dumps(v), 0) for k, v in records])
    log = tmp_path / "log"
    env = {
        "REACTORS_NAME": unique_name,
        "REACTORS_LOG": str(log),
        "REACTORS_PARTITIONS": "4",
        "REACTORS_DELAY": "0.02",  # a few seconds in all: the kills land mid-way
    }
    crew = [spawn(APP, kafka.url, env, data_dir=f"w{i}").start() for i in range(2)]

    def jobs_done() -> int:
        return len({line["eventId"] for line in handled(log)})

    kills = []
    for share in (1, 2, 3):
        wait_for(lambda share=share: jobs_done() >= share * 400, timeout=90, what=REPLAY)
        busy = {line["pid"] for line in handled(log)[-20:]}  # kill one at work
        victim = chooser.choice([i for i, w in enumerate(crew) if w.proc and w.proc.pid in busy])
        kills.append((jobs_done(), victim))
        crew[victim].kill()
        crew[victim].start()
    try:
        wait_for(lambda: jobs_done() == len(every), timeout=120, what="every job")
    except AssertionError as exc:
        missing = sorted(every - {line["eventId"] for line in handled(log)})
        raise AssertionError(f"{exc}\nmissing {missing[:20]}; kills {kills}; {REPLAY}") from None
    keys_of: dict[str, set[str]] = defaultdict(set)
    for line in handled(log):
        keys_of[line["eventId"]].add(line["idempotencyKey"])
    assert keys_of == {e: {f"{unique_name}/work/{e}"} for e in every}, REPLAY
    assert all(sorted(set(seqs)) == list(range(50)) for seqs in seqs_by_key(handled(log)).values())
    repeated = len(handled(log)) - len(every)
    print(f"{repeated} of {len(every)} jobs handled again after kills at {kills}; {REPLAY}")
