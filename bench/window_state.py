"""Bounded state of a windowed view: 10,000,000 events over 30 simulated days, 1-hour retention.

The workload: N ``PageViewed`` events (default 10,000,000) in the standard JSON envelope,
each on one of 1,000 URLs drawn at random (seeded), their event times spread evenly over 30
days, produced into a Kafka topic with 4 partitions keyed by URL before the worker starts.
One Belvedere worker counts them per URL in 1-minute tumbling windows
(``belvedere.Tumbling(minutes=1, retention=timedelta(hours=1))``, an ``app.projection``
into a windowed ``app.view``), in RocksDB with a changelog topic.

While it runs, the bench samples every ``--interval`` seconds: the events folded and the
view's stream time (the lowest of its partitions', as of their last checkpoint) from the
worker's page, the size on disk of its data directory (as ``du`` counts it: allocated
blocks) and of its ``views/`` part, the worker's resident set (``VmRSS``) and its RocksDB
memory (block cache and memtables, the ``belvedere_rocksdb_memory_bytes`` gauge of
``/metrics``). Then it reports, per simulated day (the first sample whose stream time
reached the day's end), the events folded, the sizes and the memory, and from day 1 to the
last day the lowest, highest and change of each. Once all N are folded and checkpointed it checks the last 30 minutes of
windows (every URL's, read back from the view) against the counts the bench computed, and
that no event was late; then it stops the worker. ``--timeout`` bounds the whole run.

The input is produced with ``confluent_kafka`` when it is installed (Quix Streams brings
it; a few hundred thousand messages a second), else with aiokafka; its murmur2 partitioner
is the one Belvedere's view reads use.

Usage (from the repository root):

    python bench/window_state.py [--events N] [--days D] [--keys K] [--interval S]
                                 [--kafka HOST:PORT] [--timeout S] [--json PATH] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the repository root holds the bench package
    sys.path.insert(0, str(REPO))

from bench import harness  # noqa: E402
from bench.projection_throughput import write_dump  # noqa: E402
from bench.window_throughput import START, count_app, url_windows  # noqa: E402

MODULE = "bench.window_state"
PARTITIONS = 4
EVENTS = 10_000_000
DAYS = 30
KEYS = 1000
WINDOW_MS = 60_000
DAY_MS = 24 * 3600 * 1000
RETENTION = timedelta(hours=1)
CHECKED_MS = 30 * 60 * 1000  # the last 30 minutes of windows are checked, well within retention
SEED = 21
MB = 1024 * 1024


# -- the workload ------------------------------------------------------------------------

TEMPLATE = (
    '{"eventId":"view-%d","eventType":"PageViewed","eventVersion":1,"timestamp":"%s",'
    '"correlationId":"view-%d","causationId":null,"producer":"bench","data":{"url":"%s"}}'
)


def events(n: int, days: int, keys: int, truth: Counter[str]) -> Iterator[harness.Message]:
    """The events in event-time order; counts the windows of the last ``CHECKED_MS`` into
    ``truth`` (``"<url>|<window start ms>"``)."""
    start_ms = int(START.timestamp() * 1000)
    span = days * DAY_MS
    checked_from = start_ms + span - CHECKED_MS - WINDOW_MS
    pick = random.Random(SEED).randrange
    second, stamp = -1, ""
    for i in range(n):
        url = f"/page/{pick(keys)}"
        at = start_ms + i * span // n
        if at // 1000 != second:  # the date and time, to the second, once per second
            second = at // 1000
            stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        ts = f"{stamp}.{at % 1000:03d}Z"
        yield url.encode(), (TEMPLATE % (i, ts, i, url)).encode()
        if at >= checked_from:
            truth[f"{url}|{at - at % WINDOW_MS}"] += 1


def produce(bootstrap: str, topic: str, messages: Iterator[harness.Message]) -> int:
    """Produce ``messages`` to ``topic`` (created first); the count, once all are acked."""
    asyncio.run(harness.create_topic(bootstrap, topic, PARTITIONS))
    try:
        import confluent_kafka
    except ImportError:
        return asyncio.run(produce_aiokafka(bootstrap, topic, messages))
    errors: list[Any] = []
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2_random",  # Kafka's murmur2, as Belvedere's partitioner
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
            "delivery.report.only.error": True,
            "on_delivery": lambda err, msg: errors.append(err),
        }
    )
    count = 0
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:  # the local queue is full: let it drain
                producer.poll(0.05)
        count += 1
        if count % 10_000 == 0:
            producer.poll(0)
    left = producer.flush(600)
    if errors or left:
        raise RuntimeError(f"{len(errors)} messages failed, {left} not sent: {errors[:3]}")
    return count


async def produce_aiokafka(bootstrap: str, topic: str, messages: Iterator[harness.Message]) -> int:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    count = 0
    try:
        pending = []
        for key, value in messages:
            pending.append(await producer.send(topic, value, key=key))
            count += 1
            if len(pending) >= 50_000:
                await asyncio.gather(*pending)
                pending = []
        await producer.flush()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return count


# -- the worker app (imported by the worker subprocess, configured by BENCH_* variables) ----


def _belvedere_app() -> Any:
    app, per_minute, progress = count_app(RETENTION)

    @app.page("/bench/")
    async def status(web: Any, request: Any) -> Any:
        body = progress.as_dict()
        try:
            times = [per_minute.stream_time(p) for p in range(PARTITIONS)]
            body["late"] = per_minute.late_count()
        except Exception:  # not every partition served yet
            times = []
        body["stream_time"] = min(times) if times and None not in times else None
        body["python_blocks"] = sys.getallocatedblocks()  # Python's heap, apart from RSS
        if request.query.get("dump"):  # every URL's windows within retention
            body["dumped"] = write_dump(url_windows(per_minute))
        return web.json(body)

    return app


__getattr__ = harness.lazy_apps(__name__, {"app": _belvedere_app})


# -- sampling --------------------------------------------------------------------------------


def disk_bytes(path: Path) -> int:
    """What ``du`` counts under ``path``: the blocks allocated to its files."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # removed meanwhile (a compaction)
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def rss_mb(pid: int) -> float | None:
    """The process's resident set now (VmRSS), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def rocksdb_mb(port: int) -> float | None:
    """The worker's RocksDB memory (block cache and memtables, its ``/metrics`` gauge)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
            text = response.read().decode()
    except (OSError, ValueError):
        return None
    for line in text.splitlines():
        if line.startswith("belvedere_rocksdb_memory_bytes "):
            return round(float(line.split()[1]) / MB, 1)
    return None


