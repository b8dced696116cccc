"""Key lookups over HTTP: GET /views/{view}/{key}, local and forwarded, vs faust's table_route.

The view is ``projection_throughput.py``'s revenue per user (``OrderPlaced`` envelopes
keyed by user id, 6 partitions, folded by ``@app.projection`` into ``app.view("revenue",
value=int, key=str)``): N events (default 60,000) over K users (default 20,000) are
produced before the first worker starts, the worker folds them, and the bench waits until
every event is folded and checkpointed. Then it asks every user's key once and checks each
answer against the totals it computed from the events (any wrong or missing answer fails
the variant), and measures. Variants:

    belvedere-kafka     one worker on Kafka holding all 6 partitions: local lookups.
                        Then a second worker of the same app joins (same consumer group;
                        it restores its 3 partitions from the changelog) and the bench
                        sends the first worker only keys the second one owns (found by
                        asking every key once and reading X-Belvedere-Worker): forwarded
                        lookups, A -> B over HTTP (at the rate, and at half of it). Also
                        the same keys asked of B directly, and A's own keys asked of A now
                        that it has a peer ("local, 2 workers": each worker then also
                        follows standby copies of the other's partitions, faust's
                        table_standby_replicas=1).
    belvedere-nofollow-kafka
                        a diagnostic: the two-worker part again, on a new consumer group,
                        with the standby follower paused in both workers (the bench sets
                        belvedere.agents.standby.POLL to a day): separates the cost of the
                        forward from the follower's (before commit b719a4b the follower
                        re-read the head of each standby changelog partition on the event
                        loop every 0.5 s: 20-200 ms stalls in every worker with a peer).
    faust-kafka         the anchor: a plain faust app folding the same topic into
                        app.Table("revenue", default=int) (projection_throughput's faust
                        agent), one worker, serving GET /table/{user}/ through
                        @app.table_route(table=..., match_info="user").
    belvedere-embedded  the Belvedere worker on the embedded broker: local lookups.
    aiohttp-bare        a reference, not a contender: aiohttp alone answering the same
                        route with a constant body (no store, no middlewares), closed loop
                        only: what one core gives through aiohttp on this machine now.

Each target is measured two ways, by a load generator in its own process (never in the
workers'): closed loop (C keep-alive connections, default 32, each sending its next request
as soon as the previous one is answered: the most req/s; wrk with one thread when it is on
PATH, else ``http_lookups.py load``) and open loop (requests started on a fixed schedule,
default 1,000 req/s, by ``http_lookups.py load``; each latency is counted from the
request's scheduled start, so a stall delays the whole queue behind it and shows: no
coordinated omission; ``late_*`` figures say how late the generator itself started them).
``http_lookups.py load`` is asyncio with, by default, a minimal keep-alive HTTP/1.1 client
(request line + Host; answers read by Content-Length): about half the CPU per request of
aiohttp's client (``--client aiohttp``), which counts on a small machine. Keys are drawn
uniformly at random from the keys that exist. Each measurement runs ``--warmup`` s
(default 2, not counted) then ``--duration`` s (default 10), ``--repeat`` times (default
3); the run with the median req/s (closed loop) or the median p99 (open loop) is
reported, every run's figures under ``samples``. Figures:

    req/s        answered requests / the measured window (closed loop: the most a worker
                 gives at that concurrency; open loop: the rate actually kept)
    p50/p99 ms   latency (open loop: from the scheduled start, client overheads included)
    worker CPU   the worker's CPU seconds per second of the window (from /proc; about 1.0
                 = one core saturated: the Python worker is single-threaded), and
                 req/CPU-s = answered requests / the worker's CPU seconds (the answering
                 worker's, A's alone for forwarded: B's is reported beside). The JSON's
                 cpu_share also has the generator's, the whole machine's busy CPUs
                 (/proc/stat), what others used (Kafka...) and the hypervisor's steal.
    errors       non-2xx answers and failed requests (any fails the target)

Targets: local closed loop >= 5,000 req/s per worker; local p99 <= 10 ms at a
steady 1,000 req/s; forwarded p99 <= 25 ms at 1,000 req/s. Written to ``--json`` (default
bench/results/http.json) with ``local_rps``, ``local_p99_ms_at_1000rps``,
``forwarded_p99_ms``, ``faust_table_route_rps``, the ratios, every measurement's details,
the pinning and the machine.

The machine this was written on has 2 CPUs: the load generator competes with the workers.
By default (``--no-pin`` to turn it off) processes are pinned with ``taskset``: the first
worker (belvedere or faust) on the first CPU, the second worker on the second, and the load
generator on the third if there is one, else on the second (with the second worker, which
only answers forwarded requests at 1,000 req/s). Kafka and anything else on the machine
are not pinned.

Usage (from the repository root):

    python bench/http_lookups.py [--events N] [--keys K] [--only VARIANT ...]
        [--kafka HOST:PORT] [--concurrency C] [--rate R] [--duration S] [--warmup S]
        [--repeat R] [--generator auto|wrk|load] [--client raw|aiohttp] [--no-pin]
        [--no-forward]
        [--timeout S] [--json PATH] [--keep]
    python bench/http_lookups.py load --url URL_WITH_{key} --keys FILE ...   (the generator)

Without ``--kafka``, a private Kafka broker is started with ci/kafka/start.sh (Java 17+ and
Maven) and stopped at the end; without one the Kafka variants are skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the repo root holds bench and tests.support
    sys.path.insert(0, str(REPO))

from bench import harness, projection_throughput  # noqa: E402

MODULE = "bench.http_lookups"
PARTITIONS = projection_throughput.PARTITIONS
VIEW = projection_throughput.VIEW
EVENTS = 60_000
KEYS = 20_000
NO_FOLLOW = "belvedere-nofollow-kafka"
#: The standby follower's poll interval in that variant's workers: it never runs.
PAUSED_POLL = 24 * 3600.0
VARIANTS = ("belvedere-kafka", NO_FOLLOW, "faust-kafka", "belvedere-embedded", "aiohttp-bare")
HEADER_WORKER = "X-Belvedere-Worker"
CONCURRENCY = 32
RATE = 1000.0
DURATION = 10.0
REPEAT = 3
WARMUP = 2.0
PROBE_CONCURRENCY = 16
TARGETS = {  # figure: (comparison, bound, what)
    "local_rps": (">=", 5000, "local lookups, req/s per worker (closed loop)"),
    "local_p99_ms_at_1000rps": ("<=", 10, "local lookups, p99 ms at 1,000 req/s"),
    "forwarded_p99_ms": ("<=", 25, "forwarded lookups, p99 ms at 1,000 req/s"),
}


# -- the worker apps (imported by the worker subprocesses, configured by BENCH_* variables) --


def _faust_app() -> Any:
    """projection_throughput's faust app (the agent folding revenue per user into
    ``app.Table``), plus the lookup page through faust's ``table_route``."""
    app = projection_throughput._faust_app()
    table = app.tables[VIEW]

    @app.page("/table/{user}/")
    @app.table_route(table=table, match_info="user")
    async def lookup(web: Any, request: Any, user: str) -> Any:
        return web.json(table[user])  # the bare value, as Belvedere answers it

    return app


