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

    python bench/broker_throughput.py [--events N] [--only VARIANT ...] [--kafka HOST:PORT]
                                      [--timeout S] [--json PATH] [--keep]

Without ``--kafka``, a private single-node Kafka broker is started with ci/kafka/start.sh
(Java 17+ and Maven needed) and stopped at the end; without it, the Kafka variants are
reported as skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the repo root holds tests.support
    sys.path.insert(0, str(REPO))

from tests.support.kafka import private_kafka  # noqa: E402

MODULE = "bench.broker_throughput"
PARTITIONS = 4
KEYS = 1000
ANCHOR = "faust-kafka"
VARIANTS = ("belvedere-embedded", "belvedere-kafka", "faust-kafka", "quixstreams-kafka")
KAFKA_VARIANTS = frozenset(v for v in VARIANTS if v.endswith("-kafka"))
POLL_INTERVAL = 0.2
STOP_TIMEOUT = 30.0

Event = tuple[bytes, bytes]


# -- the workload ------------------------------------------------------------------------


def make_events(n: int) -> list[Event]:
    return [(f"key-{i % KEYS}".encode(), json.dumps({"seq": i}).encode()) for i in range(n)]


@dataclass
class Progress:
    """What a worker reports: how many events it folded, and when the first and last were."""

    processed: int = 0
    first_at: float | None = None
    last_at: float | None = None

    def tick(self) -> None:
        now = time.time()
        if self.first_at is None:
            self.first_at = now
        self.last_at = now
        self.processed += 1

    def as_dict(self) -> dict[str, Any]:
        return {"processed": self.processed, "first_at": self.first_at, "last_at": self.last_at}


# -- the worker apps (imported by the worker subprocesses, configured by BENCH_* variables) --


def _wire(app: Any) -> Any:
    """The same agent, table and status page on a faust.App or a belvedere.App."""
    topic = app.topic(
        os.environ["BENCH_TOPIC"],
        partitions=PARTITIONS,
        key_type=str,
        key_serializer="raw",
        value_serializer="json",
    )
    counts = app.Table("counts", default=int, partitions=PARTITIONS)
    progress = Progress()

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


def _faust_app() -> Any:
    import faust

    return _wire(
        faust.App(
            os.environ["BENCH_NAME"],
            broker=os.environ["BENCH_BROKER"],
            store="rocksdb://",
            datadir=os.environ["BENCH_DATA_DIR"],
            web_bind="127.0.0.1",
            web_host="127.0.0.1",
        )
    )


_APPS: dict[str, Callable[[], Any]] = {"app": _belvedere_app, "faust_app": _faust_app}
_built: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    """``bench.broker_throughput:app`` / ``:faust_app``, built on first access in a worker."""
    if name not in _APPS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _built:
        _built[name] = _APPS[name]()
    return _built[name]


def quix_worker() -> None:
    """The Quix Streams worker: ``python bench/broker_throughput.py quix-worker`` (BENCH_*)."""
    from quixstreams import Application

    events = int(os.environ["BENCH_EVENTS"])
    status_path = Path(os.environ["BENCH_STATUS"])
    app = Application(
        broker_address=os.environ["BENCH_BOOTSTRAP"],
        consumer_group=os.environ["BENCH_NAME"],
        auto_offset_reset="earliest",
        state_dir=os.environ["BENCH_DATA_DIR"],
        loglevel="INFO",
    )
    topic = app.topic(os.environ["BENCH_TOPIC"], key_deserializer="str", value_deserializer="json")
    progress = Progress()
    latest: dict[str, int] = {}  # each key's count as just written to the state store

    def write_status(**extra: Any) -> None:
        tmp = status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**progress.as_dict(), **extra}))
        tmp.replace(status_path)

    def count(value: Any, key: str, timestamp: int, headers: Any, state: Any) -> None:
        n = state.get("count", 0) + 1
        state.set("count", n)
        latest[key] = n
        progress.tick()
        if progress.processed == 1 or progress.processed % 10_000 == 0:
            write_status()
        if progress.processed == events:
            write_status(total=sum(latest.values()))

    app.dataframe(topic).update(count, stateful=True, metadata=True)
    app.run()


# -- filling the input topic (outside the measured window) -------------------------------


def fill_embedded(
    log_dir: Path, topic: str, events: Sequence[Event], partitions: int = PARTITIONS
) -> None:
    from belvedere.streams.embedded import Log, Record
    from belvedere.streams.partitioner import partition_for_key

    by_partition: dict[int, list[Record]] = defaultdict(list)
    ts = int(time.time() * 1000)
    for key, value in events:
        by_partition[partition_for_key(key, partitions)].append(Record(key, value, ts))
    log = Log.acquire(log_dir)
    try:
        log.create_topic(topic, partitions)
        for partition, records in by_partition.items():
            for i in range(0, len(records), 1000):
                log.append(topic, partition, records[i : i + 1000])
        assert sum(log.end_offset(topic, p) for p in range(partitions)) == len(events)
    finally:
        log.release()


