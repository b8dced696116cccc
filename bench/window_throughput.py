"""Throughput of a windowed count: clicks per URL per minute on Belvedere and Quix Streams.

The workload: N ``PageViewed`` events (default 200,000) in the standard JSON envelope, each
on one of 1,000 URLs drawn at random (seeded), their event times spread evenly over 24 hours,
pre-produced once into a topic with 4 partitions keyed by URL, which both Kafka variants
read (each with its own consumer group). One worker counts the events per URL in 1-minute
tumbling windows by event time (the envelope's ``timestamp``), kept in RocksDB with a
changelog:

    belvedere-kafka      a windowed ``app.view`` (``belvedere.Tumbling(minutes=1)``, a
                         retention of 2 days so every window can be read back) filled by an
                         ``app.projection``, on Kafka
    belvedere-embedded   the same on the embedded broker
    quixstreams-kafka    Quix Streams: ``tumbling_window(1 minute).count().current()``, the
                         event time taken from the envelope by a timestamp extractor

Each worker stamps its first and latest event (an HTTP page for belvedere, a status file
for Quix); the bench polls until N were counted, then checks every (URL, window) count
against the ones it computed from the events it produced, and reports events/s (first
event to N-th), startup, wall and the worker's peak RSS, as bench/broker_throughput.py does.
``--repeat R`` runs the variants in turn R times (round 1 in order, round 2 reversed, ...),
so load from elsewhere on the machine falls on each alike, and reports the median of each
figure (``statistics.median_low``) and the ratio of the medians, Belvedere to Quix.

Usage (from the repository root):

    python bench/window_throughput.py [--events N] [--keys K] [--only VARIANT ...] [--repeat R]
                                      [--kafka HOST:PORT] [--timeout S] [--json PATH] [--keep]

The machinery (workers, polling, the report) is in bench/harness.py.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the repository root holds the bench package
    sys.path.insert(0, str(REPO))

from bench import harness  # noqa: E402
from bench.broker_throughput import table_total  # noqa: E402
from bench.projection_throughput import Runs, write_dump  # noqa: E402

MODULE = "bench.window_throughput"
PARTITIONS = 4
EVENTS = 200_000
KEYS = 1000
WINDOW_MS = 60_000
SPAN_MS = 24 * 3600 * 1000
RETENTION = timedelta(days=2)  # longer than the span: every window stays to be checked
START = datetime(2026, 1, 1, tzinfo=UTC)
SEED = 21
VARIANTS = ("belvedere-kafka", "quixstreams-kafka", "belvedere-embedded")


# -- the workload ------------------------------------------------------------------------


def envelope(i: int, url: str, at_ms: int) -> bytes:
    """A ``PageViewed`` event in the standard envelope, at ``at_ms`` (ms since the epoch)."""
    ts = datetime.fromtimestamp(at_ms / 1000, UTC).isoformat(timespec="milliseconds")
    return json.dumps(
        {
            "eventId": f"view-{i}",
            "eventType": "PageViewed",
            "eventVersion": 1,
            "timestamp": ts.replace("+00:00", "Z"),
            "correlationId": f"view-{i}",
            "causationId": None,
            "producer": "bench",
            "data": {"url": url},
        }
    ).encode()


def make_events(n: int, keys: int = KEYS) -> tuple[list[harness.Message], dict[str, int]]:
    """The events, in event-time order, and the count per ``"<url>|<window start ms>"``."""
    messages: list[harness.Message] = []
    truth: Counter[str] = Counter()
    start_ms = int(START.timestamp() * 1000)
    pick = random.Random(SEED).randrange
    for i in range(n):
        url = f"/page/{pick(keys)}"
        at = start_ms + i * SPAN_MS // n
        messages.append((url.encode(), envelope(i, url, at)))
        truth[f"{url}|{at - at % WINDOW_MS}"] += 1
    return messages, dict(truth)


# -- the worker apps (imported by the worker subprocesses, configured by BENCH_* variables) --


def count_app(retention: timedelta) -> tuple[Any, Any, harness.Progress]:
    """A worker counting ``PageViewed`` per URL in 1-minute tumbling windows kept for
    ``retention``: the app, its windowed view, and the progress its handler ticks."""
    import belvedere

    class PageViewed(belvedere.Event, key="url"):
        url: str

    app = belvedere.App(os.environ["BENCH_NAME"])
    views = app.event_topic(os.environ["BENCH_TOPIC"], PageViewed, partitions=PARTITIONS)
    window = belvedere.Tumbling(minutes=1, retention=retention)
    per_minute = app.view("per-minute", value=int, window=window)
    progress = harness.Progress()

    @app.projection(views, view=per_minute, events=[PageViewed])
    def count(view: Any, event: Any) -> None:
        view[event.url] = view.get(event.url, 0) + 1
        progress.tick()

    return app, per_minute, progress


def url_windows(view: Any) -> dict[str, int]:
    """Every (URL, window) count the view serves, read back from its stores."""
    out: dict[str, int] = {}
    for i in range(int(os.environ["BENCH_KEYS"])):
        url = f"/page/{i}"
        for start, _end, value in view.windows(url):
            out[f"{url}|{start}"] = value
    return out


def _belvedere_app() -> Any:
    app, per_minute, progress = count_app(RETENTION)

    @app.page("/bench/")
    async def status(web: Any, request: Any) -> Any:
        body = progress.as_dict()
        if request.query.get("total"):  # the real total, read back from RocksDB
            counts = url_windows(per_minute)
            body["total"] = sum(counts.values())
            if request.query.get("dump"):
                body["dumped"] = write_dump(counts)
        return web.json(body)

    return app


__getattr__ = harness.lazy_apps(__name__, {"app": _belvedere_app})


def quix_worker() -> None:
    """The Quix Streams worker: ``python bench/window_throughput.py quix-worker`` (BENCH_*)."""
    status = harness.QuixStatus()
    latest: dict[str, int] = {}  # each (URL, window)'s count as the window last emitted it

    def event_time(value: Any, headers: Any, timestamp: int, kind: Any) -> int:
        stamp = value["timestamp"].replace("Z", "+00:00")
        return int(datetime.fromisoformat(stamp).timestamp() * 1000)

    def seen(result: dict[str, Any], key: Any, timestamp: int, headers: Any) -> None:
        latest[f"{key}|{result['start']}"] = result["value"]
        if status.tick():
            status.write(total=sum(latest.values()), dump=write_dump(latest))

    app = harness.quix_application()
    topic = app.topic(
        os.environ["BENCH_TOPIC"],
        key_deserializer="str",
        value_deserializer="json",
        timestamp_extractor=event_time,
    )
    sdf = app.dataframe(topic).tumbling_window(timedelta(minutes=1)).count().current()
    sdf.update(seen, metadata=True)
    app.run()


# -- running one variant -----------------------------------------------------------------


@dataclass
class Input:
    keys: int
    messages: list[harness.Message]
    truth: dict[str, int]
    kafka_topic: str | None = None  # produced once, read by every Kafka run


def verify(dump: Path, truth: dict[str, int]) -> int:
    """Every (URL, window) count the worker has against the bench's; Failed if any differs."""
    counts = json.loads(dump.read_text())
    wrong = {k: (counts.get(k), truth.get(k)) for k in truth.keys() | counts.keys()}
    wrong = {k: v for k, v in wrong.items() if v[0] != v[1]}
    if wrong:
        sample = dict(sorted(wrong.items())[:5])
        raise harness.Failed(
            f"{len(wrong):,} of {len(truth):,} (URL, minute) counts wrong, {len(counts):,} "
            f"found; e.g. {sample} (worker, expected)"
        )
    return len(counts)