def _belvedere_app() -> Any:
    """projection_throughput's belvedere app; with ``BENCH_STANDBY_POLL`` set, the standby
    follower's poll interval (``belvedere.agents.standby.POLL``) is that many seconds."""
    poll = os.environ.get("BENCH_STANDBY_POLL")
    if poll:
        from belvedere.agents import standby

        standby.POLL = float(poll)
    return projection_throughput._belvedere_app()


__getattr__ = harness.lazy_apps(__name__, {"app": _belvedere_app, "faust_app": _faust_app})


# -- the load generator (its own process: ``http_lookups.py load``) ------------------------


def nearest_rank(ordered: Sequence[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def latency_figures(seconds: list[float], prefix: str = "") -> dict[str, float | None]:
    ordered = sorted(seconds)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    return {
        f"{prefix}p50_ms": ms(nearest_rank(ordered, 50)),
        f"{prefix}p90_ms": ms(nearest_rank(ordered, 90)),
        f"{prefix}p99_ms": ms(nearest_rank(ordered, 99)),
        f"{prefix}p999_ms": ms(nearest_rank(ordered, 99.9)),
        f"{prefix}max_ms": ms(ordered[-1] if ordered else None),
        f"{prefix}mean_ms": ms(sum(ordered) / len(ordered) if ordered else None),
    }


def machine_cpu() -> dict[str, float]:
    """CPU seconds of the whole machine so far (all CPUs, from /proc/stat): busy, and
    stolen by the hypervisor (a VM's neighbours)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return {}
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return {
        "machine": (user + nice + system + irq + softirq) / tick,
        "steal": steal / tick,
    }


class Window:
    """The measured window: requests started in it are counted; the watched processes'
    CPU time (and the generator's own) is read at its start and end."""

    def __init__(self, start: float, duration: float, pids: list[int]) -> None:
        self.start, self.end = start, start + duration
        self.pids = pids
        self.cpu: dict[str, list[float | None]] = {}

    def stamp(self) -> None:
        for pid in self.pids:
            self.cpu.setdefault(str(pid), []).append(harness.cpu_seconds(pid))
        self.cpu.setdefault("generator", []).append(time.process_time())
        for who, seconds in machine_cpu().items():
            self.cpu.setdefault(who, []).append(seconds)

    def cpu_used(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for who, (before, *after) in self.cpu.items():
            last = after[-1] if after else None
            out[who] = None if before is None or last is None else round(last - before, 3)
        return out


async def _stamp_at(loop: asyncio.AbstractEventLoop, window: Window) -> None:
    for when in (window.start, window.end):
        await asyncio.sleep(max(0.0, when - loop.time()))
        window.stamp()


class RawConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time: the request line, a Host
    header, and an answer read by its Content-Length (what aiohttp servers send for these
    answers; a chunked one is refused). Much cheaper per request than aiohttp's client,
    which matters when the generator shares a CPU with a worker."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.head: tuple[int, int, str | None] | None = None
        self.waiter: asyncio.Future[tuple[int, str | None]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None:
            return
        if self.head is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buffer[:end]).split(b"\r\n")
            del self.buffer[: end + 4]
            status, length, worker = int(lines[0].split(b" ", 2)[1]), None, None
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"x-belvedere-worker":
                    worker = value.strip().decode()
            if length is None:
                self.waiter.set_exception(ConnectionError("an answer without Content-Length"))
                self.waiter = None
                return
            self.head = (status, length, worker)
        status, length, worker = self.head
        if len(self.buffer) < length:
            return
        del self.buffer[:length]
        self.head = None
        waiter, self.waiter = self.waiter, None
        waiter.set_result((status, worker))

    async def get(self, request: bytes) -> tuple[int, str | None]:
        assert self.transport is not None and self.waiter is None
        self.waiter = self.loop.create_future()
        self.transport.write(request)
        return await self.waiter


class RawClient:
    """At most ``limit`` connections; a request waits for a free one (FIFO)."""

    def __init__(self, url: str, limit: int) -> None:
        parts = urllib.parse.urlsplit(url.replace("{key}", "KEY"))
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.netloc = parts.netloc.encode()
        self.limit = limit
        self.idle: list[RawConnection] = []
        self.open = 0
        self.queue: collections.deque[asyncio.Future[RawConnection | None]] = collections.deque()

    def request(self, url: str) -> bytes:
        target = urllib.parse.urlsplit(url)
        path = target.path + (f"?{target.query}" if target.query else "")
        return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + self.netloc + b"\r\n\r\n"

    async def _acquire(self) -> RawConnection:
        loop = asyncio.get_running_loop()
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
            self.open -= 1
        if self.open < self.limit:
            self.open += 1
            try:
                _, conn = await loop.create_connection(
                    lambda: RawConnection(loop), self.host, self.port
                )
            except BaseException:
                self.open -= 1
                raise
            return conn
        waiter: asyncio.Future[RawConnection | None] = loop.create_future()
        self.queue.append(waiter)
        conn = await waiter
        return conn if conn is not None else await self._acquire()

    def _release(self, conn: RawConnection | None) -> None:
        if conn is None or conn.closed:
            if conn is not None:
                self.open -= 1
            if self.queue:  # a slot is free: let a waiter open a connection
                self.queue.popleft().set_result(None)
            return
        if self.queue:
            self.queue.popleft().set_result(conn)
        else:
            self.idle.append(conn)

    async def fetch(self, request: bytes) -> tuple[str, str | None]:
        conn = await self._acquire()
        try:
            status, worker = await conn.get(request)  # no timeout each: see run_load
        except BaseException:
            if conn.transport is not None:
                conn.transport.close()
            conn.closed = True
            self._release(conn)
            raise
        self._release(conn)
        return str(status), worker

    async def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()


async def run_load(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    keys = Path(args.keys).read_text().split()
    prefix, _, suffix = args.url.partition("{key}")
    urls = [prefix + k + suffix for k in keys]
    pick = random.Random(args.seed).choice
    loop = asyncio.get_running_loop()
    conns = args.concurrency if args.mode == "closed" else args.connections
    start = loop.time() + 0.05
    window = Window(start + args.warmup, args.duration, args.watch)
    stamper = loop.create_task(_stamp_at(loop, window))
    latencies: list[float] = []
    service: list[float] = []
    late: list[float] = []
    statuses: Counter[str] = Counter()
    answered_by: Counter[str] = Counter()
    pending: set[asyncio.Task[None]]
    if args.client == "raw":
        raw = RawClient(args.url, conns)
        requests = [raw.request(url) for url in urls]
        pick = random.Random(args.seed).choice

        async def fetch() -> tuple[str, str | None]:
            return await raw.fetch(pick(requests))

        close = raw.close
    else:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=conns, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=10),
        )

        async def fetch() -> tuple[str, str | None]:
            async with session.get(pick(urls)) as answer:
                await answer.read()
                return str(answer.status), answer.headers.get(HEADER_WORKER)

        close = session.close

    started = [0]  # requests started in the window

    async def one(scheduled: float) -> None:
        sent = loop.time()
        counted = window.start <= scheduled < window.end
        started[0] += counted
        try:
            status, worker = await fetch()
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            status, worker = f"error {type(exc).__name__}", None
        done = loop.time()
        if counted:
            statuses[status] += 1
            latencies.append(done - scheduled)
            service.append(done - sent)
            late.append(sent - scheduled)
            if worker:
                answered_by[worker] += 1

    try:
        if args.mode == "closed":

            async def client() -> None:
                while loop.time() < window.end:
                    now = loop.time()
                    await one(now)

            clients = [loop.create_task(client()) for _ in range(args.concurrency)]
            await asyncio.wait(clients, timeout=window.end - loop.time() + 10)
            pending = {t for t in clients if not t.done()}
        else:
            interval = 1.0 / args.rate
            pending = set()
            i = 0
            while True:
                due = start + i * interval
                if due >= window.end:
                    break
                now = loop.time()
                if due > now:
                    await asyncio.sleep(due - now)
                    continue
                task = loop.create_task(one(due))
                pending.add(task)
                task.add_done_callback(pending.discard)
                i += 1
            if pending:
                await asyncio.wait(pending, timeout=10)
        await stamper
        for task in pending:  # not answered 10 s after the window: counted as failed
            task.cancel()
    finally:
        await close()
    unanswered = started[0] - sum(statuses.values())
    if unanswered:
        statuses["unanswered"] += unanswered
    total = sum(statuses.values())
    ok = sum(n for s, n in statuses.items() if s.startswith("2"))
    cpu = window.cpu_used()
    out: dict[str, Any] = {
        "generator": f"http_lookups.py load ({args.client} client)",
        "mode": args.mode,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "requests": total,
        "ok": ok,
        "errors": total - ok,
        "statuses": dict(statuses),
        "rps": round(ok / args.duration, 1),
        **latency_figures(latencies),
        "cpu_s": cpu,
    }
    if args.mode == "closed":
        out["concurrency"] = args.concurrency
    else:
        # the schedule: requests started late by the generator itself (its event loop), and
        # the time from actually sent to answered
        out |= {"rate": args.rate, "connections": conns}
        out |= latency_figures(late, "late_")
        out |= latency_figures(service, "service_")
    if answered_by:
        out["answered_by"] = dict(answered_by)
    return out


def load_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="http_lookups.py load",
        description="The load generator: GET random keys, closed or open loop; prints JSON.",
    )
    parser.add_argument("--url", required=True, help="with {key} where the key goes")
    parser.add_argument("--keys", required=True, type=Path, help="URL-quoted keys, one a line")
    parser.add_argument("--mode", choices=["closed", "open"], default="closed")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help="closed loop")
    parser.add_argument("--rate", type=float, default=RATE, help="open loop, req/s")
    parser.add_argument("--connections", type=int, default=256, help="open loop, at most")
    parser.add_argument("--duration", type=float, default=DURATION)
    parser.add_argument("--warmup", type=float, default=WARMUP)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument(
        "--client",
        choices=["raw", "aiohttp"],
        default="raw",
        help="raw: a minimal keep-alive HTTP/1.1 client on asyncio (default); aiohttp's",
    )
    parser.add_argument(
        "--watch",
        type=int,
        action="append",
        default=[],
        metavar="PID",
        help="report this process's CPU seconds in the measured window",
    )
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(run_load(args))), flush=True)
    return 0