async def fill_kafka(
    bootstrap: str, topic: str, events: Sequence[Event], partitions: int = PARTITIONS
) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    # aiokafka's default partitioner is Kafka's murmur2, as belvedere.streams.partitioner
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in events]
        await producer.flush()
        offsets = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    assert len(offsets) == len(events)


# -- running one variant -----------------------------------------------------------------


@dataclass
class Result:
    variant: str
    status: str  # "ok", "skipped" or "failed"
    events: int
    startup_s: float | None = None
    processing_s: float | None = None
    wall_s: float | None = None
    reason: str = ""

    @property
    def events_per_s(self) -> float | None:
        if self.processing_s is None:
            return None
        return self.events / self.processing_s if self.processing_s > 0 else float("inf")

    def as_json(self) -> dict[str, Any]:
        if self.status != "ok":
            return {"status": self.status, "reason": self.reason}
        return {
            "events_per_s": round(self.events_per_s or 0.0, 1),
            "wall_s": round(self.wall_s or 0.0, 3),
            "startup_s": round(self.startup_s or 0.0, 3),
            "processing_s": round(self.processing_s or 0.0, 3),
            "events": self.events,
            "status": "ok",
        }


class Failed(Exception):
    """A variant that did not complete; its message is the reason reported."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WorkerProcess:
    """One worker subprocess in its own session, its output in a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], logfile: Path) -> None:
        self.logfile = logfile
        with open(logfile, "w") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise Failed(f"worker exited with {code}\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            tail = self.logfile.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "(no log)"
        return "\n".join(f"    | {line}" for line in tail)

    def stop(self) -> None:
        """SIGTERM (a graceful stop), then SIGKILL to the whole session after a grace period."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"  worker {self.proc.pid} did not stop in {STOP_TIMEOUT:.0f}s; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything it left behind in its session
        self.proc.wait()


def poll_until_done(
    worker: WorkerProcess, read: Callable[[], dict[str, Any] | None], events: int, deadline: float
) -> dict[str, Any]:
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        worker.check_alive()
        body = read()
        if body is not None:
            last = body
            if body.get("total") == events:
                return body
            if body.get("total") is not None or body["processed"] > events:
                raise Failed(f"table total is {body.get('total')}, expected {events}: {body}")
        time.sleep(POLL_INTERVAL)
    raise Failed(f"timed out; last status {last}\n{worker.log_tail()}")


def http_status(port: int, events: int) -> Callable[[], dict[str, Any] | None]:
    url = f"http://127.0.0.1:{port}/bench/"

    def get(path: str) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(path, timeout=10) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None  # not serving yet

    def read() -> dict[str, Any] | None:
        body = get(url)
        # the cheap counter first; the table itself is summed once it says N were folded
        if body is not None and body["processed"] >= events:
            body = get(url + "?total=1")
        return body

    return read


def file_status(path: Path) -> Callable[[], dict[str, Any] | None]:
    def read() -> dict[str, Any] | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    return read


def run_variant(
    variant: str, events: Sequence[Event], work: Path, bootstrap: str | None, timeout: float
) -> Result:
    n = len(events)
    name = f"bench-{variant}-{uuid.uuid4().hex[:8]}"
    topic = f"{name}-events"
    data_dir = work / variant
    data_dir.mkdir(parents=True)
    port = free_port()
    env = {"BENCH_NAME": name, "BENCH_TOPIC": topic, "BENCH_DATA_DIR": str(data_dir)}
    status_file = data_dir / "status.json"

    t = time.monotonic()
    if variant == "belvedere-embedded":
        fill_embedded(data_dir / "broker", topic, events)
    else:
        assert bootstrap is not None
        asyncio.run(asyncio.wait_for(fill_kafka(bootstrap, topic, events), 300))
    print(f"  input: {n:,} events in {time.monotonic() - t:.1f}s (not measured)", flush=True)

    belvedere = [sys.executable, "-m", "belvedere.cli", "worker", f"{MODULE}:app"]
    belvedere += ["--web-port", str(port), "--data-dir", str(data_dir)]
    read = http_status(port, n)
    if variant == "belvedere-embedded":
        argv = [*belvedere, "--broker", "embedded://"]
    elif variant == "belvedere-kafka":
        argv = [*belvedere, "--broker", f"kafka://{bootstrap}"]
    elif variant == "faust-kafka":
        env["BENCH_BROKER"] = f"kafka://{bootstrap}"
        argv = [sys.executable, "-m", "faust", "--datadir", str(data_dir)]
        argv += ["-A", f"{MODULE}:faust_app", "worker", "-l", "info", "--web-port", str(port)]
    else:
        env |= {"BENCH_BOOTSTRAP": str(bootstrap), "BENCH_EVENTS": str(n)}
        env["BENCH_STATUS"] = str(status_file)
        argv = [sys.executable, str(Path(__file__).resolve()), "quix-worker"]
        read = file_status(status_file)

    started = time.time()
    worker = WorkerProcess(argv, env, work / f"{variant}.log")
    try:
        body = poll_until_done(worker, read, n, time.monotonic() + timeout)
    except Failed as exc:
        return Result(variant, "failed", n, reason=str(exc))
    finally:
        worker.stop()
    first, last = float(body["first_at"]), float(body["last_at"])
    return Result(
        variant,
        "ok",
        n,
        startup_s=first - started,
        processing_s=last - first,
        wall_s=last - started,
    )


# -- Kafka -------------------------------------------------------------------------------


# -- reporting ---------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(results: list[Result]) -> str:
    anchor = next((r for r in results if r.variant == ANCHOR and r.status == "ok"), None)
    header = (
        f"{'variant':<20} {'events/s':>10} {'wall s':>8} {'startup s':>10} "
        f"{'proc. s':>8} {'ev/s vs faust':>14} {'wall vs faust':>14}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        if r.status != "ok":
            reason = r.reason.splitlines()[0] if r.reason else ""
            lines.append(f"{r.variant:<20} {r.status}: {reason}")
            continue
        speed = wall = None
        if anchor is not None:
            speed = (r.events_per_s or 0) / (anchor.events_per_s or 1)
            wall = (r.wall_s or 0) / (anchor.wall_s or 1)
        lines.append(
            f"{r.variant:<20} {_fmt(r.events_per_s, ',.0f'):>10} {_fmt(r.wall_s, '.2f'):>8} "
            f"{_fmt(r.startup_s, '.2f'):>10} {_fmt(r.processing_s, '.2f'):>8} "
            f"{_fmt(speed, '.2f') + 'x' if speed is not None else '-':>14} "
            f"{_fmt(wall, '.2f') + 'x' if wall is not None else '-':>14}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["quix-worker"]:
        quix_worker()
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, metavar="N")
    parser.add_argument("--only", action="append", choices=VARIANTS, metavar="VARIANT")
    parser.add_argument("--kafka", metavar="HOST:PORT", help="use this broker, start none")
    parser.add_argument("--timeout", type=float, default=600, help="per variant, in seconds")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    parser.add_argument("--keep", action="store_true", help="keep data dirs and worker logs")
    args = parser.parse_args(argv)
    variants = [v for v in VARIANTS if not args.only or v in args.only]

    print(
        f"{args.events:,} events, {KEYS:,} keys, {PARTITIONS} partitions; "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
        flush=True,
    )
    events = make_events(args.events)
    work = Path(tempfile.mkdtemp(prefix="belvedere-bench-"))
    results: list[Result] = []
    try:
        with contextlib.ExitStack() as stack:
            bootstrap, kafka_problem = args.kafka, ""
            if bootstrap is None and KAFKA_VARIANTS & set(variants):
                print("starting a private Kafka broker (ci/kafka/start.sh) ...", flush=True)
                try:
                    bootstrap = stack.enter_context(private_kafka())
                except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                    output = getattr(exc, "stderr", "") or ""
                    kafka_problem = f"no Kafka broker: {exc}; {str(output)[-300:]}".strip()
            for variant in variants:
                print(f"{variant}:", flush=True)
                if variant in KAFKA_VARIANTS and bootstrap is None:
                    result = Result(variant, "skipped", args.events, reason=kafka_problem)
                elif variant == "quixstreams-kafka" and not _has_quixstreams():
                    reason = "quixstreams is not installed (pip install quixstreams)"
                    result = Result(variant, "skipped", args.events, reason=reason)
                else:
                    try:
                        result = run_variant(variant, events, work, bootstrap, args.timeout)
                    except Exception as exc:  # e.g. the input could not be produced
                        reason = f"{type(exc).__name__}: {exc}"
                        result = Result(variant, "failed", args.events, reason=reason)
                if result.status == "ok":
                    print(
                        f"  {result.events_per_s:,.0f} events/s, wall {result.wall_s:.2f}s, "
                        f"startup {result.startup_s:.2f}s",
                        flush=True,
                    )
                else:
                    print(f"  {result.status}: {result.reason}", flush=True)
                results.append(result)
    finally:
        if args.keep:
            print(f"data dirs and worker logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(report(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({r.variant: r.as_json() for r in results}, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0 if all(r.status != "failed" for r in results) else 1


def _has_quixstreams() -> bool:
    import importlib.util

    return importlib.util.find_spec("quixstreams") is not None


if __name__ == "__main__":
    sys.exit(main())
