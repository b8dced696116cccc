"""Throughput of a projection: revenue per user on Belvedere, plain faust and Quix.

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

The Kafka variants read the same input topic (produced once per key count, before the
first worker starts). The input is written outside the measured window. Each worker stamps
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

With ``--rebuild`` (belvedere variants only; off by default), after that (on the running
worker: the first one, or the one the recovery restarted) the bench starts a rebuild of
the view with ``POST /views/revenue/rebuild`` and polls ``GET /views/revenue/rebuild``
(every 50 ms) until its ``state`` is ``idle`` with ``generation`` = the ``building``
generation the POST answered (the new generation replayed the whole source topic, took
over, and the old one is retired). It reports, under ``"rebuild"``:
``rebuild_events_per_s`` = N / (POST -> finished), ``rebuild_s``, ``vs_live`` (rebuild
events/s / the run's events/s, which start at the first event folded), ``vs_live_from_open``
(rebuild events/s / N over the live worker's ``opened_to_last_s``: from its first view
partition starting its restore, the counterpart of a rebuild's POST, to the N-th event;
faust's consumer fetches and unpacks from assignment on, so the first-event window leaves
that work out of the live figure), ``steps`` (from the worker's log lines: when the new
generation was opened, caught up, switched to, and the old one retired),
``replay_events_per_s`` = N / (caught up - opened), ``cpu_share`` (the worker's process
alone), ``helper_processes`` (how many replayed history, belvedere/agents/replay_processes.py,
and ``helpers_peak_rss_mb``, the highest peak RSS one of them reported;
``BELVEDERE_REBUILD_PROCESSES=0`` in the bench's environment replays in the worker's own
process), the handler calls the worker's own process made, a ``timeline`` of the status
and the worker's peak RSS so far; then it checks the rebuilt view against the totals. A rebuild whose status stops changing for 60 s has
failed (as has a recovery that fails): reported under its key, the run's figures stand.

``--repeat R`` runs each variant R times and reports the median (``statistics.median_low``:
the lower middle one for an even R, so always a measured value) of each figure, the run
with the median events/s as the variant's details and every run's figures under
``"samples"``. ``--sweep K1,K2,...`` then runs the ``--sweep-only`` variants (default
belvedere-kafka and quixstreams-kafka) at each of those key counts too, as many times, and
reports events/s and peak RSS (and the recovery and rebuild figures, if asked) per key
count under ``"sweep"``; a key count equal to ``--keys`` reuses the main runs.

Usage (from the repository root):

    python bench/projection_throughput.py [--events N] [--keys K] [--only VARIANT ...]
        [--kafka HOST:PORT] [--timeout S] [--json PATH] [--keep] [--recovery] [--rebuild]
        [--repeat R] [--sweep K1,K2,...] [--sweep-only VARIANT ...]

Without ``--kafka``, a private single-node Kafka broker is started with ci/kafka/start.sh
(Java 17+ and Maven needed) and stopped at the end; without it, the Kafka variants are
reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the repo root holds bench and tests.support
    sys.path.insert(0, str(REPO))

from bench import harness  # noqa: E402

MODULE = "bench.projection_throughput"
PARTITIONS = 6
EVENTS = 200_000
KEYS = 1000
EVENT_TYPE = "OrderPlaced"
VIEW = "revenue"
VARIANTS = (
    "belvedere-kafka",
    "belvedere-agent-kafka",
    "faust-kafka",
    "quixstreams-kafka",
    "belvedere-embedded",
)
SWEEP_VARIANTS = ("belvedere-kafka", "quixstreams-kafka")
SUMMARY_KEYS = {
    "belvedere-kafka": "belvedere_events_per_s",
    "belvedere-agent-kafka": "belvedere_agent_events_per_s",
    "faust-kafka": "faust_events_per_s",
    "quixstreams-kafka": "quix_events_per_s",
    "belvedere-embedded": "embedded_events_per_s",
}
REBUILD_POLL = 0.05  # seconds between two looks at a rebuild's status
REBUILD_STALL = 60.0  # a rebuild whose status did not change for this long has failed


# -- the workload ------------------------------------------------------------------------


def make_events(
    n: int, keys: int, seed: int = 4, distinct: bool = False
) -> tuple[list[harness.Message], dict[str, int]]:
    """``n`` OrderPlaced envelopes over ``keys`` users, and the revenue per user in cents.

    Users are drawn at random (``keys`` bounds the count: 200,000 draws from 1,000,000 ids
    touch 181,243), or with ``distinct`` taken in turn, so ``n`` >= ``keys`` events touch
    every one of them (what a memory bound "at 1,000,000 keys" is about)."""
    import orjson

    rng = random.Random(seed)
    start = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
    truth: dict[str, int] = defaultdict(int)
    messages: list[harness.Message] = []
    for i in range(n):
        user = f"user-{i % keys if distinct else rng.randrange(keys)}"
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


def write_dump(totals: dict[str, int]) -> int:
    """Write a worker's per-user totals where the bench reads them (``BENCH_DUMP``)."""
    path = Path(os.environ["BENCH_DUMP"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(totals))
    tmp.replace(path)
    return len(totals)


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
    revenue = app.view(VIEW, value=int, key=str)
    progress = harness.Progress()

    @app.projection(orders, view=revenue, events=[OrderPlaced])
    def placed(view: Any, event: Any) -> None:
        view[event.user_id] = view.get(event.user_id, 0) + event.amount
        progress.tick()

    return status_page(app, progress, revenue, topic_name)


def _belvedere_agent_app() -> Any:
    """The same fold written as the README's first example: ``@app.agent`` over a plain
    topic, ``revenue[user] += amount`` into ``app.Table``, on the engine."""
    import belvedere

    topic_name = os.environ["BENCH_TOPIC"]
    app = belvedere.App(os.environ["BENCH_NAME"])
    orders = harness.input_topic(app, PARTITIONS, "json")
    revenue = app.Table(VIEW, default=int, partitions=PARTITIONS)
    progress = harness.Progress()

    @app.agent(orders, name="fold")
    async def fold(stream: Any) -> None:
        async for user, envelope in stream.items():
            revenue[user] += envelope["data"]["amount"]
            progress.tick()

    return status_page(app, progress, revenue, topic_name)


def status_page(app: Any, progress: Any, revenue: Any, topic_name: str) -> Any:
    """The bench's page on a belvedere worker: progress, what is checkpointed, the view's
    partitions, and on ``?dump=1`` every row written to ``BENCH_DUMP``."""

    @app.page("/bench/")
    async def status(web: Any, request: Any) -> Any:
        body = progress.as_dict()
        # the source offsets in the view's stores: events folded *and* checkpointed
        body["checkpointed"] = sum(
            store.source_offsets().get((topic_name, partition), 0)
            for partition, store in list(revenue.stores.items())
        )
        body["view"] = view_status(revenue)
        body["generation"] = revenue.generation
        if request.query.get("dump"):
            body["dumped"] = write_dump(dict(revenue.scan(limit=1 << 40)[0]))
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
    import orjson

    app = harness.faust_app()
    topic = harness.input_topic(app, PARTITIONS, "raw")
    revenue = app.Table(VIEW, default=int, partitions=PARTITIONS)
    progress = harness.Progress()

    @app.agent(topic, name=VIEW)
    async def fold(stream: Any) -> None:
        async for value in stream:
            data = orjson.loads(value)["data"]
            revenue[data["userId"]] += data["amount"]
            progress.tick()

    @app.page("/bench/")
    async def status(web: Any, request: Any) -> Any:
        body = progress.as_dict()
        if request.query.get("dump"):
            body["dumped"] = write_dump(dict(revenue.items()))
        return web.json(body)

    return app


__getattr__ = harness.lazy_apps(
    __name__,
    {"app": _belvedere_app, "agent_app": _belvedere_agent_app, "faust_app": _faust_app},
)


def quix_worker() -> None:
    """The Quix Streams worker: ``python bench/projection_throughput.py quix-worker`` (BENCH_*)."""
    status = harness.QuixStatus()
    latest: dict[str, int] = {}  # each user's total as just written to the state store

    def fold(value: Any, key: str, timestamp: int, headers: Any, state: Any) -> None:
        cents = state.get("cents", 0) + value["data"]["amount"]
        state.set("cents", cents)
        latest[key] = cents
        if status.tick():  # the N-th: the totals first, then the status that says so
            status.write(dumped=write_dump(latest))

    harness.run_quix(fold)


# -- running one variant -----------------------------------------------------------------


@dataclass
class Input:
    """One workload: the events over ``keys`` users, their totals, and the Kafka topic."""

    keys: int
    messages: list[harness.Message]
    truth: dict[str, int]
    kafka_topic: str | None = None


def prepare_input(
    env: harness.Bench, n: int, keys: int, kafka: bool, distinct: bool = False
) -> Input:
    """Generate the events; produce them to a new Kafka topic if ``kafka`` (and a broker)."""
    t = time.monotonic()
    messages, truth = make_events(n, keys, distinct=distinct)
    print(f"{keys:,} keys: generated in {time.monotonic() - t:.1f}s, {len(truth):,} users")
    data = Input(keys, messages, truth)
    if kafka and env.bootstrap is not None:
        topic = f"bench-proj-orders-{uuid.uuid4().hex[:8]}"
        try:
            harness.fill_input(env.bootstrap, topic, messages, PARTITIONS)
            data.kafka_topic = topic
        except Exception as exc:
            env.kafka_problem = f"could not produce the input: {type(exc).__name__}: {exc}"
            env.bootstrap = None
    return data


@dataclass
class Options:
    timeout: float
    recovery: bool = False
    rebuild: bool = False
    keep: bool = False


def verify(dump: Path, truth: dict[str, int]) -> dict[str, Any]:
    """Compare the worker's per-user totals with the bench's; Failed if they differ."""
    try:
        got = json.loads(dump.read_text())
    except (OSError, ValueError) as exc:
        raise harness.Failed(f"no per-user totals from the worker: {exc}") from None
    wrong = [u for u in truth.keys() | got.keys() if got.get(u) != truth.get(u)]
    if wrong:
        sample = {u: {"worker": got.get(u), "expected": truth.get(u)} for u in sorted(wrong)[:5]}
        raise harness.Failed(
            f"{len(wrong):,} of {len(truth):,} users have a wrong total (sum {sum(got.values()):,}"
            f" vs {sum(truth.values()):,} cents); e.g. {sample}"
        )
    return {"users": len(got), "verified": True}


def dump_and_verify(
    worker: harness.WorkerProcess, url: str, dump: Path, truth: dict[str, int]
) -> Any:
    """Have a belvedere/faust worker write its totals, and check them."""
    dump.unlink(missing_ok=True)
    if harness.http_get(url + "?dump=1") is None:
        raise harness.Failed(f"the dump request failed\n{worker.log_tail()}")
    return verify(dump, truth)


def all_serving(body: dict[str, Any]) -> bool:
    parts = body.get("view", {})
    return len(parts) == PARTITIONS and all(p["state"] == "serving" for p in parts.values())


def run_variant(
    variant: str, data: Input, env: harness.Bench, run_id: str, opts: Options
) -> harness.Result:
    n = len(data.messages)
    name = f"bench-proj-{variant}-{uuid.uuid4().hex[:8]}"
    data_dir = env.work / run_id
    data_dir.mkdir(parents=True)
    port = harness.free_port()
    dump = data_dir / "totals.json"
    if variant == "belvedere-embedded":
        topic = f"{name}-orders"
        harness.fill_input(data_dir / "broker", topic, data.messages, PARTITIONS)
    else:
        assert env.bootstrap is not None and data.kafka_topic is not None
        topic = data.kafka_topic
    bench_env = {
        "BENCH_NAME": name,
        "BENCH_TOPIC": topic,
        "BENCH_DATA_DIR": str(data_dir),
        "BENCH_DUMP": str(dump),
    }
    argv, more = harness.worker_command(
        variant, MODULE, Path(__file__), port, data_dir, env.bootstrap, n
    )
    bench_env |= more
    url = f"http://127.0.0.1:{port}/bench/"
    read: Callable[[], dict[str, Any] | None] = lambda: harness.http_get(url)  # noqa: E731
    if variant == "quixstreams-kafka":
        read = lambda: harness.file_get(harness.status_file(data_dir))  # noqa: E731
    belvedere = variant.startswith("belvedere")

    worker = harness.WorkerProcess(argv, bench_env, env.work / f"{run_id}.log")
    extra: dict[str, Any] = {}
    rss = None
    try:
        deadline = time.monotonic() + opts.timeout
        cpu_at_first: list[float | None] = []  # CPU time when the first event was seen folded

        def all_folded(body: dict[str, Any]) -> bool:
            if not cpu_at_first and body.get("first_at") is not None:
                cpu_at_first.append(worker.cpu_seconds())
            return body["processed"] >= n

        body = harness.wait_for(worker, read, all_folded, deadline, f"{n:,} events")
        cpu = worker.cpu_seconds()
        extra["loadavg_1m"] = round(os.getloadavg()[0], 2)  # others on the machine show here
        if body["processed"] > n:
            raise harness.Failed(f"the handler ran {body['processed']:,} times for {n:,} events")
        result = harness.timed(variant, n, worker.started, body, extra=extra)
        first, last = float(body["first_at"]), float(body["last_at"])
        if cpu is not None and cpu_at_first and cpu_at_first[0] is not None:
            extra["cpu_s"] = round(cpu, 2)
            extra["processing_cpu_s"] = round(cpu - cpu_at_first[0], 2)
            extra["processing_cpu_share"] = round(
                (cpu - cpu_at_first[0]) / max(last - first, 1e-6), 2
            )
        if belvedere:
            # From the worker opening its view partitions (assigned, restoring) to the N-th
            # event: the live worker's counterpart of a rebuild's POST -> finished.
            opened = [p["restore_started"] for p in body["view"].values() if p["restore_started"]]
            if opened:
                extra["opened_to_last_s"] = round(last - min(opened), 3)
            body = harness.wait_for(
                worker, read, lambda b: b["checkpointed"] >= n, deadline, "the last checkpoint"
            )
            extra["checkpointed_s"] = round(time.time() - first, 3)
        rss = result.peak_rss_mb = worker.peak_rss_mb()  # before the dump reads the whole view
        # (Quix wrote its totals with the N-th event; the others write them when asked)
        if variant == "quixstreams-kafka":
            extra |= verify(dump, data.truth)
        else:
            extra |= dump_and_verify(worker, url, dump, data.truth)
        # a recovery or rebuild that fails is reported under its key; the run's own figures stand
        if opts.recovery and belvedere:
            worker.stop()
            log = env.work / f"{run_id}-recovery.log"
            try:
                extra["recovery"], worker = measure_recovery(
                    argv, bench_env, log, data_dir, url, dump, data.truth, opts.timeout
                )
            except harness.Failed as exc:
                extra["recovery"] = {"status": "failed", "reason": str(exc)}
        if opts.rebuild and belvedere and worker.running:
            live = result.events_per_s or 0.0
            from_open = n / extra["opened_to_last_s"] if extra.get("opened_to_last_s") else 0.0
            try:
                extra["rebuild"] = measure_rebuild(
                    worker, port, dump, data.truth, n, opts.timeout, live, from_open
                )
            except harness.Failed as exc:
                extra["rebuild"] = {"status": "failed", "reason": str(exc)}
    except harness.Failed as exc:
        return harness.Result(variant, "failed", n, peak_rss_mb=rss, extra=extra, reason=str(exc))
    finally:
        worker.stop()
        if not opts.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    return result


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
    timeout: float,
) -> tuple[dict[str, Any], harness.WorkerProcess]:
    """With the worker stopped: delete its local view state, start it again, time the restore.

    Waits (polling the worker's page) until every view partition is serving, then checks the
    restored view against the ground truth. ``records`` is the changelog records the restore
    read (the sum of ``restore_total``, an offset span: on the embedded broker it includes the
    gaps compaction left), ``rows`` the rows it applied (from the engine's log lines). Returns
    the figures and the restarted worker, still running.
    """
    views = data_dir / "views"
    if not views.is_dir():
        raise harness.Failed(f"no local view state at {views}")
    shutil.rmtree(views)
    worker = harness.WorkerProcess(argv, env, log)
    try:
        deadline = time.monotonic() + timeout
        body = harness.wait_for(
            worker,
            lambda: harness.http_get(url),
            all_serving,
            deadline,
            "every view partition serving",
        )
        seen = time.time()
        rss = worker.peak_rss_mb()
        parts = body["view"]
        records = sum(p["restore_total"] for p in parts.values())
        done = sum(p["restore_done"] for p in parts.values())
        first = min(p["restore_started"] for p in parts.values())
        last = max(p["restore_finished"] for p in parts.values())
        checked = dump_and_verify(worker, url, dump, truth)
        after = harness.http_get(url) or {}
        lines = [m.groups() for m in RESTORED_LINE.finditer(log.read_text(errors="replace"))]
    except BaseException:
        worker.stop()
        raise
    restore_s = last - first
    # the embedded broker's compaction leaves offset gaps, so there rows can be < records
    rows = sum(int(g[1]) for g in lines) if lines else None
    figures = {
        "recovery_records_per_s": round(records / restore_s, 1) if restore_s > 0 else None,
        "rows_per_s": round(rows / restore_s, 1) if rows is not None and restore_s > 0 else None,
        "records": records,
        "records_done": done,
        "rows": rows,
        "dropped": sum(int(g[2]) for g in lines) if lines else None,
        "repaired": sum(int(g[3]) for g in lines) if lines else None,
        "restore_s": round(restore_s, 3),
        "startup_s": round(first - worker.started, 3),  # process start -> first restore started
        "wall_s": round(last - worker.started, 3),  # process start -> every partition serving
        "seen_serving_s": round(seen - worker.started, 3),  # to a poll interval
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
    return figures, worker


def rebuild_lines(log: Path, most: int = 40) -> str:
    """The worker's log lines about generations: what a stalled rebuild did last."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    found = [line for line in lines if re.search(r" g\d+[:;]|generation \d|switch|rebuild", line)]
    return "\n".join(f"    | {line}" for line in found[-most:])


LOG_LINE = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] .*?view revenue(?:\[(\d+)\])?"
    r"(?: g(\d+))?: (restored|replaying from|caught up|now serving generation (\d+)|"
    r"generation (\d+) retired)",
    re.M,
)


def rebuild_steps(log: Path, generation: int, t0: float) -> dict[str, float | None]:
    """When (seconds after the POST, from the worker's log lines, to the millisecond) the
    rebuild's steps were done: the new generation opened (its empty restores), positioned
    (every partition's replay start found), replayed
    (every partition caught up), served (every partition switched) and the old one retired."""
    found: dict[str, list[float]] = defaultdict(list)
    for m in LOG_LINE.finditer(log.read_text(errors="replace")):
        stamp, _, gen, what, serving, retired = m.groups()
        t = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp() - t0
        if t < 0:
            continue
        if what in ("restored", "replaying from", "caught up") and gen == str(generation):
            found[what].append(t)
        elif serving == str(generation):
            found["serving"].append(t)
        elif retired is not None:
            found["retired"].append(t)
    # the new generation's first restores; a replay helper's partitions are restored again
    # when the worker takes them back
    first = min(found["replaying from"], default=None)
    opened = [t for t in found["restored"] if first is None or t <= first]
    steps = {
        "opened_s": max(opened, default=None),
        "positioned_s": max(found["replaying from"], default=None),
        "replayed_s": max(found["caught up"], default=None),
        "switched_s": max(found["serving"], default=None),
        "retired_s": max(found["retired"], default=None),
    }
    return {k: round(v, 3) if v is not None else None for k, v in steps.items()}


def measure_rebuild(
    worker: harness.WorkerProcess,
    port: int,
    dump: Path,
    truth: dict[str, int],
    n: int,
    timeout: float,
    live_events_per_s: float,
    live_from_open: float,
) -> dict[str, Any]:
    """Rebuild the view on the running worker: POST, then poll until the new generation
    serves and the old one is retired; then check the view against the ground truth."""
    url = f"http://127.0.0.1:{port}/bench/"
    rebuild_url = f"http://127.0.0.1:{port}/views/{VIEW}/rebuild"
    deadline = time.monotonic() + timeout
    harness.wait_for(
        worker, lambda: harness.http_get(url), all_serving, deadline, "every view partition serving"
    )
    before = harness.http_get(url) or {}
    cpu_before = worker.cpu_seconds()
    t0 = time.time()
    code, started = harness.http_request(rebuild_url, "POST")
    if code != 202 or not started or started.get("building") is None:
        raise harness.Failed(f"POST {rebuild_url} answered {code}: {started}\n{worker.log_tail()}")
    target = started["building"]
    # the first time each (state, generation) was seen, in seconds after the POST
    phases: dict[str, float] = {}
    # [seconds after the POST, state, done, total, rate] each time the status changed
    timeline: list[list[Any]] = []

    changed = [time.monotonic(), None]  # when the status last changed (rates aside), and to what

    def finished(body: dict[str, Any]) -> bool:
        t = round(time.time() - t0, 3)
        phase = f"{body['state']} g{body['generation']}"
        phases.setdefault(phase, t)
        row = [body["state"], body["done"], body["total"], round(body["rate"] or 0.0, 1)]
        if not timeline or timeline[-1][1:] != row:
            timeline.append([t, *row])
        if body["state"] == "idle" and body["generation"] == target:
            return True
        still = {k: v for k, v in body.items() if k not in ("rate", "eta")}
        still["partitions"] = [(p["state"], p["done"], p["total"]) for p in body["partitions"]]
        if still != changed[1]:
            changed[:] = [time.monotonic(), still]
        elif time.monotonic() - changed[0] > REBUILD_STALL:
            raise harness.Failed(
                f"the rebuild of generation {target} stalled: no change in {REBUILD_STALL:.0f}s, "
                f"status {body}\n{rebuild_lines(worker.logfile)}"
            )
        return False

    harness.wait_for(
        worker,
        lambda: harness.http_get(rebuild_url),
        finished,
        deadline,
        f"the rebuild of generation {target} (state idle)",
        interval=REBUILD_POLL,
    )
    rebuild_s = time.time() - t0
    cpu = worker.cpu_seconds()
    rss = worker.peak_rss_mb()
    switched = min(
        (t for phase, t in phases.items() if phase.endswith(f" g{target}")), default=None
    )
    body = harness.wait_for(
        worker,
        lambda: harness.http_get(url),
        lambda b: all_serving(b) and b["checkpointed"] >= n,
        deadline,
        "the rebuilt view serving, checkpointed to N",
    )
    checked = dump_and_verify(worker, url, dump, truth)
    rate = n / rebuild_s
    steps = rebuild_steps(worker.logfile, target, t0)
    folds = fold_costs(port)
    opened, replayed = steps["opened_s"], steps["replayed_s"]
    replay_s = replayed - opened if opened is not None and replayed is not None else None
    return {
        "rebuild_events_per_s": round(rate, 1),
        "rebuild_s": round(rebuild_s, 3),
        "seen_switching_s": switched,  # POST -> first seen serving the new generation (polled)
        # the replay alone: the new generation opened -> every partition caught up (log lines)
        "replay_events_per_s": round(n / replay_s, 1) if replay_s else None,
        "replay_s": round(replay_s, 3) if replay_s is not None else None,
        "steps": steps,
        "vs_live": round(rate / live_events_per_s, 2) if live_events_per_s else None,
        "vs_live_from_open": round(rate / live_from_open, 2) if live_from_open else None,
        # the worker's time inside the fold per event (/metrics), live and rebuilding
        "fold_us_per_event": folds,
        # the worker's CPU seconds per second from the POST to finished (2 CPUs: up to 2)
        "cpu_share": round((cpu - cpu_before) / rebuild_s, 2)
        if cpu is not None and cpu_before is not None
        else None,
        "generation": target,
        "view_generation": body.get("generation"),
        "phases": phases,
        "timeline": timeline,
        # in the worker's process: a replay helper's are made in its own
        "handler_calls": body["processed"] - before.get("processed", 0),
        **helper_figures(worker.logfile, target),
        "checkpointed": body["checkpointed"],
        "peak_rss_mb": rss,  # the worker's peak so far, the live run's included
        **checked,
    }


def helper_figures(log: Path, generation: int) -> dict[str, Any]:
    """How many replay helpers the worker's log says replayed the generation, and the
    highest peak RSS one of them reported."""
    text = log.read_text(errors="replace")
    rss = re.findall(rf" g{generation}: the helper replayed .* \(peak RSS (\d+) MB\)", text)
    started = re.findall(rf" g{generation}: partitions .* replayed by a helper process", text)
    return {
        "helper_processes": len(started),
        "helpers_peak_rss_mb": max((float(mb) for mb in rss), default=None),
    }


def fold_costs(port: int) -> dict[str, float | None]:
    """Microseconds the worker spent folding per event, live and rebuilding (the
    ``belvedere_fold_*`` counters of its ``/metrics``); None for a mode it never folded
    in (a worker started by the recovery restored its view and folded nothing live)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    found: dict[tuple[str, str], float] = {}
    pattern = rf'^belvedere_fold_(seconds|events)_total{{view="{VIEW}",mode="(\w+)"}} (\S+)$'
    for kind, mode, value in re.findall(pattern, text, re.M):
        found[kind, mode] = float(value)
    return {
        mode: round(1e6 * found["seconds", mode] / found["events", mode], 2)
        if found.get(("events", mode))
        else None
        for mode in ("live", "rebuild")
    }


# -- repeats, the sweep, and reporting ---------------------------------------------------

FIGURES: dict[str, Callable[[harness.Result], float | None]] = {
    "events_per_s": lambda r: round(r.events_per_s or 0.0, 1),
    "wall_s": lambda r: round(r.wall_s or 0.0, 3),
    "peak_rss_mb": lambda r: r.peak_rss_mb,
    "recovery_records_per_s": lambda r: r.extra.get("recovery", {}).get("recovery_records_per_s"),
    "rebuild_events_per_s": lambda r: r.extra.get("rebuild", {}).get("rebuild_events_per_s"),
    "rebuild_s": lambda r: r.extra.get("rebuild", {}).get("rebuild_s"),
    "replay_events_per_s": lambda r: r.extra.get("rebuild", {}).get("replay_events_per_s"),
    "rebuild_vs_live": lambda r: r.extra.get("rebuild", {}).get("vs_live"),
    "rebuild_vs_live_from_open": lambda r: r.extra.get("rebuild", {}).get("vs_live_from_open"),
}


@dataclass(eq=False)
class Runs:
    """One variant's repeated runs at one key count."""

    variant: str
    keys: int
    results: list[harness.Result]

    @property
    def ok(self) -> list[harness.Result]:
        return [r for r in self.results if r.status == "ok"]

    @property
    def samples(self) -> dict[str, list[float | None]]:
        found = {name: [get(r) for r in self.ok] for name, get in FIGURES.items()}
        return {
            name: values for name, values in found.items() if any(v is not None for v in values)
        }

    @property
    def medians(self) -> dict[str, float | None]:
        return {name: harness.median(values) for name, values in self.samples.items()}

    def median(self, figure: str) -> float | None:
        return self.medians.get(figure)

    @property
    def representative(self) -> harness.Result:
        """A failed or skipped run if any; else the run with the median events/s."""
        for r in self.results:
            if r.status != "ok":
                return r
        target = self.median("events_per_s")
        return next(r for r in self.results if FIGURES["events_per_s"](r) == target)

    def failures(self, what: str) -> int:
        """How many of the runs' recovery or rebuild measurements failed."""
        return sum(r.extra.get(what, {}).get("status") == "failed" for r in self.results)

    def as_json(self) -> dict[str, Any]:
        body = self.representative.as_json()
        if len(self.results) > 1:
            body |= {"repeat": len(self.results), "median": self.medians, "samples": self.samples}
        for what in ("recovery", "rebuild"):
            if self.failures(what):  # their reasons are in the failed runs' lines and details
                body[f"{what}_failures"] = self.failures(what)
        return body


def describe(result: harness.Result) -> None:
    """The lines printed after a run's own: verified totals, recovery, rebuild."""
    if result.status != "ok":
        return
    lines = [f"{result.extra.get('users', 0):,} user totals verified"]
    for what in ("recovery", "rebuild"):
        if result.extra.get(what, {}).get("status") == "failed":
            lines.append(f"{what} failed: {result.extra[what]['reason']}")
    fmt = harness.fmt
    rec = result.extra.get("recovery", {})
    if "recovery_records_per_s" in rec:
        lines.append(
            f"recovery: {fmt(rec['recovery_records_per_s'], ',.0f')} changelog records/s "
            f"({rec['records']:,} records, {rec['rows']} rows, in {rec['restore_s']:.2f}s), "
            f"wall {rec['wall_s']:.2f}s to all serving, peak RSS {rec['peak_rss_mb']} MB, "
            f"{rec['users']:,} user totals verified"
        )
    reb = result.extra.get("rebuild", {})
    if "rebuild_events_per_s" in reb:
        rate, replay = reb["rebuild_events_per_s"], fmt(reb["replay_events_per_s"], ",.0f")
        took = f"{reb['rebuild_s']:.2f}s to idle on generation {reb['generation']}"
        calls, users = reb["handler_calls"], reb["users"]
        lines.append(f"rebuild: {rate:,.0f} events/s ({took}; replay alone {replay} events/s), ")
        lines[-1] += f"{fmt(reb['vs_live'], '.2f')}x live ({fmt(reb['vs_live_from_open'], '.2f')}x "
        helpers = f"{reb['helper_processes']} helper processes"
        if reb.get("helpers_peak_rss_mb") is not None:
            helpers += f" (peak RSS {reb['helpers_peak_rss_mb']:.0f} MB at most)"
        lines[-1] += f"from its partitions opening), {helpers}, "
        lines[-1] += f"{calls:,} handler calls in the worker's, "
        lines[-1] += f"{users:,} user totals verified"
        folds = reb.get("fold_us_per_event") or {}
        if folds:
            lines.append(
                f"folding per event: {fmt(folds.get('live'), '.2f')} us live, "
                f"{fmt(folds.get('rebuild'), '.2f')} us rebuilding"
            )
    for line in lines:
        print(f"  {line}", flush=True)


def report_more(main: list[Runs], sweep: list[Runs]) -> str:
    lines = []
    measured = [r for r in main + sweep if "recovery" in r.representative.extra]
    measured += [r for r in main + sweep if "rebuild" in r.representative.extra]
    if measured:
        header = (
            f"{'variant':<20} {'keys':>9} {'recovery rec/s':>15} {'rebuild ev/s':>13} "
            f"{'rebuild s':>10} {'rebuild/live':>13} {'failed':>7}"
        )
        lines += ["", header, "-" * len(header)]
        for runs in dict.fromkeys(measured):
            failed = runs.failures("recovery") + runs.failures("rebuild")
            lines.append(
                f"{runs.variant:<20} {runs.keys:>9,} "
                f"{harness.fmt(runs.median('recovery_records_per_s'), ',.0f'):>15} "
                f"{harness.fmt(runs.median('rebuild_events_per_s'), ',.0f'):>13} "
                f"{harness.fmt(runs.median('rebuild_s'), '.2f'):>10} "
                f"{harness.fmt(runs.median('rebuild_vs_live'), '.2f'):>13} {failed:>7}"
            )
    if sweep:
        header = f"{'variant':<20} {'keys':>9} {'events/s':>10} {'peak RSS MB':>12} {'runs':>5}"
        lines += ["", header, "-" * len(header)]
        for runs in sorted(sweep, key=lambda r: (r.variant, r.keys)):
            lines.append(
                f"{runs.variant:<20} {runs.keys:>9,} "
                f"{harness.fmt(runs.median('events_per_s'), ',.0f'):>10} "
                f"{harness.fmt(runs.median('peak_rss_mb'), ',.0f'):>12} {len(runs.ok):>5}"
            )
    return "\n".join(lines)


def summary(main: list[Runs], sweep: list[Runs], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    by_variant = {r.variant: r for r in main}
    for runs in main:
        out[SUMMARY_KEYS[runs.variant]] = runs.median("events_per_s")
    mine = by_variant.get("belvedere-kafka")
    for ours, other, key in (
        ("belvedere-kafka", "faust-kafka", "belvedere_vs_faust"),
        ("belvedere-kafka", "quixstreams-kafka", "belvedere_vs_quix"),
        ("belvedere-agent-kafka", "quixstreams-kafka", "belvedere_agent_vs_quix"),
    ):
        us, theirs = by_variant.get(ours), by_variant.get(other)
        if us and theirs and us.median("events_per_s") and theirs.median("events_per_s"):
            out[key] = round(us.median("events_per_s") / theirs.median("events_per_s"), 2)
    out["peak_rss_mb"] = {r.variant: r.median("peak_rss_mb") for r in main}
    kafka = [r for r in main + sweep if r.variant == "belvedere-kafka"]
    # recovery: at the most keys measured (the changelog holds about a record per changed key
    # per checkpoint, so only many keys make a meaningful rate)
    recovered = [r for r in kafka if r.median("recovery_records_per_s") is not None]
    if recovered:
        most = max(recovered, key=lambda r: r.keys)
        out["recovery_records_per_s"] = most.median("recovery_records_per_s")
        out["recovery_keys"] = most.keys
    if mine and mine.median("rebuild_events_per_s") is not None:
        out["rebuild_events_per_s"] = mine.median("rebuild_events_per_s")
        out["rebuild_vs_live"] = mine.median("rebuild_vs_live")
        out["rebuild_vs_live_from_open"] = mine.median("rebuild_vs_live_from_open")
    million = [r for r in kafka if r.keys == 1_000_000 and r.ok]
    if million:
        out["peak_rss_mb_1m_keys"] = million[0].median("peak_rss_mb")
        out["events_per_s_1m_keys"] = million[0].median("events_per_s")
    out |= {
        "events": args.events,
        "keys": args.keys,
        "partitions": PARTITIONS,
        "repeat": args.repeat,
        "statistic": "median_low" if args.repeat > 1 else "one run",
        **harness.machine(),
        "runs": {r.variant: r.as_json() for r in main},
    }
    if sweep:
        out["sweep"] = {
            variant: [
                {"keys": r.keys, **r.medians, "runs": len(r.results), "samples": r.samples}
                | {"run": r.representative.as_json()}  # the median run's details
                | ({} if len(r.ok) == len(r.results) else {"failed": r.representative.reason})
                | {f"{w}_failures": r.failures(w) for w in ("recovery", "rebuild") if r.failures(w)}
                for r in sorted(sweep, key=lambda r: r.keys)
                if r.variant == variant
            ]
            for variant in dict.fromkeys(r.variant for r in sweep)
        }
    return out


def key_counts(text: str) -> list[int]:
    return [int(k.replace("_", "")) for k in text.split(",") if k.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    return harness.dispatch(argv, quix_worker, bench)


def bench(argv: list[str]) -> int:
    parser = harness.parser(__doc__, EVENTS, VARIANTS, REPO / "bench/results/projection.json")
    parser.add_argument("--keys", type=int, default=KEYS, metavar="K", help="distinct users")
    parser.add_argument(
        "--distinct",
        action="store_true",
        help="take the users in turn instead of at random: N >= K events touch all K",
    )
    parser.add_argument(
        "--recovery",
        action="store_true",
        help="belvedere: then delete the worker's local view state, restart it and time the "
        "restore from the changelog",
    )
    parser.add_argument(
        "--rebuild",
        action="store_true",
        help="belvedere: then rebuild the view (POST /views/revenue/rebuild) and time it",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="R",
        help="runs per variant; report medians",
    )
    parser.add_argument(
        "--sweep",
        type=key_counts,
        default=[],
        metavar="K1,K2,...",
        help="also run the --sweep-only variants at these key counts",
    )
    parser.add_argument(
        "--sweep-only",
        action="append",
        choices=VARIANTS,
        metavar="VARIANT",
        help="the variants of the sweep (default belvedere-kafka and quixstreams-kafka)",
    )
    args = parser.parse_args(argv)
    variants = [v for v in VARIANTS if not args.only or v in args.only]
    sweep_variants = [v for v in VARIANTS if v in (args.sweep_only or SWEEP_VARIANTS)]
    opts = Options(args.timeout, args.recovery, args.rebuild, args.keep)

    harness.describe_machine(args.events, args.keys, PARTITIONS)
    main_runs: list[Runs] = []
    sweep_runs: list[Runs] = []
    everything = variants + (sweep_variants if args.sweep else [])

    def run_all(keys: int, which: list[str]) -> list[Runs]:
        kafka = any(v.endswith("-kafka") for v in which)
        data = prepare_input(env, args.events, keys, kafka, args.distinct)
        done = []
        for variant in which:
            results = []
            for i in range(args.repeat):
                run_id = f"{variant}-{keys}-{i + 1}"
                if args.repeat > 1:
                    print(f"[{keys:,} keys, run {i + 1} of {args.repeat}] ", end="")
                result = env.run(
                    variant,
                    args.events,
                    lambda: run_variant(variant, data, env, run_id, opts),  # noqa: B023
                )
                describe(result)
                results.append(result)
            done.append(Runs(variant, keys, results))
        return done

    with harness.environment(args.kafka, everything, args.keep) as env:
        main_runs = run_all(args.keys, variants)
        for keys in args.sweep:
            if keys == args.keys:
                sweep_runs += [r for r in main_runs if r.variant in sweep_variants]
                missing = [v for v in sweep_variants if v not in variants]
            else:
                missing = sweep_variants
            if missing:
                sweep_runs += run_all(keys, missing)

    print()
    print(harness.report([r.representative for r in main_runs]))
    more = report_more(main_runs, sweep_runs)
    if more:
        print(more)
    harness.write_json(args.json, summary(main_runs, sweep_runs, args))
    results = [r for runs in main_runs + sweep_runs for r in runs.results]
    parts_failed = any(
        r.extra.get(what, {}).get("status") == "failed"
        for r in results
        for what in ("recovery", "rebuild")
    )
    return harness.exit_status(results) or int(parts_failed)


if __name__ == "__main__":
    sys.exit(main())