def bare_server(argv: list[str]) -> int:
    """``http_lookups.py bare-server --port P``: aiohttp alone, the same route answered with
    a constant body (no store, no middlewares): the most this core gives through aiohttp."""
    from aiohttp import web

    parser = argparse.ArgumentParser(prog="http_lookups.py bare-server")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)

    async def row(request: web.Request) -> web.Response:
        return web.Response(body=b"123456", content_type="application/json")

    async def ready(request: web.Request) -> web.Response:
        return web.Response(body=b'{"ready": true}', content_type="application/json")

    app = web.Application()
    app.router.add_get("/ready", ready)
    app.router.add_get(f"/views/{VIEW}/{{key}}", row)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)
    return 0


# wrk: one thread, C connections, random keys from the file; done() prints the figures
WRK_SCRIPT = r"""
local keys = {}
for line in io.lines(os.getenv("BENCH_KEYS")) do keys[#keys + 1] = line end
local prefix, suffix = os.getenv("BENCH_PREFIX"), os.getenv("BENCH_SUFFIX")
math.randomseed(tonumber(os.getenv("BENCH_SEED")))
request = function()
  return wrk.format("GET", prefix .. keys[math.random(#keys)] .. suffix)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "errors": {"connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d}, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"p999_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""


# -- the bench side: running the generator -------------------------------------------------


@dataclass
class Plan:
    """How to measure: the options, and where each process runs."""

    concurrency: int
    rate: float
    duration: float
    warmup: float
    generator: str  # closed loop: "wrk" or "load"
    client: str  # http_lookups.py load's: "raw" or "aiohttp"
    repeat: int
    cpus: dict[str, str | None]  # role (first, second, generator) -> taskset CPU list
    work: Path
    timeout: float

    def pinned(self, role: str, argv: list[str]) -> list[str]:
        cpu = self.cpus.get(role)
        return ["taskset", "-c", cpu, *argv] if cpu else argv


def plan_cpus(pin: bool) -> dict[str, str | None]:
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2 or shutil.which("taskset") is None:
        return {"first": None, "second": None, "generator": None}
    generator = cpus[2] if len(cpus) > 2 else cpus[1]
    return {"first": str(cpus[0]), "second": str(cpus[1]), "generator": str(generator)}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_json(argv: list[str], env: dict[str, str] | None, timeout: float, marker: str) -> Any:
    """Run a generator; the JSON on its line starting with ``marker`` (or its only line)."""
    try:
        done = subprocess.run(
            argv,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise harness.Failed(f"the load generator did not finish in {timeout:.0f}s") from exc
    for line in done.stdout.splitlines():
        if line.startswith(marker):
            return json.loads(line[len(marker) :])
    raise harness.Failed(
        f"the load generator ({argv[0]}) exited with {done.returncode} and no figures: "
        f"{done.stdout[-500:]} {done.stderr[-1500:]}"
    )


def run_wrk(plan: Plan, url: str, keys: Path, pids: list[int], seed: int) -> dict[str, Any]:
    parts = urllib.parse.urlsplit(url.replace("{key}", "KEY"))
    prefix, _, suffix = parts.path.partition("KEY")
    script = plan.work / "lookups.lua"
    script.write_text(WRK_SCRIPT)
    env = {"BENCH_KEYS": str(keys), "BENCH_PREFIX": prefix, "BENCH_SUFFIX": suffix}

    def wrk(seconds: float, seed: int) -> tuple[list[str], dict[str, str]]:
        argv = ["wrk", "-t1", f"-c{plan.concurrency}", f"-d{max(1, round(seconds))}s"]
        argv += ["--timeout", "10s", "-s", str(script), f"{parts.scheme}://{parts.netloc}/"]
        return plan.pinned("generator", argv), {**env, "BENCH_SEED": str(seed)}

    if plan.warmup > 0:
        run_json(*wrk(plan.warmup, 1), plan.warmup + 60, "WRKJSON ")
    before = {pid: harness.cpu_seconds(pid) for pid in pids}
    generator_before, machine_before = children_cpu(), machine_cpu()
    found = run_json(*wrk(plan.duration, seed), plan.duration + 60, "WRKJSON ")
    generator, machine_after = children_cpu() - generator_before, machine_cpu()
    after = {pid: harness.cpu_seconds(pid) for pid in pids}
    seconds = found["duration_us"] / 1e6
    errors = sum(found["errors"].values())
    cpu: dict[str, float | None] = {
        str(pid): None
        if before[pid] is None or after[pid] is None
        else round(after[pid] - before[pid], 3)  # type: ignore[operator]
        for pid in pids
    }
    cpu["generator"] = round(generator, 3)
    for who, total in machine_after.items():
        cpu[who] = round(total - machine_before[who], 3)
    return {
        "generator": "wrk",
        "mode": "closed",
        "concurrency": plan.concurrency,
        "duration_s": round(seconds, 3),
        "warmup_s": plan.warmup,
        "requests": found["requests"],
        # wrk counts non-2xx/3xx answers as status errors, and failed requests by kind
        "ok": found["requests"] - found["errors"]["status"],
        "errors": errors,
        "wrk_errors": found["errors"],
        "rps": round((found["requests"] - found["errors"]["status"]) / seconds, 1),
        **{f"{q}_ms": round(found[f"{q}_us"] / 1000, 3) for q in ("p50", "p90", "p99", "p999")},
        "max_ms": round(found["max_us"] / 1000, 3),
        "mean_ms": round(found["mean_us"] / 1000, 3),
        "cpu_s": cpu,
    }


def run_loader(
    plan: Plan, url: str, keys: Path, mode: str, pids: list[int], seed: int = 5
) -> dict[str, Any]:
    argv = [sys.executable, str(Path(__file__).resolve()), "load", "--url", url]
    argv += ["--keys", str(keys), "--mode", mode, "--concurrency", str(plan.concurrency)]
    argv += ["--rate", str(plan.rate), "--duration", str(plan.duration)]
    argv += ["--warmup", str(plan.warmup), "--seed", str(seed), "--client", plan.client]
    for pid in pids:
        argv += ["--watch", str(pid)]
    return run_json(plan.pinned("generator", argv), None, plan.duration + plan.warmup + 90, "")


@dataclass
class Measurement:
    variant: str
    what: str
    mode: str  # closed | open
    figures: dict[str, Any]
    roles: dict[str, int] = field(default_factory=dict)  # worker role -> pid

    @property
    def label(self) -> str:
        return f"{self.what}, {self.mode}"

    def cpu_share(self, role: str) -> float | None:
        pid = self.roles.get(role)
        used = self.figures.get("cpu_s", {}).get(str(pid))
        return None if used is None else round(used / self.figures["duration_s"], 2)

    def as_json(self) -> dict[str, Any]:
        body = dict(self.figures)
        cpu = body.pop("cpu_s", {})
        shares = {}
        for role, pid in self.roles.items():
            if cpu.get(str(pid)) is not None:
                shares[f"{role}_worker"] = round(cpu[str(pid)] / body["duration_s"], 3)
        for who in ("generator", "machine", "steal"):
            if cpu.get(who) is not None:
                shares[who] = round(cpu[who] / body["duration_s"], 3)
        if "machine" in shares:  # the machine's busy CPUs beyond the workers and generator
            mine = sum(v for k, v in shares.items() if k not in ("machine", "steal"))
            shares["others"] = round(max(shares["machine"] - mine, 0.0), 3)
        body["cpu_share"] = shares  # CPU seconds per second of the window (1.0 = one core)
        first = cpu.get(str(self.roles.get("first")))
        if first:
            body["req_per_worker_cpu_s"] = round(body["ok"] / first, 1)
        return body


def measure(
    variant: str,
    what: str,
    mode: str,
    plan: Plan,
    url: str,
    keys: Path,
    roles: dict[str, harness.WorkerProcess],
) -> Measurement:
    """``plan.repeat`` runs; the figures of the median one (closed loop: by req/s; open
    loop: by p99), every run's main figures under ``samples``."""
    pids = {role: w.proc.pid for role, w in roles.items()}
    runs: list[Measurement] = []
    for i in range(plan.repeat):
        for worker in roles.values():
            worker.check_alive()
        if mode == "closed" and plan.generator == "wrk":
            figures = run_wrk(plan, url, keys, list(pids.values()), seed=5 + i)
        else:
            figures = run_loader(plan, url, keys, mode, list(pids.values()), seed=5 + i)
        for worker in roles.values():
            worker.check_alive()
        m = Measurement(variant, what, mode, figures, pids)
        f = m.figures
        line = f"  {m.label:<28} {f['rps']:>9,.0f} req/s  p50 {f['p50_ms']:>6.2f} ms  p99 "
        line += f"{f['p99_ms']:>6.2f} ms  worker CPU {harness.fmt(m.cpu_share('first'), '.2f')}"
        if f["errors"]:
            line += f"  ERRORS {f['errors']:,} of {f['requests']:,}"
        print(line, flush=True)
        runs.append(m)
    by = "rps" if mode == "closed" else "p99_ms"
    middle = harness.median(r.figures[by] for r in runs)
    chosen = next(r for r in runs if r.figures[by] == middle)
    if len(runs) > 1:
        chosen.figures["repeat"] = len(runs)
        chosen.figures["statistic"] = f"the run with the median {by} (median_low)"
        chosen.figures["samples"] = {
            k: [r.figures[k] for r in runs] for k in ("rps", "p50_ms", "p99_ms", "p999_ms")
        }
        chosen.figures["samples"]["worker_cpu_share"] = [r.cpu_share("first") for r in runs]
    chosen.figures["errors_all_runs"] = sum(r.figures["errors"] for r in runs)
    return chosen


