"""What the end-to-end benchmarks share: worker subprocesses, polling, Kafka, the report.

``broker_throughput.py`` and ``projection_throughput.py`` each define a workload, the
worker apps that fold it (belvedere, plain faust, Quix Streams) and what they check; this
module runs them:

- the input, written before a worker starts (outside the measured window): straight into
  the embedded broker's log (:func:`fill_embedded`) or produced to Kafka
  (:func:`fill_kafka`);
- :class:`Progress`, the counter a worker's handler ticks (first and latest event stamped
  with ``time.time()``), served on an HTTP page by belvedere/faust workers and written to
  a status file by the Quix worker (:class:`QuixStatus`, :func:`run_quix`), which has no
  web server;
- :func:`worker_command`, the command line and environment of each variant's worker, and
  :class:`WorkerProcess`, the subprocess (own session, output to a log file, SIGTERM then
  SIGKILL);
- :func:`wait_for`, polling a worker until a condition holds (:func:`http_get`,
  :func:`file_get`), with :func:`peak_rss_mb` and :func:`cpu_seconds` from ``/proc``;
- :class:`Result`, :func:`report` (the table, with ratios to the ``faust-kafka`` anchor),
  and the main loop's parts: :func:`dispatch` (the ``quix-worker`` subcommand, or the
  bench), :func:`parser` (the common options), :func:`environment` (the work directory,
  and a private Kafka broker if none is given), :meth:`Bench.run` (one variant: skipped,
  failed or ok), :func:`median` and :func:`write_json`.
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
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

ANCHOR = "faust-kafka"
POLL_INTERVAL = 0.2
STOP_TIMEOUT = 30.0

Message = tuple[bytes, bytes]  # (Kafka key, value)


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


class Failed(Exception):
    """A variant that did not complete; its message is the reason reported."""


# -- the worker apps -----------------------------------------------------------------------


def lazy_apps(module: str, builders: dict[str, Callable[[], Any]]) -> Callable[[str], Any]:
    """A module ``__getattr__``: ``module:app`` / ``:faust_app``, built on first access.

    The bench scripts import the modules without building any app; a worker subprocess
    builds only the one it runs, configured by its ``BENCH_*`` variables.
    """
    built: dict[str, Any] = {}

    def __getattr__(name: str) -> Any:
        if name not in builders:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        if name not in built:
            built[name] = builders[name]()
        return built[name]

    return __getattr__


def input_topic(app: Any, partitions: int, value_serializer: str) -> Any:
    """The input topic ``BENCH_TOPIC`` on a faust.App or a belvedere.App (raw string keys)."""
    return app.topic(
        os.environ["BENCH_TOPIC"],
        partitions=partitions,
        key_type=str,
        key_serializer="raw",
        value_serializer=value_serializer,
    )


def faust_app() -> Any:
    """A plain ``faust.App`` with RocksDB tables, configured by the ``BENCH_*`` variables."""
    import faust

    return faust.App(
        os.environ["BENCH_NAME"],
        broker=os.environ["BENCH_BROKER"],
        store="rocksdb://",
        datadir=os.environ["BENCH_DATA_DIR"],
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
    )


class QuixStatus:
    """The Quix worker's progress, written to the file ``BENCH_STATUS`` names."""

    def __init__(self) -> None:
        self.path = Path(os.environ["BENCH_STATUS"])
        self.events = int(os.environ["BENCH_EVENTS"])
        self.progress = Progress()

    def tick(self) -> bool:
        """Count one event; True for the N-th, whose status the caller writes (:meth:`write`)."""
        self.progress.tick()
        processed = self.progress.processed
        if processed == self.events:
            return True
        if processed == 1 or processed % 10_000 == 0:
            self.write()
        return False

    def write(self, **extra: Any) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**self.progress.as_dict(), **extra}))
        tmp.replace(self.path)


def quix_application() -> Any:
    """A Quix Streams application configured by the ``BENCH_*`` variables."""
    from quixstreams import Application

    return Application(
        broker_address=os.environ["BENCH_BOOTSTRAP"],
        consumer_group=os.environ["BENCH_NAME"],
        auto_offset_reset="earliest",
        state_dir=os.environ["BENCH_DATA_DIR"],
        loglevel="INFO",
    )


