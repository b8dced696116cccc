"""Commands: how many commands a worker decides per second, and how long an HTTP
command takes, on the embedded broker and on Kafka.

The workload is an ``Account`` aggregate. A ``Deposit`` command is accepted, and emits one
``Deposited`` event. Two measurements per variant, each on a new app (new topics):

    topic   N commands (default 20,000, over K=2,000 accounts, 4 partitions) are produced
            onto the command topic before the worker starts. The bench polls the worker's
            decided count every 20 ms, and reports commands/s from the first decision to
            the last. That covers decide, append the events, checkpoint the snapshots.
    http    C clients (default 16) each send POST /commands/Deposit in a loop for D
            seconds (default 10), each with its own Idempotency-Key. It reports commands/s
            and latency p50/p99. Each answer comes once the command is decided and its
            event appended. The load generator runs in this process: on a 2-CPU machine it
            takes CPU from the worker.

Both end by checking the result. Every account's balance and version, read through GET
/aggregates/Account/{id}, must equal the sum and the count of what was sent. Any
difference fails the variant. There is no anchor: neither plain faust nor Quix Streams
has command handling, optimistic concurrency or idempotent commands to compare with.

    python bench/commands.py [--kafka HOST:PORT] [--only belvedere-embedded] [--json PATH]
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the repo root holds bench and tests.support
    sys.path.insert(0, str(REPO))

import belvedere  # noqa: E402
from bench import harness  # noqa: E402

VARIANTS = ["belvedere-embedded", "belvedere-kafka"]
PARTITIONS = 4
RESULTS = Path(__file__).parent / "results" / "commands.json"


class Deposited(belvedere.Event, key="account"):
    account: str
    amount: int


class Deposit(belvedere.Command, key="account"):
    account: str
    amount: int


class Account(belvedere.Aggregate):
    balance: int = 0

    def deposited(self, event: Deposited) -> None:
        self.balance += event.amount


def _app() -> Any:
    name = os.environ["BENCH_NAME"]
    app = belvedere.App(name)
    events = app.event_topic(f"{name}-account-events", Deposited, partitions=PARTITIONS)
    commands = app.event_topic(f"{name}-account-commands", Deposit, partitions=PARTITIONS)
    app.aggregate(Account, events=events, commands=commands)

    progress = harness.Progress()

    @app.command_handler(Account)
    def deposit(account: Account, command: Deposit) -> Deposited:
        progress.tick()
        return Deposited(account=account.id, amount=command.amount)

    @app.page("/bench/")
    async def status(web: Any, request: Any) -> Any:
        # Counted once checkpointed: events appended, snapshots written, callers answered.
        decided = app.engine.events_processed.get("aggregate-Account", 0)
        return web.json({"ready": app.ready, "decided": decided, **progress.as_dict()})

    return app


__getattr__ = harness.lazy_apps(__name__, {"app": _app})


def commands(
    n: int, keys: int, seed: int = 7
) -> tuple[list[harness.Message], dict[str, list[int]]]:
    rng = random.Random(seed)
    sent: dict[str, list[int]] = {}
    out = []
    for i in range(n):
        account, amount = f"acct-{rng.randrange(keys)}", rng.randrange(1, 100)
        sent.setdefault(account, []).append(amount)
        envelope = {
            "eventId": f"c-{i}",
            "eventType": "Deposit",
            "eventVersion": 1,
            "data": {"account": account, "amount": amount},
        }
        out.append((account.encode(), orjson.dumps(envelope)))
    return out, sent


def verify(url: str, sent: dict[str, list[int]]) -> dict[str, Any]:
    wrong = []
    for account, amounts in sent.items():
        got = harness.http_get(f"{url}/aggregates/Account/{account}")
        if got is None or (got["version"], got["state"]["balance"]) != (len(amounts), sum(amounts)):
            wrong.append((account, got))
    if wrong:
        raise harness.Failed(f"{len(wrong)} of {len(sent)} accounts are wrong, e.g. {wrong[:3]}")
    return {"accounts_verified": len(sent)}


class Run:
    """One worker of a fresh app on the variant's broker."""

    def __init__(self, variant: str, bootstrap: str | None, work: Path) -> None:
        self.name = f"benchcmd{uuid.uuid4().hex[:8]}"
        self.port = harness.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = work / self.name
        self.argv, env = harness.worker_command(
            variant, "bench.commands", Path(__file__), self.port, self.data, bootstrap, 0
        )
        self.env = {**env, "BENCH_NAME": self.name}
        self.worker: harness.WorkerProcess | None = None

    def start(self, deadline: float) -> None:
        self.worker = harness.WorkerProcess(self.argv, self.env, self.data.with_suffix(".log"))
        harness.wait_for(
            self.worker, lambda: harness.http_get(self.url + "/bench/"), lambda b: b["ready"],
            deadline, "the worker to be ready",
        )  # fmt: skip

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()


