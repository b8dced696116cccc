"""Read-after-write: how long a read given a write's token waits for it.

One worker of a small app: ``Deposited`` events (4 partitions) folded into a ``balances``
view with an ``owner`` index. One client, in this process, repeats: ``POST /events/{topic}``
one deposit to a random account, then at once the read with the answer's token
(``?after=TOKEN&timeout=5``), and checks that the read shows the deposit. Measurements,
each ``--samples`` times (default 300) after 20 not counted:

    key      GET /views/balances/{account}?after=TOKEN: the worker holds the key
    lookup   GET /views/balances/by/owner/{owner}?after=TOKEN: an index lookup over
             every partition

With ``--without-hurry`` each variant runs again with the worker's
``ProjectionEngine.checkpoint_soon`` turned off, as before it existed (``without_hurry``).
Reported per measurement: the read's latency p50/p90/p99/max (from sending it to its
answer: the wait for the fold and the checkpoint), the write's, and write + read. A read
that does not show its write, or answers anything but 200, fails the variant. The bench
and, on Kafka, the broker share the machine's CPUs with the worker. Target: read p99 <=
50 ms on both brokers (before the checkpoint was hurried, a key read waited out the
0.5 s checkpoint interval: p50 494 ms, p99 746 ms).

    python bench/read_after_write.py [--kafka HOST:PORT] [--only belvedere-embedded]
        [--samples N] [--without-hurry] [--json PATH]
"""

from __future__ import annotations

import asyncio
import math
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
ACCOUNTS = 200
OWNERS = 20
WARMUP = 20
TARGET_P99_MS = 50.0
KINDS = ("key", "lookup")
RESULTS = Path(__file__).parent / "results" / "read_after_write.json"


class Deposited(belvedere.Event, key="account"):
    account: str
    owner: str
    amount: int


def _app() -> Any:
    name = os.environ["BENCH_NAME"]
    app = belvedere.App(name)
    deposits = app.event_topic(
        f"{name}-deposits", Deposited, partitions=PARTITIONS, http_publish=True
    )
    balances = app.view("balances", value=dict, indexes=["owner"])

    @app.projection(deposits, view=balances)
    def deposited(view: Any, event: Deposited) -> None:
        row = view.get(event.account) or {"owner": event.owner, "balance": 0}
        view[event.account] = {**row, "balance": row["balance"] + event.amount}

    if os.environ.get("BENCH_NO_HURRY"):  # the comparison: reads wait out the interval
        app.engine.checkpoint_soon = lambda view, partition: None

    @app.page("/bench/")
    async def status(web: Any, request: Any) -> Any:
        return web.json({"ready": app.ready})

    return app


__getattr__ = harness.lazy_apps(__name__, {"app": _app})


def owner_of(account: int) -> str:
    return f"owner-{account % OWNERS}"


def figures(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)

    def rank(q: float) -> float:
        return round(ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] * 1000, 2)

    return {"p50_ms": rank(50), "p90_ms": rank(90), "p99_ms": rank(99), "max_ms": rank(100)}


async def _measure(
    url: str, topic: str, kind: str, samples: int, seed: int, balances: dict[int, int]
) -> dict[str, Any]:
    """``balances``: what each account holds so far (the view outlives one measurement)."""
    import aiohttp

    rng = random.Random(seed)
    writes: list[float] = []
    reads: list[float] = []
    both: list[float] = []
    async with aiohttp.ClientSession() as session:
        for i in range(WARMUP + samples):
            account, amount = rng.randrange(ACCOUNTS), rng.randrange(1, 100)
            envelope = {
                "eventType": "Deposited",
                "eventVersion": 1,
                "data": {"account": f"a-{account}", "owner": owner_of(account), "amount": amount},
            }
            started = time.perf_counter()
            async with session.post(
                f"{url}/events/{topic}",
                data=orjson.dumps(envelope),
                headers={"Content-Type": "application/json"},
            ) as answer:
                body = orjson.loads(await answer.read())
                if answer.status != 201:
                    raise harness.Failed(f"POST /events answered {answer.status}: {body}")
            written = time.perf_counter()
            balances[account] = balances.get(account, 0) + amount
            after = f"after={body['token']}&timeout=5"
            if kind == "key":
                path = f"/views/balances/a-{account}?{after}"
            else:
                path = f"/views/balances/by/owner/{owner_of(account)}?{after}&limit=1000"
            async with session.get(url + path) as answer:
                raw = await answer.read()
                status = answer.status
            done = time.perf_counter()
            if status != 200:
                raise harness.Failed(f"GET {path} answered {status}: {raw[:200]!r}")
            found = orjson.loads(raw)
            if kind == "lookup":
                rows = {r["key"]: r["value"] for r in found["rows"]}
                found = rows.get(f"a-{account}")
            if found is None or found["balance"] != balances[account]:
                raise harness.Failed(f"{path} missed the write: {found}, not {balances[account]}")
            if i >= WARMUP:
                writes.append(written - started)
                reads.append(done - written)
                both.append(done - started)
    return {
        "samples": samples,
        "read": figures(reads),
        "write": figures(writes),
        "write_and_read": figures(both),
    }


