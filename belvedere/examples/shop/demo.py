"""``belvedere demo``: the shop on one worker, driven by a stream of generated orders.

It starts ``belvedere worker belvedere.examples.shop:app`` (the embedded broker unless
``--broker`` says otherwise), places orders through ``POST /commands/PlaceOrder`` at
``--rate`` per second, and shows how many of this run's orders are in flight, confirmed
and cancelled (and why: the card limit, the stock), beside the totals of every run, with
the URLs to look at. Ctrl-C stops it (the worker too, cleanly); run again, it goes on from
the next order with the same data. ``--orders N`` places N orders, waits until each is
confirmed or cancelled, and stops: what the tests run.

The orders are generated from ``--seed`` and their number alone, so anyone can compute
them again (``generated``): some want more than the stock holds (ReserveFailed), some
cost more than the card limit (PaymentDeclined). Both are compensated and cancelled.
After every ``RESTOCK_EVERY`` orders, each SKU is restocked.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

#: Users and SKUs orders are drawn from (few SKUs: stock runs out after a while).
USERS = 40
SKUS = 4
#: After every RESTOCK_EVERY orders, each SKU gets RESTOCK_UNITS more units.
RESTOCK_EVERY = 20
RESTOCK_UNITS = 10
#: Where a demo run keeps the number of the next order, in its data directory.
STATE_FILE = "demo.json"


def generated(seed: int, number: int) -> dict[str, Any]:
    """Order ``number`` of the stream ``seed``, as the body of a PlaceOrder command."""
    rng = random.Random(f"{seed}-{number}")
    cents = rng.randrange(1_000, 50_000)
    return {
        "orderId": f"order-{number:06d}",
        "userId": f"user-{rng.randrange(USERS):02d}",
        "sku": f"sku-{rng.randrange(SKUS)}",
        "qty": rng.randint(1, 6),
        "amount": str(Decimal(cents) / 100),
    }


@dataclass
class Options:
    broker: str
    data_dir: Path
    web_port: int
    orders: int | None
    rate: float
    seed: int


def _call(url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {**(headers or {}), **({"Content-Type": "application/json"} if data else {})}
    request = urllib.request.Request(url, data, headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except (OSError, ValueError):
        return 0, None


def _rows(url: str, view: str) -> dict[str, int]:
    status, body = _call(f"{url}/views/{view}")
    if status != 200:
        return {}
    return {row["key"]: row["value"] for row in body["rows"]}


def counts(url: str) -> dict[str, int]:
    """The shop's order counts: by status (placed, confirmed, cancelled), and its
    cancellations by cause (``cause:card limit``, ``cause:out of stock``...)."""
    causes = _rows(url, "cancelled-per-cause")
    return {**_rows(url, "orders-per-status"), **{f"cause:{c}": n for c, n in causes.items()}}


class Stop:
    """Ctrl-C asks the demo to stop between two orders, never in the middle of one (an
    order and the restocks after it are sent whole)."""

    asked = False

    @classmethod
    def ask(cls, signum: int, frame: Any) -> None:
        cls.asked = True


def settled(counts: dict[str, int]) -> int:
    return counts.get("confirmed", 0) + counts.get("cancelled", 0)


def consistent(counts: dict[str, int]) -> bool:
    """Both views have folded the same cancellations (each checkpoints on its own)."""
    causes = sum(n for key, n in counts.items() if key.startswith("cause:"))
    return causes == counts.get("cancelled", 0)


#: How the progress line names each cause of a cancellation.
CAUSES = {"card limit": "over the card limit", "out of stock": "out of stock"}


def progress(sent: int, rate: float, now: dict[str, int], before: dict[str, int]) -> str:
    """``this run: sent 10 (20/s), in flight 0, confirmed 6, cancelled 4 (3 over the card
    limit, 1 out of stock) | all time: 676 orders, 662 confirmed, 14 cancelled``: this
    run's orders are the counts since it began."""
    run = {key: n - before.get(key, 0) for key, n in now.items()}
    causes = ", ".join(
        f"{n:,} {CAUSES.get(key[6:], key[6:])}"
        for key, n in sorted(run.items())
        if key.startswith("cause:") and n
    )
    cancelled = run.get("cancelled", 0)
    total = settled(now) + now.get("placed", 0)
    return (
        f"this run: sent {sent:,} ({rate:,.0f}/s), in flight {max(sent - settled(run), 0):,}, "
        f"confirmed {run.get('confirmed', 0):,}, cancelled {cancelled:,}"
        + (f" ({causes})" if causes else "")
        + f" | all time: {total:,} orders, {now.get('confirmed', 0):,} confirmed, "
        f"{now.get('cancelled', 0):,} cancelled"
    )