def measure_topic(variant: str, env: harness.Bench, args: Any, work: Path) -> dict[str, Any]:
    messages, sent = commands(args.events, args.keys)
    run = Run(variant, env.bootstrap, work)
    topic = f"{run.name}-account-commands"
    if variant == "belvedere-kafka":
        harness.fill_input(env.bootstrap, topic, messages, PARTITIONS)
    else:
        harness.fill_embedded(run.data / "broker", topic, messages, PARTITIONS)
    deadline = time.monotonic() + args.timeout
    try:
        run.start(deadline)
        body = harness.wait_for(
            run.worker, lambda: harness.http_get(run.url + "/bench/"),
            lambda b: b["decided"] >= args.events, deadline, "every command decided", 0.02,
        )  # fmt: skip
        elapsed = time.time() - body["first_at"]  # from the first decision to checkpointed
        checked = verify(run.url, sent)
        return {
            "commands": args.events,
            "commands_per_s": round(args.events / elapsed),
            "seconds": round(elapsed, 2),
            **checked,
        }
    finally:
        run.stop()


async def _load(
    url: str, clients: int, seconds: float, keys: int, seed: int
) -> tuple[list[float], dict[str, list[int]]]:
    import aiohttp

    latencies: list[float] = []
    sent: dict[str, list[int]] = {}
    stop = time.monotonic() + seconds
    rng = random.Random(seed)

    async def client(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < stop:
            account, amount = f"acct-{rng.randrange(keys)}", rng.randrange(1, 100)
            body = orjson.dumps({"account": account, "amount": amount})
            started = time.perf_counter()
            headers = {"Idempotency-Key": uuid.uuid4().hex, "Content-Type": "application/json"}
            async with session.post(
                f"{url}/commands/Deposit", data=body, headers=headers
            ) as answer:
                await answer.read()
                if answer.status != 202:
                    raise harness.Failed(f"POST /commands/Deposit answered {answer.status}")
            latencies.append(time.perf_counter() - started)
            sent.setdefault(account, []).append(amount)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return latencies, sent


def measure_http(variant: str, env: harness.Bench, args: Any, work: Path) -> dict[str, Any]:
    run = Run(variant, env.bootstrap, work)
    try:
        run.start(time.monotonic() + args.timeout)
        _, warm = asyncio.run(_load(run.url, args.clients, 2.0, args.keys, seed=1))  # not counted
        started = time.monotonic()
        latencies, sent = asyncio.run(_load(run.url, args.clients, args.seconds, args.keys, seed=2))
        elapsed = time.monotonic() - started
        latencies.sort()
        for account, amounts in warm.items():
            sent[account] = amounts + sent.get(account, [])
        checked = verify(run.url, sent)
        return {
            "clients": args.clients,
            "seconds": round(elapsed, 1),
            "commands_per_s": round(len(latencies) / elapsed),
            "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
            "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
            "answered": len(latencies),
            **checked,
        }
    finally:
        run.stop()


def bench(argv: list[str]) -> int:
    p = harness.parser(__doc__ or "", 20_000, VARIANTS, RESULTS)
    p.add_argument("--keys", type=int, default=2_000)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args(argv)
    results: dict[str, Any] = {"machine": {**harness.machine(), "anchor": None}, "variants": {}}
    variants = args.only or VARIANTS
    with harness.environment(args.kafka, variants, args.keep) as env:
        for variant in variants:
            reason = env.skip_reason(variant)
            if reason is not None:
                results["variants"][variant] = {"status": "skipped", "reason": reason}
                print(f"{variant}: skipped ({reason})")
                continue
            try:
                topic = measure_topic(variant, env, args, env.work)
                http = measure_http(variant, env, args, env.work)
                results["variants"][variant] = {"status": "ok", "topic": topic, "http": http}
                print(f"{variant}:\n  topic {topic}\n  http  {http}", flush=True)
            except harness.Failed as exc:
                results["variants"][variant] = {"status": "failed", "reason": str(exc)}
                print(f"{variant}: FAILED {exc}")
    harness.write_json(args.json, results)
    return 0 if all(v["status"] != "failed" for v in results["variants"].values()) else 1


if __name__ == "__main__":
    sys.exit(harness.dispatch(None, lambda: None, bench))