def run_variant(variant: str, env: harness.Bench, args: Any, hurry: bool = True) -> dict[str, Any]:
    name = f"benchryw{uuid.uuid4().hex[:8]}"
    port = harness.free_port()
    url = f"http://127.0.0.1:{port}"
    data = env.work / name
    argv, extra = harness.worker_command(
        variant, "bench.read_after_write", Path(__file__), port, data, env.bootstrap, 0
    )
    extra = {**extra, "BENCH_NAME": name, **({} if hurry else {"BENCH_NO_HURRY": "1"})}
    worker = harness.WorkerProcess(argv, extra, data.with_suffix(".log"))
    try:
        harness.wait_for(
            worker, lambda: harness.http_get(url + "/bench/"), lambda b: b["ready"],
            time.monotonic() + args.timeout, "the worker to be ready",
        )  # fmt: skip
        out: dict[str, Any] = {"loadavg_1m_before": round(os.getloadavg()[0], 2)}
        balances: dict[int, int] = {}
        for seed, kind in enumerate(KINDS):
            out[kind] = asyncio.run(
                _measure(url, f"{name}-deposits", kind, args.samples, seed, balances)
            )
            print(f"  {kind}: {out[kind]}", flush=True)
        out["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
        return out
    finally:
        worker.stop()


def bench(argv: list[str]) -> int:
    p = harness.parser(__doc__ or "", 0, VARIANTS, RESULTS)
    p.add_argument("--samples", type=int, default=300)
    p.add_argument(
        "--without-hurry",
        action="store_true",
        help="also measure with checkpoint_soon turned off (reads wait for the interval)",
    )
    args = p.parse_args(argv)
    results: dict[str, Any] = {
        "machine": {**harness.machine(), "anchor": None},
        "target": f"read p99 <= {TARGET_P99_MS:g} ms",
        "variants": {},
    }
    variants = args.only or VARIANTS
    with harness.environment(args.kafka, variants, args.keep) as env:
        for variant in variants:
            reason = env.skip_reason(variant)
            if reason is not None:
                results["variants"][variant] = {"status": "skipped", "reason": reason}
                print(f"{variant}: skipped ({reason})")
                continue
            print(f"{variant}:", flush=True)
            try:
                found = run_variant(variant, env, args)
            except harness.Failed as exc:
                results["variants"][variant] = {"status": "failed", "reason": str(exc)}
                print(f"  FAILED {exc}")
                continue
            met = all(found[kind]["read"]["p99_ms"] <= TARGET_P99_MS for kind in KINDS)
            results["variants"][variant] = {"status": "ok", "target_met": met, **found}
            if args.without_hurry:
                print(f"{variant}, without checkpoint_soon:", flush=True)
                try:
                    results["variants"][variant]["without_hurry"] = run_variant(
                        variant, env, args, hurry=False
                    )
                except harness.Failed as exc:
                    print(f"  FAILED {exc}")
    harness.write_json(args.json, results)
    return 0 if all(v["status"] != "failed" for v in results["variants"].values()) else 1


if __name__ == "__main__":
    sys.exit(harness.dispatch(None, lambda: None, bench))