def run_quix(fold: Callable[[Any, str, int, Any, Any], None]) -> None:
    """Run Quix Streams over ``BENCH_TOPIC``: ``fold(value, key, timestamp, headers, state)``."""
    app = quix_application()
    topic = app.topic(os.environ["BENCH_TOPIC"], key_deserializer="str", value_deserializer="json")
    app.dataframe(topic).update(fold, stateful=True, metadata=True)
    app.run()


def has_quixstreams() -> bool:
    import importlib.util

    return importlib.util.find_spec("quixstreams") is not None


def worker_command(
    variant: str,
    module: str,
    script: Path,
    port: int,
    data_dir: Path,
    bootstrap: str | None,
    events: int,
) -> tuple[list[str], dict[str, str]]:
    """The worker's command line, and the ``BENCH_*`` variables it needs beyond the workload's.

    belvedere: ``belvedere worker module:app``; faust: ``faust -A module:faust_app worker``;
    Quix: ``python <script> quix-worker`` (it reports to ``<data dir>/status.json``).
    """
    belvedere = [sys.executable, "-m", "belvedere.cli", "worker", f"{module}:app"]
    belvedere += ["--web-port", str(port), "--data-dir", str(data_dir)]
    belvedere += ["--verbose"]  # the engine's per-partition lines ("restored N rows") are read
    if variant == "belvedere-embedded":
        return [*belvedere, "--broker", "embedded://"], {}
    if variant == "belvedere-kafka":
        return [*belvedere, "--broker", f"kafka://{bootstrap}"], {}
    if variant == "belvedere-agent-kafka":  # the same job written with @app.agent + app.Table
        belvedere[4] = f"{module}:agent_app"
        return [*belvedere, "--broker", f"kafka://{bootstrap}"], {}
    if variant == "faust-kafka":
        argv = [sys.executable, "-m", "faust", "--datadir", str(data_dir)]
        argv += ["-A", f"{module}:faust_app", "worker", "-l", "info", "--web-port", str(port)]
        return argv, {"BENCH_BROKER": f"kafka://{bootstrap}"}
    if variant == "quixstreams-kafka":
        env = {"BENCH_BOOTSTRAP": str(bootstrap), "BENCH_EVENTS": str(events)}
        env["BENCH_STATUS"] = str(status_file(data_dir))
        return [sys.executable, str(script.resolve()), "quix-worker"], env
    raise ValueError(f"unknown variant {variant!r}")


def status_file(data_dir: Path) -> Path:
    return data_dir / "status.json"


# -- filling the input (outside the measured window) ---------------------------------------


def fill_embedded(log_dir: Path, topic: str, events: Sequence[Message], partitions: int) -> None:
    from belvedere.streams.embedded import Log, NewRecord
    from belvedere.streams.partitioner import partition_for_key

    by_partition: dict[int, list[NewRecord]] = defaultdict(list)
    ts = int(time.time() * 1000)
    for key, value in events:
        by_partition[partition_for_key(key, partitions)].append(NewRecord(key, value, ts))
    log = Log.acquire(log_dir)
    try:
        log.create_topic(topic, partitions)
        for partition, records in by_partition.items():
            for i in range(0, len(records), 1000):
                log.append(topic, partition, records[i : i + 1000])
        assert sum(log.end_offset(topic, p) for p in range(partitions)) == len(events)
    finally:
        log.release()


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def fill_kafka(
    bootstrap: str, topic: str, events: Sequence[Message], partitions: int
) -> None:
    from aiokafka import AIOKafkaProducer

    await create_topic(bootstrap, topic, partitions)
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


