"""``belvedere demo``: the shop, driven headless on each broker, then its views checked
against a ground truth computed from the generated orders."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from belvedere.examples.shop.analytics import cause
from belvedere.examples.shop.demo import CAUSES, RESTOCK_EVERY, RESTOCK_UNITS, SKUS, generated
from belvedere.examples.shop.inventory import INITIAL_STOCK
from belvedere.examples.shop.payments import CARD_LIMIT
from tests.support.brokers import Broker
from tests.support.http import call
from tests.support.worker import REPO, Worker, free_port, wait_for

SEED = 1


def demo_argv(broker: Broker, data: Path, *more: str) -> list[str]:
    argv = [sys.executable, "-m", "belvedere.cli", "demo", "--rate", "100", "--broker", broker.url]
    return [
        *argv,
        "--data-dir",
        str(data),
        "--web-port",
        str(free_port()),
        "--seed",
        str(SEED),
        *more,
    ]


def demo(broker: Broker, data: Path, name: str, orders: int) -> subprocess.CompletedProcess:
    """The installed ``belvedere`` command, run where a user would: in a directory of their
    own, not the repository (the shop ships in the package)."""
    assert REPO not in data.parents
    script = Path(sys.executable).parent / "belvedere"
    argv = [str(script), *demo_argv(broker, data, "--orders", str(orders))[3:]]
    env = {**os.environ, "SHOP_NAME": name}
    return subprocess.run(
        argv, cwd=data.parent, env=env, capture_output=True, text=True, timeout=300
    )


def interrupted_demo(broker: Broker, data: Path, name: str, after: int) -> str:
    """Run the demo with no end, and Ctrl-C it once order number ``after`` is placed."""
    env = {**os.environ, "SHOP_NAME": name}
    log = data.parent / "interrupted.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(demo_argv(broker, data), cwd=REPO, env=env, stdout=out, stderr=out)
    try:
        wait_for(lambda: next_order(data) > after, timeout=120, what=f"order {after} placed")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    return log.read_text()


def next_order(data: Path) -> int:
    try:
        return json.loads((data / "demo.json").read_text())["next"]
    except (OSError, ValueError):
        return 0


@pytest.fixture
def shop_name(unique_name: str) -> str:
    return f"{unique_name}-shop"


def test_the_demo_runs_headless_and_its_views_add_up(
    broker: Broker, workers: Callable[..., Worker], shop_name: str, tmp_path: Path
) -> None:
    first = demo(broker, tmp_path / "shop", shop_name, 50)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "its trace" in first.stdout and "order-000000" in first.stdout
    # its worker said it served, with the shop's own views (not aggregate-*, saga-*...)
    said = (tmp_path / "shop" / "demo-worker.log").read_text()
    views = "cancelled-per-cause, emails-per-user, orders-per-status, revenue-per-user"
    assert f"{shop_name} ready at http://127.0.0.1:" in said and f"— views: {views}; " in said
    assert "Starting..." not in said, said
    # Again, with no end: it goes on from the same data, and Ctrl-C stops it cleanly.
    again = interrupted_demo(broker, tmp_path / "shop", shop_name, after=60)
    assert "orders from order-000050 on" in again and "stopped after order" in again
    # its progress counts this run's orders apart from every run's (as the views lag)
    runs = re.findall(r"this run: sent (\d+) .* \| all time: (\d+) orders", again)
    assert runs and int(runs[0][1]) >= 50 and int(runs[-1][0]) > 0, runs
    total = next_order(tmp_path / "shop")

    shop = workers("belvedere.examples.shop:app", {"SHOP_NAME": shop_name}, "shop").start()
    shop.wait_until("/ready", lambda r: r.get("ready") is True, what="the shop serving")

    def statuses() -> dict[str, int]:
        rows = call(f"{shop.url}/views/orders-per-status").body["rows"]
        return {row["key"]: row["value"] for row in rows}

    seen: list[dict[str, int]] = []

    def settled() -> dict[str, int] | None:
        seen.append(counts := statuses())
        done = counts.get("confirmed", 0) + counts.get("cancelled", 0) == total
        return counts if done else None

    # The orders in flight at the Ctrl-C are settled now.
    try:
        counts = wait_for(settled, timeout=120, what=f"{total} orders settled")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the view last said {seen[-1:]}") from None
    assert counts["placed"] == 0 and total > 60

    orders = [generated(SEED, n) for n in range(total)]
    revenue: dict[str, Decimal] = {}
    sold = dict.fromkeys((f"sku-{i}" for i in range(SKUS)), 0)
    emails: dict[str, int] = {}
    reasons = []
    outcomes: list[str] = []  # confirmed, or the cause of the cancellation, per order
    for order in orders:
        got = call(f"{shop.url}/aggregates/Order/{order['orderId']}").body["state"]
        assert (got["userId"], got["sku"], got["qty"], Decimal(got["amount"])) == (
            order["userId"], order["sku"], order["qty"], Decimal(order["amount"]),
        )  # fmt: skip
        emails[order["userId"]] = emails.get(order["userId"], 0) + 1
        if Decimal(order["amount"]) > CARD_LIMIT:  # declined, if it got as far as payment
            assert got["status"] == "cancelled", got
        if got["status"] == "confirmed":
            user = order["userId"]
            revenue[user] = revenue.get(user, Decimal(0)) + Decimal(order["amount"])
            sold[order["sku"]] += order["qty"]
        else:
            assert got["status"] == "cancelled"
            reasons.append((order["orderId"], got["reason"]))
        outcomes.append(got["status"] if got["status"] == "confirmed" else cause(got["reason"]))

    # The first run's last line: its 50 orders by outcome, cancellations by cause.
    confirmed = outcomes[:50].count("confirmed")
    causes = {c: outcomes[:50].count(c) for c in sorted(set(outcomes[:50]) - {"confirmed"})}
    why = ", ".join(f"{n} {CAUSES.get(c, c)}" for c, n in causes.items())
    last = [line for line in first.stdout.splitlines() if line.startswith("this run:")][-1]
    assert last.startswith("this run: sent 50 ("), last
    assert last.endswith(
        f"in flight 0, confirmed {confirmed}, cancelled {50 - confirmed} ({why}) | all time: "
        f"50 orders, {confirmed} confirmed, {50 - confirmed} cancelled"
    ), last

    def earned() -> dict[str, Decimal]:
        rows = call(f"{shop.url}/views/revenue-per-user?limit=1000").body["rows"]
        return {row["key"]: Decimal(row["value"]) for row in rows}

    # Each view folds the order events on its own checkpoints: wait for this one too.
    wait_for(lambda: earned() == revenue, timeout=60, what=f"revenue per user {revenue}")

    def emails_sent() -> dict[str, int] | None:  # one per order, sent after it settled
        rows = call(f"{shop.url}/views/emails-per-user?limit=1000").body["rows"]
        found = {row["key"]: row["value"] for row in rows}
        return found if sum(found.values()) >= total else None

    assert wait_for(emails_sent, timeout=60, what="an email per order") == emails
    restocked = RESTOCK_UNITS * (total // RESTOCK_EVERY)
    on_hand = {sku: INITIAL_STOCK + restocked - units for sku, units in sold.items()}

    def stock() -> dict[str, int]:  # a release may land after the order's cancellation
        return {
            sku: call(f"{shop.url}/aggregates/Stock/{sku}").body["state"]["onHand"] for sku in sold
        }

    wait_for(lambda: stock() == on_hand, timeout=60, what=f"stock {on_hand}, less what was sold")

    # Both compensation paths ran: out of stock, and declined after the stock was held.
    assert any(" left, " in reason for _, reason in reasons), reasons
    declined = [order for order, reason in reasons if "card limit" in reason]
    compensated = []
    for order in declined:
        history = call(f"{shop.url}/sagas/fulfilment/{order}").body["history"]
        compensated += [h["command"] for h in history if h["what"] == "undo"]
    assert "ReleaseStock" in compensated
    trace = call(f"{shop.url}/trace/{declined[0]}").body["events"]
    assert trace[0]["eventType"] == "PlaceOrder" and trace[-1]["eventType"] == "EmailSent"


def test_a_demo_that_dies_stops_its_worker(broker: Broker, shop_name: str, tmp_path: Path) -> None:
    """The worker runs in its own session (Ctrl-C reaches the demo only), so a demo ended
    by anything, here its output closed under it, must stop the worker itself."""
    data = tmp_path / "shop"
    env = {**os.environ, "SHOP_NAME": shop_name}
    proc = subprocess.Popen(
        demo_argv(broker, data), cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    pid = None
    try:
        wait_for(lambda: next_order(data) > 5, timeout=120, what="orders placed")
        pid = worker_pid(proc)
        assert pid is not None and Path(f"/proc/{pid}").exists()
        assert proc.stdout is not None
        proc.stdout.close()  # the demo's next line of progress breaks its pipe
        assert proc.wait(120) != 0
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=30, what="the worker gone")
    finally:
        if proc.poll() is None:
            proc.kill()
        if pid is not None and Path(f"/proc/{pid}").exists():  # left behind: this test's own
            os.kill(pid, signal.SIGKILL)


def worker_pid(demo: subprocess.Popen) -> int | None:
    """The demo's worker: its child process (it says nothing of its PID by default)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == demo.pid:
            return int(stat.parent.name)
    return None
