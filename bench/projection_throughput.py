"""Throughput of a projection (issue 4): revenue per user on Belvedere, plain faust and Quix.

The job: N ``OrderPlaced`` events (default 200,000) in the standard JSON envelope
(docs/events.md), keyed by user id (default 1,000 users), pre-produced into a topic with 6
partitions; one worker folds them into the sum of order amounts per user, kept in RocksDB
with a changelog topic. Amounts are integer cents (a JSON number), so every sum is exact.
Written four ways, each run in its own worker subprocess with its own app id / consumer
group and data directory:

    belvedere-kafka      an ``app.projection`` into an ``app.view`` (batch path), on Kafka
    faust-kafka          a plain faust agent: orjson-decode the envelope, ``table[user] +=
                         amount`` into ``app.Table(store="rocksdb://")``; the anchor
    quixstreams-kafka    Quix Streams, the sum per user in its RocksDB state
    belvedere-embedded   the Belvedere projection on the embedded broker (its log filled
                         directly through ``belvedere.streams.embedded.Log``)

The Kafka variants read the same input topic (produced once, before the first worker
starts). The input is written outside the measured window. Each worker stamps
(``time.time()``) the first event its handler folds and the latest one; the bench polls a
cheap progress counter (an HTTP page for belvedere/faust, a status file for Quix) until it
reaches N, then reports:

    startup_s     worker process start -> first event folded
    processing_s  first event -> N-th event folded; events_per_s = N / processing_s
    wall_s        worker process start -> N-th event folded
    peak_rss_mb   the worker's VmHWM (/proc/<pid>/status) once all N are folded
    cpu_s         the worker's CPU time (user + system, all threads) at the N-th event;
                  processing_cpu_s is its part since the bench first saw an event folded
                  (a poll interval late), and processing_cpu_share that / processing_s

For belvedere, the handler runs before its batch's checkpoint (RocksDB write batch +
changelog), so the bench also waits for the view's stored source offsets to reach N and
reports when it saw that (``checkpointed_s``, after the first event; to a poll interval).
Then every variant dumps its per-user totals (belvedere: a scan of the view; faust: the
table's items; Quix: the value each key last wrote to its state) and the bench checks
them against the totals it computed from the events it produced.

With ``--recovery`` (belvedere variants only; off by default), once a run is verified the
worker is stopped (SIGTERM), its local view state (``<data dir>/views/``) deleted and the
worker started again; the bench polls the view's ``status`` (per partition, on the same page)
until every partition is serving, checks the restored view against the totals and reports,
under ``"recovery"``: ``records`` (changelog records read, the sum of ``restore_total``),
``rows`` (rows applied, from the engine's log lines), ``recovery_records_per_s`` = records /
(last ``restore_finished`` - first ``restore_started``), ``wall_s`` (process start -> every
partition serving) and the restarted worker's ``peak_rss_mb``. The changelog holds about
one record per changed key per checkpoint, so use many keys (``--keys 1000000``) for a
meaningful figure.

Usage (from the repository root):

    python bench/projection_throughput.py [--events N] [--keys K] [--only VARIANT ...]
        [--kafka HOST:PORT] [--timeout S] [--json PATH] [--keep] [--recovery]

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
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the repo root holds tests.support and bench
    sys.path.insert(0, str(REPO))

from bench.broker_throughput import (  # noqa: E402
    POLL_INTERVAL,
    Failed,
    Progress,
    WorkerProcess,
    _fmt,
    _has_quixstreams,
    fill_embedded,
    fill_kafka,
    free_port,
)
from tests.support.kafka import private_kafka  # noqa: E402

MODULE = "bench.projection_throughput"
PARTITIONS = 6
EVENTS = 200_000
KEYS = 1000
EVENT_TYPE = "OrderPlaced"
ANCHOR = "faust-kafka"
VARIANTS = ("belvedere-kafka", "faust-kafka", "quixstreams-kafka", "belvedere-embedded")
KAFKA_VARIANTS = frozenset(v for v in VARIANTS if v.endswith("-kafka"))
SUMMARY_KEYS = {
    "belvedere-kafka": "belvedere_events_per_s",
    "faust-kafka": "faust_events_per_s",
    "quixstreams-kafka": "quix_events_per_s",
    "belvedere-embedded": "embedded_events_per_s",
}

Message = tuple[bytes, bytes]  # (Kafka key = user id, envelope JSON)


# -- the workload ------------------------------------------------------------------------


def make_events(n: int, keys: int, seed: int = 4) -> tuple[list[Message], dict[str, int]]:
    """``n`` OrderPlaced envelopes over ``keys`` users, and the revenue per user in cents."""
    import orjson

    rng = random.Random(seed)
    start = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
    truth: dict[str, int] = defaultdict(int)
    messages: list[Message] = []
    for i in range(n):
        user = f"user-{rng.randrange(keys)}"
        cents = rng.randrange(100, 100_000)
        event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        ts = (start + timedelta(milliseconds=i)).isoformat(timespec="milliseconds")
        envelope = {
            "eventId": event_id,
            "eventType": EVENT_TYPE,
            "eventVersion": 1,
            "timestamp": ts.replace("+00:00", "Z"),
            "correlationId": event_id,
            "causationId": None,
            "producer": "bench",
            "data": {"orderId": f"order-{i}", "userId": user, "amount": cents},
        }
        messages.append((user.encode(), orjson.dumps(envelope)))
        truth[user] += cents
    return messages, dict(truth)


def write_dump(path: Path, totals: dict[str, int]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(totals))
    tmp.replace(path)


# -- the worker apps (imported by the worker subprocesses, configured by BENCH_* variables) --


def _belvedere_app() -> Any:
    import belvedere

    class OrderPlaced(belvedere.Event, key="user_id"):
        order_id: str
        user_id: str
        amount: int  # cents

    topic_name = os.environ["BENCH_TOPIC"]
    app = belvedere.App(os.environ["BENCH_NAME"])
    orders = app.event_topic(topic_name, OrderPlaced, partitions=PARTITIONS)
    revenue = app.view("revenue", value=int, key=str)
    progress = Progress()

    @app.projection(orders, view=revenue, events=[OrderPlaced])
    def placed(view: Any, event: Any) -> None:
        view[event.user_id] = view.get(event.user_id, 0) + event.amount
        progress.tick()

    @app.page("/bench/")
    async def status(web: Any, request: Any) -> Any:
        body = progress.as_dict()
        # the source offsets in the view's stores: events folded *and* checkpointed
        body["checkpointed"] = sum(
            store.source_offsets().get((topic_name, partition), 0)
            for partition, store in list(revenue.stores.items())
        )
        body["view"] = view_status(revenue)
        if request.query.get("dump"):
            rows, _ = revenue.scan(limit=1 << 40)
            write_dump(Path(os.environ["BENCH_DUMP"]), dict(rows))
            body["dumped"] = len(rows)
        return web.json(body)

    return app


def view_status(view: Any) -> dict[str, dict[str, Any]]:
    """Per view partition: its state and restore figures (PartitionStatus), times as wall clock."""
    now_wall, now_mono = time.time(), time.monotonic()

    def wall(mono: float) -> float | None:  # the engine stamps time.monotonic()
        return now_wall - (now_mono - mono) if mono else None

    return {
        str(partition): {
            "state": status.state,
            "restore_total": status.restore_total,
            "restore_done": status.restore_done,
            "restore_started": wall(status.restore_started),
            "restore_finished": wall(status.restore_finished),
            "restore_s": status.restore_finished - status.restore_started
            if status.restore_finished
            else None,
        }
        for partition, status in sorted(dict(view.status).items())
    }


def _faust_app() -> Any:
    import faust
    import orjson

    app = faust.App(
        os.environ["BENCH_NAME"],
        broker=os.environ["BENCH_BROKER"],
        store="rocksdb://",
        datadir=os.environ["BENCH_DATA_DIR"],
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
    )
    topic = app.topic(
        os.environ["BENCH_TOPIC"],
        partitions=PARTITIONS,
        key_type=str,
        key_serializer="raw",
        value_serializer="raw",
    )
    revenue = app.Table("revenue", default=int, partitions=PARTITIONS)
    progress = Progress()

    @app.agent(topic, name="revenue")
    async def fold(stream: Any) -> None:
        async for value in stream:
            data = orjson.loads(value)["data"]
            revenue[data["userId"]] += data["amount"]
            progress.tick()

    @app.page("/bench/")
    async def status(web: Any, request: Any) -> Any:
        body = progress.as_dict()
        if request.query.get("dump"):
            totals = dict(revenue.items())
            write_dump(Path(os.environ["BENCH_DUMP"]), totals)
            body["dumped"] = len(totals)
        return web.json(body)

    return app


_APPS: dict[str, Callable[[], Any]] = {"app": _belvedere_app, "faust_app": _faust_app}
_built: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    """``bench.projection_throughput:app`` / ``:faust_app``, built on first access in a worker."""
    if name not in _APPS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _built:
        _built[name] = _APPS[name]()
    return _built[name]


def quix_worker() -> None:
    """The Quix Streams worker: ``python bench/projection_throughput.py quix-worker`` (BENCH_*)."""
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
    latest: dict[str, int] = {}  # each user's total as just written to the state store

    def write_status(**extra: Any) -> None:
        tmp = status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**progress.as_dict(), **extra}))
        tmp.replace(status_path)

    def fold(value: Any, key: str, timestamp: int, headers: Any, state: Any) -> None:
        data = value["data"]
        cents = state.get("cents", 0) + data["amount"]
        state.set("cents", cents)
        latest[key] = cents
        progress.tick()
        if progress.processed == 1 or progress.processed % 10_000 == 0:
            write_status()
        if progress.processed == events:
            write_dump(Path(os.environ["BENCH_DUMP"]), latest)
            write_status(dumped=len(latest))

    app.dataframe(topic).update(fold, stateful=True, metadata=True)
    app.run()


# -- running one variant -----------------------------------------------------------------


@dataclass
class Result:
    variant: str
    status: str  # "ok", "skipped" or "failed"
    events: int
    startup_s: float | None = None
    processing_s: float | None = None
    wall_s: float | None = None
    peak_rss_mb: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    @property
    def events_per_s(self) -> float | None:
        if self.processing_s is None:
            return None
        return self.events / self.processing_s if self.processing_s > 0 else float("inf")

    def as_json(self) -> dict[str, Any]:
        if self.status != "ok":
            return {"status": self.status, "reason": self.reason, **self.extra}
        return {
            "events_per_s": round(self.events_per_s or 0.0, 1),
            "wall_s": round(self.wall_s or 0.0, 3),
            "startup_s": round(self.startup_s or 0.0, 3),
            "processing_s": round(self.processing_s or 0.0, 3),
            "peak_rss_mb": self.peak_rss_mb,
            "events": self.events,
            **self.extra,
            "status": "ok",
        }


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set (VmHWM), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)  # kB
    except OSError:
        pass
    return None


def cpu_seconds(pid: int) -> float | None:
    """The process's user + system CPU time so far (all its threads), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def http_get(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None  # not serving yet