def fill_input(
    where: str | Path, topic: str, events: Sequence[Message], partitions: int, timeout: float = 600
) -> None:
    """Write the input: to Kafka at bootstrap address ``where``, or to the embedded log at
    directory ``where``; prints how long it took (not measured)."""
    t = time.monotonic()
    if isinstance(where, Path):
        fill_embedded(where, topic, events, partitions)
    else:
        asyncio.run(asyncio.wait_for(fill_kafka(where, topic, events, partitions), timeout))
    print(
        f"  input: {len(events):,} events into {topic} in {time.monotonic() - t:.1f}s "
        "(not measured)",
        flush=True,
    )


# -- the worker process --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WorkerProcess:
    """One worker subprocess in its own session, its output in a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], logfile: Path) -> None:
        self.logfile = logfile
        self.started = time.time()
        with open(logfile, "w") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

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

    def peak_rss_mb(self) -> float | None:
        return peak_rss_mb(self.proc.pid)

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.proc.pid)


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


# -- polling -------------------------------------------------------------------------------


def http_get(url: str, timeout: float = 60) -> dict[str, Any] | None:
    """The JSON ``url`` answers, or None if the worker is not serving (yet)."""
    return http_request(url, timeout=timeout)[1]


def http_request(
    url: str, method: str = "GET", timeout: float = 60
) -> tuple[int | None, dict[str, Any] | None]:
    """(status, JSON body) of a request with an empty body; (None, None) if no answer."""
    request = urllib.request.Request(url, method=method, data=b"" if method != "GET" else None)
    if method != "GET":
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:  # an answer, but not 2xx
        with contextlib.suppress(ValueError):
            return exc.code, json.loads(exc.read())
        return exc.code, None
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None, None


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
    interval: float = POLL_INTERVAL,
) -> dict[str, Any]:
    """Poll ``read`` until ``done`` of its answer; Failed if the worker dies or time runs out."""
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        worker.check_alive()
        body = read()
        if body is not None:
            last = body
            if done(body):
                return body
        time.sleep(interval)
    raise Failed(f"timed out waiting for {what}; last status {last}\n{worker.log_tail()}")


def total_reached(n: int, what: str) -> Callable[[dict[str, Any]], bool]:
    """Whether a worker's ``total`` (read back from its state) is N; Failed past N.

    State is read as of its last checkpoint: a total short of N waits for the next one."""

    def reached(body: dict[str, Any]) -> bool:
        total = body.get("total")
        if total == n:
            return True
        if (total is not None and total > n) or body["processed"] > n:
            raise Failed(f"{what} total is {total}, expected {n}: {body}")
        return False

    return reached


# -- results -------------------------------------------------------------------------------


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


def timed(variant: str, n: int, started: float, body: dict[str, Any], **kw: Any) -> Result:
    """The result of a run whose worker started at ``started`` and reported ``body``."""
    first, last = float(body["first_at"]), float(body["last_at"])
    return Result(
        variant,
        "ok",
        n,
        startup_s=first - started,
        processing_s=last - first,
        wall_s=last - started,
        **kw,
    )


def median(values: Iterable[float | None]) -> float | None:
    """The middle value (the lower middle one of an even count: always a measured value)."""
    found = [v for v in values if v is not None]
    return statistics.median_low(found) if found else None


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


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
            f"{r.variant:<20} {fmt(r.events_per_s, ',.0f'):>10} {fmt(r.wall_s, '.2f'):>8} "
            f"{fmt(r.startup_s, '.2f'):>10} {fmt(r.processing_s, '.2f'):>8} "
            f"{fmt(r.peak_rss_mb, ',.0f'):>12} "
            f"{fmt(speed, '.2f') + 'x' if speed is not None else '-':>14} "
            f"{fmt(wall, '.2f') + 'x' if wall is not None else '-':>14}"
        )
    return "\n".join(lines)


# -- the main loop -------------------------------------------------------------------------


def dispatch(
    argv: Sequence[str] | None, quix_worker: Callable[[], None], bench: Callable[[list[str]], int]
) -> int:
    """A bench script's ``main``: the Quix worker (``<script> quix-worker``), or the bench."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["quix-worker"]:
        quix_worker()
        return 0
    # Stopped by a signal, still stop the workers (each in its own session) on the way out:
    # SIGTERM as an exit, and SIGINT even when started in the background (where it is ignored).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return bench(args)