# -- asking every key once (outside the measured windows) ----------------------------------


async def _probe(url: str, keys: list[str]) -> dict[str, tuple[int, Any, str | None]]:
    import aiohttp
    import orjson

    found: dict[str, tuple[int, Any, str | None]] = {}
    queue = iter(keys)

    async def client(session: aiohttp.ClientSession) -> None:
        for key in queue:
            async with session.get(url.replace("{key}", urllib.parse.quote(key, safe=""))) as r:
                body = await r.read()
                try:
                    value = orjson.loads(body)
                except orjson.JSONDecodeError:
                    value = body[:200].decode(errors="replace")
                found[key] = (r.status, value, r.headers.get(HEADER_WORKER))

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(PROBE_CONCURRENCY)))
    return found


def probe(url: str, truth: dict[str, int]) -> dict[str, str | None]:
    """Ask every key once; Failed unless each answers 200 with its total. Returns the
    worker that answered each key (X-Belvedere-Worker; None from faust)."""
    t = time.monotonic()
    found = asyncio.run(_probe(url, list(truth)))
    wrong = {k: v[:2] for k, v in found.items() if v[0] != 200 or v[1] != truth[k]}
    if wrong:
        sample = {k: {"got": v, "expected": truth[k]} for k, v in sorted(wrong.items())[:5]}
        raise harness.Failed(f"{len(wrong):,} of {len(truth):,} keys answered wrong: {sample}")
    print(
        f"  every key asked once: {len(found):,} answers, all 200 with the right total "
        f"({time.monotonic() - t:.1f}s, not measured)",
        flush=True,
    )
    return {k: v[2] for k, v in found.items()}