def sample(
    worker: harness.WorkerProcess, data_dir: Path, port: int, body: dict[str, Any]
) -> dict[str, Any]:
    return {
        "wall_s": round(time.time() - worker.started, 1),
        "processed": body["processed"],
        "stream_time": body.get("stream_time"),
        "data_dir_mb": round(disk_bytes(data_dir) / MB, 2),
        "views_mb": round(disk_bytes(data_dir / "views") / MB, 2),
        "rss_mb": rss_mb(worker.proc.pid),
        "rocksdb_mb": rocksdb_mb(port),
        "python_blocks": body.get("python_blocks"),
    }


def per_day(samples: list[dict[str, Any]], days: int) -> list[dict[str, Any]]:
    """The first sample at or past each simulated day's end."""
    start_ms = int(START.timestamp() * 1000)
    marks = [(f"day {d}", start_ms + d * DAY_MS) for d in range(1, days + 1)]
    rows = []
    for label, at in marks:
        found = next((s for s in samples if (s["stream_time"] or 0) >= at - WINDOW_MS), None)
        if found is not None:
            rows.append({"at": label, **found})
    return rows


def growth(rows: list[dict[str, Any]], figure: str) -> dict[str, Any]:
    """From day 1 to the last day: the figure at each, its range, and the change."""
    days = [r for r in rows if r["at"].startswith("day")]
    if len(days) < 2 or days[0][figure] is None or days[-1][figure] is None:
        return {}
    values = [r[figure] for r in days if r[figure] is not None]
    first, last = days[0][figure], days[-1][figure]
    return {
        "day_1": first,
        "last_day": last,
        "min": min(values),
        "max": max(values),
        "change_pct": round(100 * (last - first) / first, 1) if first else None,
    }


# -- the run ---------------------------------------------------------------------------------