class Worker:
    def __init__(self, options: Options) -> None:
        options.data_dir.mkdir(parents=True, exist_ok=True)
        self.log = options.data_dir / "demo-worker.log"
        argv = [sys.executable, "-m", "belvedere.cli", "worker", "belvedere.examples.shop:app"]
        argv += ["--broker", options.broker, "--web-port", str(options.web_port)]
        argv += ["--data-dir", str(options.data_dir)]
        with open(self.log, "w") as out:
            # Its own session: Ctrl-C reaches the demo only, which then stops the worker.
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, url: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not Stop.asked:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited with {self.proc.returncode}:\n{self.tail()}")
            if _call(f"{url}/ready")[0] == 200:
                return
            time.sleep(0.2)
        if not Stop.asked:
            raise RuntimeError(f"the worker was not ready within {timeout:.0f}s:\n{self.tail()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


class Display:
    """One line rewritten in place on a terminal; a line every few seconds otherwise."""

    def __init__(self, before: dict[str, int]) -> None:
        self.tty = sys.stdout.isatty()
        self.shown = 0.0
        #: The counts when this run began: what the run adds is measured from them.
        self.before = before

    def show(self, sent: int, started: float, read: Callable[[], dict[str, int]], final: bool = False) -> None:  # fmt: skip
        now = time.monotonic()
        if not final and now - self.shown < (0.5 if self.tty else 5.0):
            return
        self.shown = now
        line = progress(sent, sent / max(now - started, 1e-6), read(), self.before)
        if self.tty and not final:
            print(f"\r{line}\033[K", end="", flush=True)
        else:
            print(("\r" if self.tty else "") + line, flush=True)


def settle(url: str, orders: int, timeout: float) -> dict[str, int] | None:
    """The counts once ``orders`` orders are settled and both views agree; None past the
    timeout, or on Ctrl-C."""
    deadline = time.monotonic() + timeout
    while not Stop.asked and time.monotonic() < deadline:
        now = counts(url)
        if settled(now) >= orders and consistent(now):
            return now
        time.sleep(0.2)
    return None


def why_cancelled() -> str:
    from belvedere.examples.shop.inventory import INITIAL_STOCK
    from belvedere.examples.shop.payments import CARD_LIMIT

    return (
        f"Orders are cancelled when they cost more than the card limit ({CARD_LIMIT}), or want "
        f"more units than are left ({INITIAL_STOCK} of each of {SKUS} SKUs at first, "
        f"{RESTOCK_UNITS} more of each every {RESTOCK_EVERY} orders)."
    )


def run(options: Options) -> int:
    signal.signal(signal.SIGINT, Stop.ask)
    url = f"http://127.0.0.1:{options.web_port}"
    state_path = options.data_dir / STATE_FILE
    worker = Worker(options)
    first = 0
    if state_path.exists():
        first = json.loads(state_path.read_text())["next"]
    number = first
    try:
        print(f"starting the shop on {options.broker} (worker log: {worker.log}) ...", flush=True)
        worker.wait_ready(url)
        if not Stop.asked:  # Ctrl-C while it started
            # the orders an earlier run left in flight settle first, so as not to count here
            display = Display(settle(url, first, timeout=60) or counts(url))
            example = generated(options.seed, first)["orderId"]
            print(
                f"the shop is serving; orders from {example} on\n"
                f"  status page   {url}/\n"
                f"  views         {url}/views  (e.g. {url}/views/orders-per-status)\n"
                f"  one order     {url}/aggregates/Order/{example}\n"
                f"  its saga      {url}/sagas/fulfilment/{example}\n"
                f"  its trace     {url}/trace/{example}\n"
                f"{why_cancelled()}\n"
                "Ctrl-C stops the demo; run it again to go on.",
                flush=True,
            )
            started = time.monotonic()
            interval = 1.0 / options.rate
            while (options.orders is None or number < first + options.orders) and not Stop.asked:
                body = generated(options.seed, number)
                headers = {"Idempotency-Key": body["orderId"], "X-Correlation-Id": body["orderId"]}
                status, answer = _call(f"{url}/commands/PlaceOrder", body, headers)
                if status not in (202, 422):
                    raise RuntimeError(f"PlaceOrder answered {status}: {answer}\n{worker.tail()}")
                number += 1
                if number % RESTOCK_EVERY == 0:
                    for sku in range(SKUS):
                        restock = {"sku": f"sku-{sku}", "qty": RESTOCK_UNITS}
                        key = {"Idempotency-Key": f"restock-{number}-{sku}"}
                        status, answer = _call(f"{url}/commands/Restock", restock, key)
                        if status != 202:
                            raise RuntimeError(f"Restock answered {status}: {answer}")
                state_path.write_text(json.dumps({"next": number}))
                display.show(number - first, started, lambda: counts(url))
                time.sleep(max(0.0, started + (number - first) * interval - time.monotonic()))
            deadline = time.monotonic() + 120
            while not Stop.asked:  # each order so far settled, and counted by cause
                now = counts(url)
                if settled(now) >= number and consistent(now):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"orders still in flight after 120s\n{worker.tail()}")
                display.show(number - first, started, lambda: counts(url))
                time.sleep(0.2)
            display.show(number - first, started, lambda: counts(url), final=True)
    except RuntimeError as exc:
        print(f"\nbelvedere demo: {exc}", file=sys.stderr)
        return 1
    finally:  # whatever ends the demo (a broken pipe, a second Ctrl-C) stops its worker
        try:
            state_path.write_text(json.dumps({"next": number}))
            if Stop.asked:
                print("\nstopping ...", flush=True)
        finally:
            code = worker.stop()
    print(f"stopped after order {number - 1} (worker exit {code}); run again to go on.")
    return 0 if code == 0 else 1


def main(broker: str, data_dir: str | os.PathLike[str], web_port: int, orders: int | None, rate: float, seed: int) -> int:  # fmt: skip
    options = Options(broker, Path(data_dir), web_port, orders, rate, seed)
    return run(options)