def write_keys(path: Path, keys: list[str]) -> Path:
    path.write_text("".join(urllib.parse.quote(k, safe="") + "\n" for k in keys))
    return path


# -- the variants --------------------------------------------------------------------------


@dataclass
class Data:
    messages: list[harness.Message]
    truth: dict[str, int]
    keys_file: Path
    kafka_topic: str | None = None


def start_worker(
    variant: str,
    plan: Plan,
    role: str,
    name: str,
    topic: str,
    data_dir: Path,
    bootstrap: str | None,
    n: int,
    extra_env: dict[str, str] | None = None,
) -> tuple[harness.WorkerProcess, int]:
    port = harness.free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {
        "BENCH_NAME": name,
        "BENCH_TOPIC": topic,
        "BENCH_DATA_DIR": str(data_dir),
        "BENCH_DUMP": str(data_dir / "totals.json"),
        **(extra_env or {}),
    }
    how = "belvedere-kafka" if variant == NO_FOLLOW else variant
    argv, more = harness.worker_command(how, MODULE, Path(__file__), port, data_dir, bootstrap, n)
    worker = harness.WorkerProcess(
        plan.pinned(role, argv),
        env | more,
        plan.work / f"{data_dir.parent.name}-{data_dir.name}.log",
    )
    return worker, port


def wait_folded(
    worker: harness.WorkerProcess, port: int, n: int, deadline: float, belvedere: bool
) -> dict[str, Any]:
    """Until all N events are folded (and, for belvedere, checkpointed and every partition
    of the view serving)."""
    url = f"http://127.0.0.1:{port}/bench/"

    def done(body: dict[str, Any]) -> bool:
        if body["processed"] < n:
            return False
        return not belvedere or (
            body["checkpointed"] >= n and projection_throughput.all_serving(body)
        )

    body = harness.wait_for(worker, lambda: harness.http_get(url), done, deadline, f"{n:,} events")
    if belvedere:
        harness.wait_for(
            worker,
            lambda: harness.http_get(f"http://127.0.0.1:{port}/ready"),
            lambda b: b.get("ready") is True,
            deadline,
            "GET /ready",
        )
    first, last = body.get("first_at"), body.get("last_at")
    took = f" in {last - first:.1f}s" if first and last else ""
    print(f"  {n:,} events folded{took} (not measured)", flush=True)
    return body