def parser(
    doc: str, events: int, variants: Sequence[str], json_default: Path | None
) -> argparse.ArgumentParser:
    """The options every bench script takes; the description is the docstring's first paragraph."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=events, metavar="N")
    parser.add_argument("--only", action="append", choices=variants, metavar="VARIANT")
    parser.add_argument("--kafka", metavar="HOST:PORT", help="use this broker, start none")
    parser.add_argument("--timeout", type=float, default=600, help="per variant, in seconds")
    parser.add_argument(
        "--json",
        type=Path,
        default=json_default,
        metavar="PATH",
        help="write the results here"
        + (f" (default {json_default.relative_to(REPO)})" if json_default else ""),
    )
    parser.add_argument("--keep", action="store_true", help="keep data dirs and worker logs")
    return parser


def describe_machine(events: int, keys: int, partitions: int) -> None:
    print(
        f"{events:,} events, {keys:,} keys, {partitions} partitions; "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
        flush=True,
    )


def machine() -> dict[str, Any]:
    return {
        "anchor": ANCHOR,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "commit": commit(),
    }


def commit() -> str | None:
    """The checkout's commit, ``+dirty`` if ``belvedere/`` has uncommitted changes; None
    outside a git checkout (e.g. an export with ``git archive``)."""
    git = ["git", "-C", str(REPO)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "belvedere"], capture_output=True, text=True
        )
    except OSError:
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


@dataclass
class Bench:
    """The environment the variants run in: the work directory and the Kafka broker."""

    work: Path
    bootstrap: str | None
    kafka_problem: str = ""

    def skip_reason(self, variant: str) -> str | None:
        if variant.endswith("-kafka") and self.bootstrap is None:
            return self.kafka_problem or "no Kafka broker"
        if variant == "quixstreams-kafka" and not has_quixstreams():
            return "quixstreams is not installed (pip install quixstreams)"
        return None

    def run(self, variant: str, n: int, run: Callable[[], Result]) -> Result:
        """One variant: skipped, or ``run()`` (any exception is a failure), and its line."""
        print(f"{variant}:", flush=True)
        reason = self.skip_reason(variant)
        if reason is not None:
            result = Result(variant, "skipped", n, reason=reason)
        else:
            try:
                result = run()
            except Exception as exc:  # e.g. the input could not be written
                result = Result(variant, "failed", n, reason=f"{type(exc).__name__}: {exc}")
        if result.status == "ok":
            print(
                f"  {result.events_per_s:,.0f} events/s, wall {result.wall_s:.2f}s, "
                f"startup {result.startup_s:.2f}s, peak RSS {result.peak_rss_mb} MB",
                flush=True,
            )
        else:
            print(f"  {result.status}: {result.reason}", flush=True)
        return result


@contextlib.contextmanager
def environment(kafka: str | None, variants: Iterable[str], keep: bool) -> Iterator[Bench]:
    """A work directory (removed afterwards unless ``keep``) and a Kafka broker if a Kafka
    variant is to run: ``kafka``, or a private one (ci/kafka/start.sh) stopped afterwards."""
    work = Path(tempfile.mkdtemp(prefix="belvedere-bench-"))
    try:
        with contextlib.ExitStack() as stack:
            env = Bench(work, kafka)
            if kafka is None and any(v.endswith("-kafka") for v in variants):
                from tests.support.kafka import private_kafka

                print("starting a private Kafka broker (ci/kafka/start.sh) ...", flush=True)
                try:
                    env.bootstrap = stack.enter_context(private_kafka())
                except (RuntimeError, subprocess.SubprocessError) as exc:
                    output = getattr(exc, "stderr", "") or ""
                    env.kafka_problem = f"no Kafka broker: {exc}; {str(output)[-300:]}".strip()
            yield env
    finally:
        if keep:
            print(f"data dirs and worker logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def write_json(path: Path | None, body: Any) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(body, indent=2) + "\n")
        print(f"\nwrote {path}")


def exit_status(results: Iterable[Result]) -> int:
    return 0 if all(r.status != "failed" for r in results) else 1