def run_variant(
    variant: str, data: Input, env: harness.Bench, run_id: str, timeout: float, keep: bool
) -> harness.Result:
    n = len(data.messages)
    name = f"bench-win-{variant}-{uuid.uuid4().hex[:8]}"
    data_dir = env.work / run_id
    data_dir.mkdir(parents=True)
    port = harness.free_port()
    dump = data_dir / "dump.json"
    if variant == "belvedere-embedded":
        topic = f"{name}-views"
        harness.fill_input(data_dir / "broker", topic, data.messages, PARTITIONS)
    else:
        assert data.kafka_topic is not None
        topic = data.kafka_topic
    bench_env = {
        "BENCH_NAME": name,
        "BENCH_TOPIC": topic,
        "BENCH_DATA_DIR": str(data_dir),
        "BENCH_DUMP": str(dump),
        "BENCH_KEYS": str(data.keys),
    }
    argv, more = harness.worker_command(
        variant, MODULE, Path(__file__), port, data_dir, env.bootstrap, n
    )
    quix = variant == "quixstreams-kafka"
    read = table_total(port, n)
    if quix:
        read = lambda: harness.file_get(harness.status_file(data_dir))  # noqa: E731

    worker = harness.WorkerProcess(argv, bench_env | more, env.work / f"{run_id}.log")
    extra: dict[str, Any] = {}
    try:
        body = harness.wait_for(
            worker,
            read,
            harness.total_reached(n, "window"),
            time.monotonic() + timeout,
            f"{n:,} events",
        )
        extra["loadavg_1m"] = round(os.getloadavg()[0], 2)  # others on the machine show here
        extra["cpu_s"] = worker.cpu_seconds()
        rss = worker.peak_rss_mb()
        if not quix:
            harness.http_get(f"http://127.0.0.1:{port}/bench/?total=1&dump=1", timeout=60)
        extra["windows_verified"] = verify(dump, data.truth)
        print(f"  {extra['windows_verified']:,} (URL, minute) counts verified", flush=True)
    except harness.Failed as exc:
        return harness.Result(variant, "failed", n, extra=extra, reason=str(exc))
    finally:
        worker.stop()
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    return harness.timed(variant, n, worker.started, body, peak_rss_mb=rss, extra=extra)