def run_belvedere(
    variant: str, data: Data, env: harness.Bench, plan: Plan, forward: bool
) -> list[Measurement]:
    n = len(data.messages)
    name = f"bench-http-{variant}-{uuid.uuid4().hex[:8]}"
    base = env.work / variant
    if variant == "belvedere-embedded":
        topic = f"{name}-orders"
        harness.fill_input(base / "first" / "broker", topic, data.messages, PARTITIONS)
    else:
        assert data.kafka_topic is not None
        topic = data.kafka_topic
    deadline = time.monotonic() + plan.timeout
    # standby partitions are still assigned, but never followed (TABLE_STANDBY_REPLICAS=0
    # would do without them, but then faust uses its round-robin assignor, whose members
    # share no partition map, and Belvedere cannot route: every forward answers 503)
    extra = {"BENCH_STANDBY_POLL": str(PAUSED_POLL)} if variant == NO_FOLLOW else {}
    first, port = start_worker(
        variant, plan, "first", name, topic, base / "first", env.bootstrap, n, extra
    )
    workers = [first]
    out: list[Measurement] = []
    try:
        wait_folded(first, port, n, deadline, True)
        url = f"http://127.0.0.1:{port}/views/{VIEW}/{{key}}"
        answered = probe(url, data.truth)
        mine = f"http://127.0.0.1:{port}"
        if set(answered.values()) != {mine}:
            raise harness.Failed(f"one worker, but answers came from {set(answered.values())}")
        roles = {"first": first}
        if variant != NO_FOLLOW:  # one worker has no standbys: the same as belvedere-kafka
            out.append(measure(variant, "local", "closed", plan, url, data.keys_file, roles))
            out.append(measure(variant, "local", "open", plan, url, data.keys_file, roles))
        if not forward:
            return out
        out += run_forwarded(
            variant, data, env, plan, name, topic, base, first, port, workers, extra
        )
    finally:
        for worker in workers:
            worker.stop()
    return out


def run_forwarded(
    variant: str,
    data: Data,
    env: harness.Bench,
    plan: Plan,
    name: str,
    topic: str,
    base: Path,
    first: harness.WorkerProcess,
    port: int,
    workers: list[harness.WorkerProcess],
    extra: dict[str, str],
) -> list[Measurement]:
    """A second worker joins the group; keys it owns are asked of the first one."""
    n = len(data.messages)
    deadline = time.monotonic() + plan.timeout
    t = time.monotonic()
    second, port2 = start_worker(
        variant, plan, "second", name, topic, base / "second", env.bootstrap, n, extra
    )
    workers.append(second)
    a, b = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port2}"

    def split(body: dict[str, Any]) -> bool:
        views = {v["name"]: v for v in body.get("views", [])}
        parts = views.get(VIEW, {}).get("partitions", {})
        return (
            len(parts) == PARTITIONS
            and all(p["state"] == "serving" for p in parts.values())
            and {p["worker"] for p in parts.values()} == {a, b}
            and not body.get("unreachable")
        )

    for worker, url in ((first, a), (second, b)):
        harness.wait_for(
            worker,
            lambda url=url: harness.http_get(f"{url}/views"),
            split,
            deadline,
            "the view's partitions split over two serving workers",
        )
        harness.wait_for(
            worker,
            lambda url=url: harness.http_get(f"{url}/ready"),
            lambda body: body.get("ready") is True,
            deadline,
            "GET /ready on both workers",
        )
    time.sleep(2.0)  # let the group settle
    views = harness.http_get(f"{a}/views") or {}
    view = next((v for v in views.get("views", []) if v["name"] == VIEW), {})
    standbys = {p: [s["worker"] for s in found] for p, found in view.get("standbys", {}).items()}
    print(
        f"  second worker joined, partitions split and serving in {time.monotonic() - t:.1f}s; "
        f"{len(standbys)} standby partitions",
        flush=True,
    )
    url = f"{a}/views/{VIEW}/{{key}}"
    answered = probe(url, data.truth)
    if set(answered.values()) != {a, b}:
        raise harness.Failed(f"answers came from {set(answered.values())}, not from {a} and {b}")
    remote = sorted(k for k, w in answered.items() if w == b)
    here = sorted(k for k, w in answered.items() if w == a)
    print(f"  {len(remote):,} of {len(answered):,} keys are the second worker's: forwarded")
    keys = write_keys(plan.work / f"{variant}-forwarded-keys.txt", remote)
    roles = {"first": first, "second": second}
    half = dataclasses.replace(plan, rate=plan.rate / 2)
    out = [
        measure(variant, "forwarded", "closed", plan, url, keys, roles),
        measure(variant, "forwarded", "open", plan, url, keys, roles),
        measure(variant, "forwarded, half rate", "open", half, url, keys, roles),
    ]
    direct = f"{b}/views/{VIEW}/{{key}}"  # the same keys, asked of their owner
    out.append(
        measure(variant, "same keys at owner", "open", plan, direct, keys, {"first": second})
    )
    for m in out:
        answered_by = m.figures.get("answered_by")
        if answered_by and set(answered_by) != {b}:
            raise harness.Failed(f"{m.label}: answers came from {answered_by}, not only {b}")
    # the first worker's own keys, asked of it, now that it has a peer (and standbys)
    own = write_keys(plan.work / f"{variant}-own-keys.txt", here)
    local = measure(variant, "local, 2 workers", "open", plan, url, own, roles)
    if set(local.figures.get("answered_by", {})) - {a}:
        raise harness.Failed(f"{local.label}: answers came from {local.figures['answered_by']}")
    out.append(local)
    for m in out:
        m.figures["standby_partitions"] = standbys
    return out


def run_faust(data: Data, env: harness.Bench, plan: Plan) -> list[Measurement]:
    variant = "faust-kafka"
    n = len(data.messages)
    assert data.kafka_topic is not None
    name = f"bench-http-faust-{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + plan.timeout
    worker, port = start_worker(
        variant, plan, "first", name, data.kafka_topic, env.work / "faust", env.bootstrap, n
    )
    try:
        wait_folded(worker, port, n, deadline, False)
        url = f"http://127.0.0.1:{port}/table/{{key}}/"
        probe(url, data.truth)
        roles = {"first": worker}
        return [
            measure(variant, "table_route", "closed", plan, url, data.keys_file, roles),
            measure(variant, "table_route", "open", plan, url, data.keys_file, roles),
        ]
    finally:
        worker.stop()


