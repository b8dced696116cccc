"""Soak: steady events and reads against one worker on real Kafka, for 4 minutes in CI and
30 on demand (BELVEDERE_LONG=1). Memory stays flat, every read is answered, nothing is lost
or applied twice. Read latency is reported, not bounded: a busy machine slows reads while
nothing is wrong (the latency targets are bench/http_lookups.py's)."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from tests.support.brokers import Broker
from tests.support.load import ReadLoad
from tests.support.long import long_variant
from tests.support.metrics import scrape
from tests.support.worker import Worker, wait_for
from tests.test_projections import movements
from tests.test_views_api import scan_all

pytestmark = pytest.mark.kafka

APP = "tests.apps.ledger:app"
EVENTS_PER_S = 200
READS_PER_S = 300
ACCOUNTS = 500
SAMPLE_EVERY = 5.0
#: RSS less RocksDB's memory (which fills its budget, 64 MiB, as blocks are cached and
#: memtables written, and is bounded by it) may grow this much from the end of the first
#: minute to any later sample; a leak of one small object per read or event would pass it
#: within minutes (300 req/s x 180 s = 54,000 reads after the first minute).
RSS_GROWTH_MB = 40
ROCKSDB_BUDGET_MB = 64


def rocksdb_mb(worker: Worker) -> float:
    """The worker's RocksDB memory (block cache and memtables), from its metrics."""
    found = scrape(worker.url).get("belvedere_rocksdb_memory_bytes")
    assert found is not None, "no belvedere_rocksdb_memory_bytes"
    return found / (1 << 20)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


@pytest.mark.parametrize(
    "seconds",
    [
        pytest.param(240, id="240", marks=pytest.mark.timeout(240 + 240)),
        long_variant(1800, id="1800", marks=(pytest.mark.timeout(1800 + 240),)),
    ],
)
def test_a_steady_load_keeps_memory_flat_answers_every_read_and_applies_every_event_once(
    kafka: Broker, spawn: Callable[..., Worker], unique_name: str, seconds: int
) -> None:
    kafka.create_ledger_topics(unique_name)
    records, fold = movements(EVENTS_PER_S * seconds + ACCOUNTS * 4, accounts=ACCOUNTS, seed=81)
    first, rest = records[: ACCOUNTS * 4], records[ACCOUNTS * 4 :]
    kafka.produce(f"{unique_name}-movements", first)  # every account exists before reads
    worker = spawn(APP, kafka.url, {"LEDGER_NAME": unique_name}).start()
    worker.wait_until("/state", lambda s: s["ready"], what="every view serving")
    wait_for(
        lambda: (
            sum(v["ops"] for _, v in scan_all(f"{worker.url}/views/balances", 500)[0]) == len(first)
        ),
        timeout=90,
        what="the first events folded",
    )
    assert worker.proc is not None
    pid = worker.proc.pid
    stop = threading.Event()
    produced: list[int] = []

    def produce() -> None:  # a steady rate, in tenths of a second
        step, started = EVENTS_PER_S // 10, time.monotonic()
        for i in range(0, len(rest), step):
            kafka.produce(f"{unique_name}-movements", rest[i : i + step])
            produced.append(i + step)
            if stop.wait(max(0.0, started + (i + step) / EVENTS_PER_S - time.monotonic())):
                return

    made = {orjson.loads(r.value)["data"]["account"] for r in first}  # what reads may ask
    paths = [f"/views/balances/{k}" for k in sorted(made)]
    load = ReadLoad(lambda: [worker.url], paths, READS_PER_S, seed=82, keep_alive=True)
    producer = threading.Thread(target=produce, daemon=True)
    begun = time.monotonic()
    samples: list[tuple[float, float, float, float]] = []  # t, RSS, RocksDB, load
    load.start()
    producer.start()
    try:
        while producer.is_alive() and time.monotonic() - begun < seconds + 60:
            samples.append(
                (time.monotonic() - begun, rss_mb(pid), rocksdb_mb(worker), os.getloadavg()[0])
            )
            producer.join(SAMPLE_EVERY)
    finally:
        stop.set()
        outcomes = load.stop()
        producer.join(30)
    assert not producer.is_alive() and produced[-1] >= len(rest), "the producer fell behind"

    wait_for(
        lambda: dict(scan_all(f"{worker.url}/views/balances", 500)[0]) == fold,
        timeout=120,
        what="the view equal to the fold of every event",
    )
    assert {o.status for o in outcomes} == {200}, load.counts()
    minutes: dict[int, list[float]] = {}
    for o in outcomes:
        minutes.setdefault(int((o.at - outcomes[0].at) // 60), []).append(o.latency)
    per_minute = {m: round(p99(v) * 1000, 2) for m, v in sorted(minutes.items())}
    by_minute = {int(t // 60): (round(rss), round(db)) for t, rss, db, _ in samples}
    loadavg = {int(t // 60): round(avg, 1) for t, _, _, avg in samples}
    baseline = statistics.median(rss - db for t, rss, db, _ in samples if 50 <= t <= 70)
    peak = max(rss - db for t, rss, db, _ in samples if t > 60)
    figures = (
        f"soak {seconds}s: {len(rest):,} events, {len(outcomes):,} reads, p99 ms per minute "
        f"{per_minute}; RSS less RocksDB {baseline:.0f} MB after a minute, {peak:.0f} MB at "
        f"most later; (RSS, RocksDB) MB by minute {by_minute}; the machine's load average by "
        f"minute {loadavg} (other processes slow reads too)"
    )
    print(figures)
    # every bound is checked, and the figures come with any that failed
    failed = [
        what
        for what, held in (
            (
                f"RocksDB over its {ROCKSDB_BUDGET_MB} MB budget",
                max(db for _, _, db, _ in samples) <= ROCKSDB_BUDGET_MB * 1.05,
            ),
            (f"the rest of RSS grew over {RSS_GROWTH_MB} MB", peak - baseline <= RSS_GROWTH_MB),
        )
        if not held
    ]
    assert not failed, f"{'; '.join(failed)}. {figures}"