def main(argv: Sequence[str] | None = None) -> int:
    return harness.dispatch(argv, quix_worker, bench)


def bench(argv: list[str]) -> int:
    parser = harness.parser(
        __doc__, EVENTS, VARIANTS, REPO / "bench/results/window_throughput.json"
    )
    parser.add_argument("--keys", type=int, default=KEYS, help="distinct URLs (default 1,000)")
    parser.add_argument("--repeat", type=int, default=1, metavar="R", help="rounds; medians")
    args = parser.parse_args(argv)
    variants = [v for v in VARIANTS if not args.only or v in args.only]

    harness.describe_machine(args.events, args.keys, PARTITIONS)
    t = time.monotonic()
    messages, truth = make_events(args.events, args.keys)
    print(f"generated in {time.monotonic() - t:.1f}s: {len(truth):,} (URL, minute) windows")
    data = Input(args.keys, messages, truth)
    results: dict[str, list[harness.Result]] = {v: [] for v in variants}
    with harness.environment(args.kafka, variants, args.keep) as env:
        if env.bootstrap is not None and any(v.endswith("-kafka") for v in variants):
            topic = f"bench-win-views-{uuid.uuid4().hex[:8]}"
            try:
                harness.fill_input(env.bootstrap, topic, messages, PARTITIONS)
                data.kafka_topic = topic
            except Exception as exc:
                env.kafka_problem = f"could not produce the input: {type(exc).__name__}: {exc}"
                env.bootstrap = None
        for i in range(args.repeat):
            order = variants if i % 2 == 0 else variants[::-1]
            for variant in order:
                if args.repeat > 1:
                    print(f"[round {i + 1} of {args.repeat}] ", end="")
                run_id = f"{variant}-{i + 1}"
                result = env.run(
                    variant,
                    args.events,
                    lambda: run_variant(variant, data, env, run_id, args.timeout, args.keep),  # noqa: B023
                )
                results[variant].append(result)

    runs = [Runs(v, args.keys, rs) for v, rs in results.items()]
    print()
    print(report(runs))
    harness.write_json(args.json, summary(runs, args))
    return harness.exit_status(r for rs in results.values() for r in rs)


def ratio(runs: dict[str, Runs], ours: str, other: str) -> float | None:
    us, them = runs.get(ours), runs.get(other)
    if us is None or them is None:
        return None
    a, b = us.median("events_per_s"), them.median("events_per_s")
    return round(a / b, 2) if a and b else None


def report(runs: list[Runs]) -> str:
    by_variant = {r.variant: r for r in runs}
    header = (
        f"{'variant':<20} {'events/s':>10} {'runs':>24} {'wall s':>8} {'peak RSS MB':>12} "
        f"{'vs Quix':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in runs:
        if not r.ok:
            lines.append(f"{r.variant:<20} {r.representative.status}: {r.representative.reason}")
            continue
        each = " / ".join(f"{v:,.0f}" for v in r.samples["events_per_s"])
        vs = ratio(by_variant, r.variant, "quixstreams-kafka")
        lines.append(
            f"{r.variant:<20} {harness.fmt(r.median('events_per_s'), ',.0f'):>10} {each:>24} "
            f"{harness.fmt(r.median('wall_s'), '.2f'):>8} "
            f"{harness.fmt(r.median('peak_rss_mb'), ',.0f'):>12} "
            f"{harness.fmt(vs, '.2f') + 'x' if vs is not None else '-':>8}"
        )
    return "\n".join(lines)


def summary(runs: list[Runs], args: Any) -> dict[str, Any]:
    by_variant = {r.variant: r for r in runs}
    names = {
        "belvedere-kafka": "belvedere_events_per_s",
        "quixstreams-kafka": "quix_events_per_s",
        "belvedere-embedded": "embedded_events_per_s",
    }
    out: dict[str, Any] = {names[r.variant]: r.median("events_per_s") for r in runs}
    out["belvedere_vs_quix"] = ratio(by_variant, "belvedere-kafka", "quixstreams-kafka")
    out["peak_rss_mb"] = {r.variant: r.median("peak_rss_mb") for r in runs}
    out |= {
        "events": args.events,
        "keys": args.keys,
        "partitions": PARTITIONS,
        "window": "tumbling 1 minute",
        "span_hours": SPAN_MS // 3_600_000,
        "repeat": args.repeat,
        "statistic": "median_low" if args.repeat > 1 else "one run",
        "order": "alternating: odd rounds in the order of runs, even rounds reversed",
        **harness.machine(),
        "anchor": "quixstreams-kafka",
        "runs": {r.variant: r.as_json() for r in runs},
    }
    return out


if __name__ == "__main__":
    sys.exit(main())