def run_bare(data: Data, env: harness.Bench, plan: Plan) -> list[Measurement]:
    variant = "aiohttp-bare"
    port = harness.free_port()
    argv = [sys.executable, str(Path(__file__).resolve()), "bare-server", "--port", str(port)]
    worker = harness.WorkerProcess(plan.pinned("first", argv), {}, env.work / "bare.log")
    try:
        harness.wait_for(
            worker,
            lambda: harness.http_get(f"http://127.0.0.1:{port}/ready"),
            lambda body: body.get("ready") is True,
            time.monotonic() + 60,
            "the bare aiohttp server",
        )
        url = f"http://127.0.0.1:{port}/views/{VIEW}/{{key}}"
        roles = {"first": worker}
        return [measure(variant, "constant answer", "closed", plan, url, data.keys_file, roles)]
    finally:
        worker.stop()


# -- the report ----------------------------------------------------------------------------


def table(ms: list[Measurement], failures: dict[str, str]) -> str:
    header = (
        f"{'variant':<25} {'measurement':<36} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'p99.9 ms':>9} {'worker CPU':>11} {'req/CPU-s':>10} {'errors':>7}"
    )
    lines = [header, "-" * len(header)]
    for m in ms:
        f, j = m.figures, m.as_json()
        how = f"c={f['concurrency']}" if m.mode == "closed" else f"{f['rate']:,.0f}/s"
        lines.append(
            f"{m.variant:<25} {m.label + ' ' + how:<36} {f['rps']:>9,.0f} "
            f"{harness.fmt(f['p50_ms'], '.2f'):>8} {harness.fmt(f['p99_ms'], '.2f'):>8} "
            f"{harness.fmt(f['p999_ms'], '.2f'):>9} "
            f"{harness.fmt(m.cpu_share('first'), '.2f'):>11} "
            f"{harness.fmt(j.get('req_per_worker_cpu_s'), ',.0f'):>10} {f['errors']:>7,}"
        )
    for variant, reason in failures.items():
        lines.append(f"{variant:<25} {reason.splitlines()[0][:300]}")
    return "\n".join(lines)


def summary(
    ms: list[Measurement],
    failures: dict[str, str],
    args: argparse.Namespace,
    plan: Plan,
    argv: list[str],
) -> dict[str, Any]:
    found: dict[tuple[str, str, str], dict[str, Any]] = {
        (m.variant, m.what, m.mode): m.as_json() for m in ms
    }
    errors: dict[str, int] = {}  # figure -> failed requests in the runs behind it

    def fig(out_key: str, variant: str, what: str, mode: str, key: str) -> Any:
        body = found.get((variant, what, mode))
        if body is None:
            return None
        errors[out_key] = body.get("errors_all_runs", body.get("errors", 0))
        return body.get(key)

    wanted = {
        "local_rps": ("belvedere-kafka", "local", "closed", "rps"),
        "local_p50_ms_at_1000rps": ("belvedere-kafka", "local", "open", "p50_ms"),
        "local_p99_ms_at_1000rps": ("belvedere-kafka", "local", "open", "p99_ms"),
        "forwarded_p50_ms": ("belvedere-kafka", "forwarded", "open", "p50_ms"),
        "forwarded_p99_ms": ("belvedere-kafka", "forwarded", "open", "p99_ms"),
        "forwarded_rps": ("belvedere-kafka", "forwarded", "closed", "rps"),
        "forwarded_p99_ms_at_half_rate": (
            "belvedere-kafka",
            "forwarded, half rate",
            "open",
            "p99_ms",
        ),
        "owner_direct_p50_ms": ("belvedere-kafka", "same keys at owner", "open", "p50_ms"),
        "owner_direct_p99_ms": ("belvedere-kafka", "same keys at owner", "open", "p99_ms"),
        "local_two_workers_p99_ms_at_1000rps": (
            "belvedere-kafka",
            "local, 2 workers",
            "open",
            "p99_ms",
        ),
        "forwarded_p50_ms_no_follower": (NO_FOLLOW, "forwarded", "open", "p50_ms"),
        "forwarded_p99_ms_no_follower": (NO_FOLLOW, "forwarded", "open", "p99_ms"),
        "forwarded_rps_no_follower": (NO_FOLLOW, "forwarded", "closed", "rps"),
        "forwarded_p99_ms_at_half_rate_no_follower": (
            NO_FOLLOW,
            "forwarded, half rate",
            "open",
            "p99_ms",
        ),
        "owner_direct_p99_ms_no_follower": (NO_FOLLOW, "same keys at owner", "open", "p99_ms"),
        "local_two_workers_p99_ms_no_follower": (NO_FOLLOW, "local, 2 workers", "open", "p99_ms"),
        "faust_table_route_rps": ("faust-kafka", "table_route", "closed", "rps"),
        "faust_p50_ms_at_1000rps": ("faust-kafka", "table_route", "open", "p50_ms"),
        "faust_p99_ms_at_1000rps": ("faust-kafka", "table_route", "open", "p99_ms"),
        "embedded_rps": ("belvedere-embedded", "local", "closed", "rps"),
        "embedded_p99_ms_at_1000rps": ("belvedere-embedded", "local", "open", "p99_ms"),
        "bare_aiohttp_rps": ("aiohttp-bare", "constant answer", "closed", "rps"),
        # req/s per CPU-second of the answering worker: less sensitive to who else runs
        "local_req_per_worker_cpu_s": (
            "belvedere-kafka",
            "local",
            "closed",
            "req_per_worker_cpu_s",
        ),
        "faust_req_per_worker_cpu_s": (
            "faust-kafka",
            "table_route",
            "closed",
            "req_per_worker_cpu_s",
        ),
        "bare_aiohttp_req_per_cpu_s": (
            "aiohttp-bare",
            "constant answer",
            "closed",
            "req_per_worker_cpu_s",
        ),
    }
    out: dict[str, Any] = {k: fig(k, *where) for k, where in wanted.items()}

    def ratio(name: str, mine: str, theirs: str) -> None:
        if out.get(mine) and out.get(theirs):
            out[name] = round(out[mine] / out[theirs], 2)

    ratio("local_vs_faust_rps", "local_rps", "faust_table_route_rps")
    ratio("embedded_vs_faust_rps", "embedded_rps", "faust_table_route_rps")
    ratio(
        "local_vs_faust_req_per_cpu_s", "local_req_per_worker_cpu_s", "faust_req_per_worker_cpu_s"
    )
    ratio("local_vs_faust_p99_at_1000rps", "local_p99_ms_at_1000rps", "faust_p99_ms_at_1000rps")
    ratio("local_vs_bare_aiohttp_rps", "local_rps", "bare_aiohttp_rps")
    targets = {}
    for key, (op, bound, what) in TARGETS.items():
        value = out.get(key)
        met = None if value is None else (value >= bound if op == ">=" else value <= bound)
        if met and errors.get(key):
            met = False  # every request must have been answered
        targets[key] = {
            "target": f"{op} {bound}",
            "value": value,
            "met": met,
            "failed_requests": errors.get(key),
            "what": what,
        }
    out["targets"] = targets
    out |= {
        "events": args.events,
        "partitions": PARTITIONS,
        "concurrency": plan.concurrency,
        "rate": plan.rate,
        "duration_s": plan.duration,
        "warmup_s": plan.warmup,
        "repeat": plan.repeat,
        "closed_loop_generator": plan.generator,
        "open_loop_generator": f"http_lookups.py load ({plan.client} client)",
        "pinning": plan.cpus,
        **harness.machine(),
        "uncommitted": uncommitted(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "command": " ".join(["python", "bench/http_lookups.py", *argv]),
        "note": (
            "the load generator runs on the same machine as the workers "
            f"({os.cpu_count()} CPUs); see pinning"
        ),
        "failures": failures,
        "runs": {m.variant + ": " + m.label: m.as_json() for m in ms},
    }
    return out


def uncommitted() -> list[str]:
    """The files under belvedere/ that differ from the commit (what ``+dirty`` means)."""
    try:
        found = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "belvedere"],
            capture_output=True,
            text=True,
        )
    except OSError:
        return []
    return found.stdout.split("\n")[:-1] if found.returncode == 0 else []