def file_get(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def wait_for(
    worker: WorkerProcess,
    read: Callable[[], dict[str, Any] | None],
    done: Callable[[dict[str, Any]], bool],
    deadline: float,
    what: str,
) -> dict[str, Any]:
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        worker.check_alive()
        body = read()
        if body is not None:
            last = body
            if done(body):
                return body
        time.sleep(POLL_INTERVAL)
    raise Failed(f"timed out waiting for {what}; last status {last}\n{worker.log_tail()}")


def verify(dump: Path, truth: dict[str, int]) -> dict[str, Any]:
    """Compare the worker's per-user totals with the bench's; Failed if they differ."""
    try:
        got = json.loads(dump.read_text())
    except (OSError, ValueError) as exc:
        raise Failed(f"no per-user totals from the worker: {exc}") from None
    wrong = [u for u in truth.keys() | got.keys() if got.get(u) != truth.get(u)]
    if wrong:
        sample = {u: {"worker": got.get(u), "expected": truth.get(u)} for u in sorted(wrong)[:5]}
        raise Failed(
            f"{len(wrong):,} of {len(truth):,} users have a wrong total (sum {sum(got.values()):,}"
            f" vs {sum(truth.values()):,} cents); e.g. {sample}"
        )
    return {"users": len(got), "verified": True}


def run_variant(
    variant: str,
    messages: Sequence[Message],
    truth: dict[str, int],
    work: Path,
    bootstrap: str | None,
    kafka_topic: str | None,
    timeout: float,
    recovery: bool = False,
) -> Result:
    n = len(messages)
    name = f"bench-proj-{variant}-{uuid.uuid4().hex[:8]}"
    data_dir = work / variant
    data_dir.mkdir(parents=True)
    port = free_port()
    dump = data_dir / "totals.json"
    status_file = data_dir / "status.json"
    if variant == "belvedere-embedded":
        topic = f"{name}-orders"
        t = time.monotonic()
        fill_embedded(data_dir / "broker", topic, messages, PARTITIONS)
        print(f"  input: {n:,} events in {time.monotonic() - t:.1f}s (not measured)", flush=True)
    else:
        assert bootstrap is not None and kafka_topic is not None
        topic = kafka_topic
    env = {
        "BENCH_NAME": name,
        "BENCH_TOPIC": topic,
        "BENCH_DATA_DIR": str(data_dir),
        "BENCH_DUMP": str(dump),
    }

    url = f"http://127.0.0.1:{port}/bench/"
    read: Callable[[], dict[str, Any] | None] = lambda: http_get(url)  # noqa: E731
    belvedere = [sys.executable, "-m", "belvedere.cli", "worker", f"{MODULE}:app"]
    belvedere += ["--web-port", str(port), "--data-dir", str(data_dir)]
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
        read = lambda: file_get(status_file)  # noqa: E731

    started = time.time()
    worker = WorkerProcess(argv, env, work / f"{variant}.log")
    extra: dict[str, Any] = {}
    rss = None
    try:
        deadline = time.monotonic() + timeout
        cpu_at_first: list[float | None] = []  # CPU time when the first event was seen folded

        def all_folded(body: dict[str, Any]) -> bool:
            if not cpu_at_first and body.get("first_at") is not None:
                cpu_at_first.append(cpu_seconds(worker.proc.pid))
            return body["processed"] >= n

        body = wait_for(worker, read, all_folded, deadline, f"{n:,} events")
        cpu = cpu_seconds(worker.proc.pid)
        if body["processed"] > n:
            raise Failed(f"the handler ran {body['processed']:,} times for {n:,} events")
        first, last = float(body["first_at"]), float(body["last_at"])
        if cpu is not None and cpu_at_first and cpu_at_first[0] is not None:
            extra["cpu_s"] = round(cpu, 2)
            extra["processing_cpu_s"] = round(cpu - cpu_at_first[0], 2)
            extra["processing_cpu_share"] = round(
                (cpu - cpu_at_first[0]) / max(last - first, 1e-6), 2
            )
        if variant.startswith("belvedere"):
            body = wait_for(
                worker, read, lambda b: b["checkpointed"] >= n, deadline, "the last checkpoint"
            )
            extra["checkpointed_s"] = round(time.time() - first, 3)
        rss = peak_rss_mb(worker.proc.pid)  # before the dump, which reads the whole view
        # (Quix wrote its totals with the N-th event; the others write them when asked)
        if variant != "quixstreams-kafka" and http_get(url + "?dump=1") is None:
            raise Failed(f"the dump request failed\n{worker.log_tail()}")
        extra |= verify(dump, truth)
        if recovery and variant.startswith("belvedere"):
            worker.stop()
            log = work / f"{variant}-recovery.log"
            extra["recovery"] = measure_recovery(
                argv, env, log, data_dir, url, dump, truth, n, timeout
            )
    except Failed as exc:
        return Result(variant, "failed", n, peak_rss_mb=rss, extra=extra, reason=str(exc))
    finally:
        worker.stop()
    return Result(
        variant,
        "ok",
        n,
        startup_s=first - started,
        processing_s=last - first,
        wall_s=last - started,
        peak_rss_mb=rss,
        extra=extra,
    )


RESTORED_LINE = re.compile(
    r"view revenue\[(\d+)\](?: g\d+)?: restored (\d+) rows from the changelog "
    r"\((\d+) dropped, (\d+) repaired\)"
)


def measure_recovery(
    argv: list[str],
    env: dict[str, str],
    log: Path,
    data_dir: Path,
    url: str,
    dump: Path,
    truth: dict[str, int],
    n: int,
    timeout: float,
) -> dict[str, Any]:
    """With the worker stopped: delete its local view state, start it again, time the restore.

        Waits (polling the worker's page) until every view partition is serving, then checks the
        restored view against the ground truth. ``records`` is the changelog records the restore
        read (the sum of ``restore_total``, an offset span: on the embedded broker it includes the
    gaps compaction left), ``rows`` the rows it applied (from the engine's log lines).
    """
    views = data_dir / "views"
    if not views.is_dir():
        raise Failed(f"no local view state at {views}")
    shutil.rmtree(views)
    dump.unlink(missing_ok=True)
    started = time.time()
    worker = WorkerProcess(argv, env, log)
    try:
        deadline = time.monotonic() + timeout

        def all_serving(body: dict[str, Any]) -> bool:
            parts = body.get("view", {})
            return len(parts) == PARTITIONS and all(p["state"] == "serving" for p in parts.values())

        body = wait_for(
            worker, lambda: http_get(url), all_serving, deadline, "every view partition serving"
        )
        seen = time.time()
        rss = peak_rss_mb(worker.proc.pid)
        parts = body["view"]
        records = sum(p["restore_total"] for p in parts.values())
        done = sum(p["restore_done"] for p in parts.values())
        first = min(p["restore_started"] for p in parts.values())
        last = max(p["restore_finished"] for p in parts.values())
        if http_get(url + "?dump=1") is None:
            raise Failed(f"the dump request after the restore failed\n{worker.log_tail()}")
        checked = verify(dump, truth)
        after = http_get(url) or {}
        lines = [m.groups() for m in RESTORED_LINE.finditer(log.read_text(errors="replace"))]
    finally:
        worker.stop()
    restore_s = last - first
    # the embedded broker's compaction leaves offset gaps, so there rows can be < records
    rows = sum(int(g[1]) for g in lines) if lines else None
    return {
        "recovery_records_per_s": round(records / restore_s, 1) if restore_s > 0 else None,
        "rows_per_s": round(rows / restore_s, 1) if rows is not None and restore_s > 0 else None,
        "records": records,
        "records_done": done,
        "rows": rows,
        "dropped": sum(int(g[2]) for g in lines) if lines else None,
        "repaired": sum(int(g[3]) for g in lines) if lines else None,
        "restore_s": round(restore_s, 3),
        "startup_s": round(first - started, 3),  # process start -> first restore started
        "wall_s": round(last - started, 3),  # process start -> every partition serving
        "seen_serving_s": round(seen - started, 3),  # to a poll interval
        "peak_rss_mb": rss,
        "reprocessed": after.get("processed"),  # events folded again after the restore
        "checkpointed": after.get("checkpointed"),
        "partitions": {
            p: {
                "records": v["restore_total"],
                "restore_s": round(v["restore_s"], 3) if v["restore_s"] is not None else None,
            }
            for p, v in parts.items()
        },
        **checked,
    }


# -- reporting ---------------------------------------------------------------------------


def report(results: list[Result]) -> str:
    anchor = next((r for r in results if r.variant == ANCHOR and r.status == "ok"), None)
    header = (
        f"{'variant':<20} {'events/s':>10} {'wall s':>8} {'startup s':>10} "
        f"{'proc. s':>8} {'peak RSS MB':>12} {'ev/s vs faust':>14} {'wall vs faust':>14}"
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
            f"{_fmt(r.peak_rss_mb, ',.0f'):>12} "
            f"{_fmt(speed, '.2f') + 'x' if speed is not None else '-':>14} "
            f"{_fmt(wall, '.2f') + 'x' if wall is not None else '-':>14}"
        )
    return "\n".join(lines)


def summary(results: list[Result], events: int, keys: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in results:
        out[SUMMARY_KEYS[r.variant]] = round(r.events_per_s, 1) if r.status == "ok" else None
    out["peak_rss_mb"] = {r.variant: r.peak_rss_mb for r in results}
    for r in results:
        if r.variant == "belvedere-kafka" and "recovery" in r.extra:
            out["recovery_records_per_s"] = r.extra["recovery"]["recovery_records_per_s"]
    out |= {
        "events": events,
        "keys": keys,
        "partitions": PARTITIONS,
        "anchor": ANCHOR,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "runs": {r.variant: r.as_json() for r in results},
    }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["quix-worker"]:
        quix_worker()
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=EVENTS, metavar="N")
    parser.add_argument("--keys", type=int, default=KEYS, metavar="K", help="distinct users")
    parser.add_argument("--only", action="append", choices=VARIANTS, metavar="VARIANT")
    parser.add_argument("--kafka", metavar="HOST:PORT", help="use this broker, start none")
    parser.add_argument("--timeout", type=float, default=600, help="per variant, in seconds")
    parser.add_argument(
        "--json",
        type=Path,
        default=REPO / "bench/results/projection.json",
        metavar="PATH",
        help="write the results here (default bench/results/projection.json)",
    )
    parser.add_argument("--keep", action="store_true", help="keep data dirs and worker logs")
    parser.add_argument(
        "--recovery",
        action="store_true",
        help="belvedere: then delete the worker's local view state, restart it and time the "
        "restore from the changelog",
    )
    args = parser.parse_args(argv)
    variants = [v for v in VARIANTS if not args.only or v in args.only]

    print(
        f"{args.events:,} events, {args.keys:,} keys, {PARTITIONS} partitions; "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
        flush=True,
    )
    t = time.monotonic()
    messages, truth = make_events(args.events, args.keys)
    print(f"generated in {time.monotonic() - t:.1f}s: {len(truth):,} users", flush=True)
    work = Path(tempfile.mkdtemp(prefix="belvedere-bench-"))
    results: list[Result] = []
    try:
        with contextlib.ExitStack() as stack:
            bootstrap, kafka_problem, kafka_topic = args.kafka, "", None
            if bootstrap is None and KAFKA_VARIANTS & set(variants):
                print("starting a private Kafka broker (ci/kafka/start.sh) ...", flush=True)
                try:
                    bootstrap = stack.enter_context(private_kafka())
                except (RuntimeError, subprocess.SubprocessError) as exc:
                    output = getattr(exc, "stderr", "") or ""
                    kafka_problem = f"no Kafka broker: {exc}; {str(output)[-300:]}".strip()
            if bootstrap is not None and KAFKA_VARIANTS & set(variants):
                kafka_topic = f"bench-proj-orders-{uuid.uuid4().hex[:8]}"
                t = time.monotonic()
                try:
                    coro = fill_kafka(bootstrap, kafka_topic, messages, PARTITIONS)
                    asyncio.run(asyncio.wait_for(coro, 600))
                    print(
                        f"Kafka input: {len(messages):,} events into {kafka_topic} in "
                        f"{time.monotonic() - t:.1f}s (not measured)",
                        flush=True,
                    )
                except Exception as exc:
                    kafka_problem = f"could not produce the input: {type(exc).__name__}: {exc}"
                    bootstrap = None
            for variant in variants:
                print(f"{variant}:", flush=True)
                if variant in KAFKA_VARIANTS and bootstrap is None:
                    result = Result(variant, "skipped", args.events, reason=kafka_problem)
                elif variant == "quixstreams-kafka" and not _has_quixstreams():
                    reason = "quixstreams is not installed (pip install quixstreams)"
                    result = Result(variant, "skipped", args.events, reason=reason)
                else:
                    try:
                        result = run_variant(
                            variant,
                            messages,
                            truth,
                            work,
                            bootstrap,
                            kafka_topic,
                            args.timeout,
                            args.recovery,
                        )
                    except Exception as exc:  # e.g. the embedded log could not be filled
                        reason = f"{type(exc).__name__}: {exc}"
                        result = Result(variant, "failed", args.events, reason=reason)
                if result.status == "ok":
                    print(
                        f"  {result.events_per_s:,.0f} events/s, wall {result.wall_s:.2f}s, "
                        f"startup {result.startup_s:.2f}s, peak RSS {result.peak_rss_mb} MB, "
                        f"{result.extra.get('users', 0):,} user totals verified",
                        flush=True,
                    )
                    if "recovery" in result.extra:
                        rec = result.extra["recovery"]
                        rate = rec["recovery_records_per_s"]
                        print(
                            f"  recovery: {_fmt(rate, ',.0f')} changelog records/s "
                            f"({rec['records']:,} records, {rec['rows']} rows, in "
                            f"{rec['restore_s']:.2f}s), wall {rec['wall_s']:.2f}s to all "
                            f"serving, peak RSS {rec['peak_rss_mb']} MB, "
                            f"{rec['users']:,} user totals verified",
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
        body = summary(results, args.events, args.keys)
        args.json.write_text(json.dumps(body, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0 if all(r.status != "failed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
