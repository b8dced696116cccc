"""End-to-end throughput of one stateful workload on Belvedere, plain faust and Quix Streams.

The workload: a topic with 4 partitions is pre-filled with N events (``{"seq": n}``, JSON,
over 1,000 distinct string keys); one worker consumes it and folds every event into a
RocksDB table with ``table[key] += 1`` (4 partitions, changelog topic included). Each
variant runs in its own worker subprocess, with fresh topic names, app id / consumer group
and data directory:

    belvedere-embedded   belvedere.App on the embedded broker (log pre-filled directly)
    belvedere-kafka      belvedere.App on Kafka
    faust-kafka          plain faust.App (store="rocksdb://") on Kafka: the anchor
    quixstreams-kafka    Quix Streams on Kafka, a per-key count in its RocksDB state

The input is written before the worker starts, outside the measured window. The worker
stamps (``time.time()``) its first event and its latest one; the bench polls it (an HTTP
page for belvedere/faust, a status file for Quix, which has no web server) until the table
total equals N, then reports:

    startup_s     worker process start -> first event folded
    processing_s  first event -> N-th event folded
    events_per_s  N / processing_s
    wall_s        worker process start -> N-th event folded

Usage (from the repository root):

    python bench/broker_throughput.py [--events N] [--keys K] [--only VARIANT ...]
                                      [--kafka HOST:PORT] [--timeout S] [--json PATH] [--keep]

``--kafka`` names a running broker; without it the script starts its own from ci/kafka
(Java 17+ and Maven) for the run, and reports the Kafka variants as skipped if that fails.
The machinery (workers, polling, the report) is in bench/harness.py.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if (root := str(Path(__file__).resolve().parents[1])) not in sys.path:
    sys.path.insert(0, root)  # run as a script: the repository root holds the bench package

from bench import harness

MODULE = "bench.broker_throughput"
PARTITIONS = 4
KEYS = 1000
VARIANTS = ("belvedere-embedded", "belvedere-kafka", "faust-kafka", "quixstreams-kafka")


# -- the workload ------------------------------------------------------------------------


def make_events(n: int, keys: int = KEYS) -> list[harness.Message]:
    return [(f"key-{i % keys}".encode(), json.dumps({"seq": i}).encode()) for i in range(n)]


# -- the worker apps (imported by the worker subprocesses, configured by BENCH_* variables) --


def _wire(app: Any) -> Any:
    """The same agent, table and status page on a faust.App or a belvedere.App."""
    topic = harness.input_topic(app, PARTITIONS, "json")
    counts = app.Table("counts", default=int, partitions=PARTITIONS)
    progress = harness.Progress()

    @app.agent(topic, name="count")
    async def count(stream: Any) -> None:
        async for key, _event in stream.items():
            counts[key] += 1
            progress.tick()

    @app.page("/bench/")
    async def status(web: Any, request: Any) -> Any:
        body = progress.as_dict()
        if request.query.get("total"):  # the real table total, read back from RocksDB
            body["total"] = sum(counts.values())
        return web.json(body)

    return app


def _belvedere_app() -> Any:
    import belvedere

    return _wire(belvedere.App(os.environ["BENCH_NAME"]))


__getattr__ = harness.lazy_apps(
    __name__, {"app": _belvedere_app, "faust_app": lambda: _wire(harness.faust_app())}
)


def quix_worker() -> None:
    """The Quix Streams worker: ``python bench/broker_throughput.py quix-worker`` (BENCH_*)."""
    status = harness.QuixStatus()
    latest: dict[str, int] = {}  # each key's count as just written to the state store

    def count(value: Any, key: str, timestamp: int, headers: Any, state: Any) -> None:
        n = state.get("count", 0) + 1
        state.set("count", n)
        latest[key] = n
        if status.tick():
            status.write(total=sum(latest.values()))

    harness.run_quix(count)


# -- running one variant -----------------------------------------------------------------


def table_total(port: int, events: int) -> Callable[[], dict[str, Any] | None]:
    """Read the worker's page: the cheap counter, and the table total once N were folded."""
    url = f"http://127.0.0.1:{port}/bench/"

    def read() -> dict[str, Any] | None:
        body = harness.http_get(url, timeout=10)
        if body is not None and body["processed"] >= events:
            body = harness.http_get(url + "?total=1", timeout=10)
        return body

    return read


def run_variant(
    variant: str,
    events: Sequence[harness.Message],
    work: Path,
    bootstrap: str | None,
    timeout: float,
) -> harness.Result:
    n = len(events)
    name = f"bench-{variant}-{uuid.uuid4().hex[:8]}"
    topic = f"{name}-events"
    data_dir = work / variant
    data_dir.mkdir(parents=True)
    port = harness.free_port()
    env = {"BENCH_NAME": name, "BENCH_TOPIC": topic, "BENCH_DATA_DIR": str(data_dir)}
    embedded = variant == "belvedere-embedded"
    assert embedded or bootstrap is not None
    harness.fill_input(
        data_dir / "broker" if embedded else str(bootstrap), topic, events, PARTITIONS
    )

    argv, more = harness.worker_command(
        variant, MODULE, Path(__file__), port, data_dir, bootstrap, n
    )
    read = table_total(port, n)
    if variant == "quixstreams-kafka":
        read = lambda: harness.file_get(harness.status_file(data_dir))  # noqa: E731

    worker = harness.WorkerProcess(argv, env | more, work / f"{variant}.log")
    try:
        body = harness.wait_for(
            worker,
            read,
            harness.total_reached(n, "table"),
            time.monotonic() + timeout,
            f"{n:,} events",
        )
        rss = worker.peak_rss_mb()
    except harness.Failed as exc:
        return harness.Result(variant, "failed", n, reason=str(exc))
    finally:
        worker.stop()
    return harness.timed(variant, n, worker.started, body, peak_rss_mb=rss)


def main(argv: Sequence[str] | None = None) -> int:
    return harness.dispatch(argv, quix_worker, bench)


def bench(argv: list[str]) -> int:
    parser = harness.parser(__doc__, 100_000, VARIANTS, json_default=None)
    parser.add_argument("--keys", type=int, default=KEYS, help="distinct keys (default 1,000)")
    args = parser.parse_args(argv)
    variants = [v for v in VARIANTS if not args.only or v in args.only]

    harness.describe_machine(args.events, args.keys, PARTITIONS)
    events = make_events(args.events, args.keys)
    results: list[harness.Result] = []
    with harness.environment(args.kafka, variants, args.keep) as env:
        for variant in variants:
            run = functools.partial(
                run_variant, variant, events, env.work, env.bootstrap, args.timeout
            )
            results.append(env.run(variant, args.events, run))

    print()
    print(harness.report(results))
    harness.write_json(args.json, {r.variant: r.as_json() for r in results})
    return harness.exit_status(results)


if __name__ == "__main__":
    sys.exit(main())