# -- the main loop -------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["load"]:
        return load_main(args[1:])
    if args[:1] == ["bare-server"]:
        return bare_server(args[1:])
    return harness.dispatch(args, no_quix_worker, bench)


def no_quix_worker() -> None:
    raise SystemExit("this bench has no Quix Streams worker")


def prepare(env: harness.Bench, n: int, keys: int, kafka: bool) -> Data:
    found = projection_throughput.prepare_input(env, n, keys, kafka)
    keys_file = write_keys(env.work / "keys.txt", sorted(found.truth))
    return Data(found.messages, found.truth, keys_file, found.kafka_topic)


def bench(argv: list[str]) -> int:
    parser = harness.parser(__doc__, EVENTS, VARIANTS, REPO / "bench/results/http.json")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("--keys", type=int, default=KEYS, metavar="K", help="distinct users")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=CONCURRENCY,
        metavar="C",
        help=f"closed loop connections (default {CONCURRENCY})",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=RATE,
        metavar="R",
        help=f"open loop req/s (default {RATE:,.0f})",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=DURATION,
        metavar="S",
        help=f"measured seconds each (default {DURATION:g})",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=WARMUP,
        metavar="S",
        help=f"seconds before each, not counted (default {WARMUP:g})",
    )
    parser.add_argument(
        "--generator",
        choices=["auto", "wrk", "load"],
        default="auto",
        help="closed loop: wrk if on PATH (auto), or http_lookups.py load",
    )
    parser.add_argument(
        "--client",
        choices=["raw", "aiohttp"],
        default="raw",
        help="the HTTP client of http_lookups.py load (default raw: see above)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=REPEAT,
        metavar="R",
        help=f"runs of each measurement; the median one is reported (default {REPEAT})",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument(
        "--no-forward",
        action="store_true",
        help="belvedere-kafka: local lookups only, no second worker",
    )
    args = parser.parse_args(argv)
    variants = [v for v in VARIANTS if not args.only or v in args.only]
    generator = args.generator
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "load"
    elif generator == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not on PATH")

    harness.describe_machine(args.events, args.keys, PARTITIONS)
    measurements: list[Measurement] = []
    failures: dict[str, str] = {}
    with harness.environment(args.kafka, variants, args.keep) as env:
        plan = Plan(
            args.concurrency,
            args.rate,
            args.duration,
            args.warmup,
            generator,
            args.client,
            args.repeat,
            plan_cpus(not args.no_pin),
            env.work,
            args.timeout,
        )
        print(
            f"closed loop: {generator}, c={plan.concurrency}; open loop: {plan.client} client at "
            f"{plan.rate:,.0f} req/s; {plan.warmup:g}s warm-up + {plan.duration:g}s each; "
            f"pinning {plan.cpus}",
            flush=True,
        )
        data = prepare(env, args.events, args.keys, any(v.endswith("-kafka") for v in variants))
        for variant in variants:
            print(f"{variant}:", flush=True)
            reason = env.skip_reason(variant)
            if reason is not None:
                failures[variant] = f"skipped: {reason}"
                print(f"  skipped: {reason}")
                continue
            try:
                if variant == "faust-kafka":
                    measurements += run_faust(data, env, plan)
                elif variant == "aiohttp-bare":
                    measurements += run_bare(data, env, plan)
                else:
                    forward = variant.endswith("-kafka") and not args.no_forward
                    if variant == NO_FOLLOW and not forward:
                        continue
                    measurements += run_belvedere(variant, data, env, plan, forward)
            except Exception as exc:  # a failed variant is reported; the others still run
                failures[variant] = f"failed: {type(exc).__name__}: {exc}"
                print(f"  {failures[variant]}", flush=True)
        body = summary(measurements, failures, args, plan, argv)
        body["keys"] = len(data.truth)

    print()
    print(table(measurements, failures))
    print()
    for t in body["targets"].values():
        verdict = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        value = harness.fmt(t["value"], ",.2f")
        print(f"target {t['what']}: {value} (target {t['target']}): {verdict}")
    if body.get("local_vs_faust_rps"):
        print(f"belvedere local / faust table_route req/s: {body['local_vs_faust_rps']:.2f}x")
    print(f"(load generator on the same {os.cpu_count()}-CPU machine; pinning {plan.cpus})")
    harness.write_json(args.json, body)
    return 1 if any(r.startswith("failed") for r in failures.values()) else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