def run(args: argparse.Namespace, env: harness.Bench) -> dict[str, Any]:
    if env.bootstrap is None:
        raise harness.Failed(env.kafka_problem or "no Kafka broker")
    n = args.events
    name = f"bench-winstate-{uuid.uuid4().hex[:8]}"
    topic = f"{name}-views"
    data_dir = env.work / "belvedere-kafka"
    data_dir.mkdir(parents=True)
    dump = env.work / "windows.json"
    truth: Counter[str] = Counter()
    t = time.monotonic()
    produced = produce(env.bootstrap, topic, events(n, args.days, args.keys, truth))
    produce_s = time.monotonic() - t
    print(f"input: {produced:,} events into {topic} in {produce_s:.1f}s (not measured)", flush=True)
    if produced != n:
        raise harness.Failed(f"produced {produced:,} of {n:,} events")

    port = harness.free_port()
    argv, _ = harness.worker_command(
        "belvedere-kafka", MODULE, Path(__file__), port, data_dir, env.bootstrap, n
    )
    bench_env = {
        "BENCH_NAME": name,
        "BENCH_TOPIC": topic,
        "BENCH_DATA_DIR": str(data_dir),
        "BENCH_DUMP": str(dump),
        "BENCH_KEYS": str(args.keys),
    }
    url = f"http://127.0.0.1:{port}/bench/"
    end_ms = int(START.timestamp() * 1000) + (n - 1) * (args.days * DAY_MS) // n  # the last event
    samples: list[dict[str, Any]] = []
    worker = harness.WorkerProcess(argv, bench_env, env.work / "belvedere-kafka.log")
    deadline = time.monotonic() + args.timeout
    try:
        printed = -1
        while True:
            worker.check_alive()
            if time.monotonic() > deadline:
                raise harness.Failed(f"timed out; last sample {samples[-1:]}\n{worker.log_tail()}")
            body = harness.http_get(url, timeout=30)
            if body is not None:
                samples.append(sample(worker, data_dir, port, body))
                day = ((body.get("stream_time") or 0) - int(START.timestamp() * 1000)) // DAY_MS
                if day > printed:
                    printed = day
                    s = samples[-1]
                    print(
                        f"  day {day}: {s['processed']:,} events, data dir {s['data_dir_mb']} MB,"
                        f" RSS {s['rss_mb']} MB, {s['wall_s']}s",
                        flush=True,
                    )
                if body["processed"] > n:
                    raise harness.Failed(f"the handler ran {body['processed']:,} times")
                if body["processed"] == n and (body.get("stream_time") or 0) >= end_ms - WINDOW_MS:
                    break  # all folded, and every partition's last checkpoint holds its end
            time.sleep(args.interval)
        late = body.get("late")
        peak = worker.peak_rss_mb()
        dump.unlink(missing_ok=True)
        if harness.http_get(url + "?dump=1", timeout=120) is None:
            raise harness.Failed(f"the dump request failed\n{worker.log_tail()}")
        checked = check_windows(dump, truth, end_ms)
    finally:
        worker.stop()
    first = next(s for s in samples if s["processed"] > 0)
    rows = per_day(samples, args.days)
    return {
        "events": n,
        "days": args.days,
        "keys": args.keys,
        "partitions": PARTITIONS,
        "window": "tumbling 1 minute",
        "retention_hours": RETENTION / timedelta(hours=1),
        "produce_s": round(produce_s, 1),
        "wall_s": samples[-1]["wall_s"],
        "events_per_s": round(n / max(samples[-1]["wall_s"] - first["wall_s"], 1e-6)),
        "peak_rss_mb": peak,
        "late": late,
        "windows_checked": checked,
        "data_dir_mb": growth(rows, "data_dir_mb"),
        "views_mb": growth(rows, "views_mb"),
        "rss_mb": growth(rows, "rss_mb"),
        "rocksdb_mb": growth(rows, "rocksdb_mb"),
        "per_day": rows,
        "interval_s": args.interval,
        "loadavg_1m": round(os.getloadavg()[0], 2),
        **harness.machine(),
        "samples": samples,
    }


def check_windows(dump: Path, truth: Counter[str], end_ms: int) -> int:
    """The view's windows of the last ``CHECKED_MS`` against the bench's counts."""
    since = end_ms - CHECKED_MS
    got = {k: v for k, v in json.loads(dump.read_text()).items() if int(k.split("|")[1]) >= since}
    want = {k: v for k, v in truth.items() if int(k.split("|")[1]) >= since}
    wrong = {k: (got.get(k), want.get(k)) for k in got.keys() | want.keys()}
    wrong = {k: v for k, v in wrong.items() if v[0] != v[1]}
    if wrong or not want:
        sample = dict(sorted(wrong.items())[:5])
        raise harness.Failed(
            f"{len(wrong):,} of {len(want):,} windows of the last 30 minutes wrong; "
            f"e.g. {sample} (worker, expected)"
        )
    print(f"  {len(want):,} windows of the last 30 minutes verified", flush=True)
    return len(want)


def table(result: dict[str, Any]) -> str:
    header = (
        f"{'stream time':>12} {'events':>12} {'data dir MB':>12} {'views MB':>9} {'RSS MB':>8} "
        f"{'RocksDB MB':>11}"
    )
    lines = [header, "-" * len(header)]
    for r in result["per_day"]:
        lines.append(
            f"{r['at']:>12} {r['processed']:>12,} {r['data_dir_mb']:>12.1f} "
            f"{r['views_mb']:>9.1f} {harness.fmt(r['rss_mb'], '.0f'):>8} "
            f"{harness.fmt(r['rocksdb_mb'], '.1f'):>11}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    return harness.dispatch(argv, lambda: None, bench)


def bench(argv: list[str]) -> int:
    parser = harness.parser(
        __doc__, EVENTS, ("belvedere-kafka",), REPO / "bench/results/window_state.json"
    )
    parser.set_defaults(timeout=3600)
    parser.add_argument("--days", type=int, default=DAYS, help="simulated days (default 30)")
    parser.add_argument("--keys", type=int, default=KEYS, help="distinct URLs (default 1,000)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between samples")
    args = parser.parse_args(argv)
    print(
        f"{args.events:,} events over {args.days} days, {args.keys:,} keys, {PARTITIONS} "
        f"partitions, retention {RETENTION}; {os.cpu_count()} CPUs",
        flush=True,
    )
    with harness.environment(args.kafka, ["belvedere-kafka"], args.keep) as env:
        try:
            result = run(args, env)
        except (harness.Failed, RuntimeError) as exc:
            print(f"failed: {exc}", flush=True)
            return 1
    print()
    print(table(result))
    for figure in ("data_dir_mb", "views_mb", "rss_mb", "rocksdb_mb"):
        print(f"{figure}: {result[figure]}")
    harness.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
