"""Projections into views, on both brokers: the fold, kill -9, restore, queries, bad events."""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable

import orjson

from belvedere.streams.clients import NewRecord
from tests.support.brokers import KAFKA_ONLY, Broker
from tests.support.worker import Worker, run_cli, wait_for

PARTITIONS = 4  # tests/apps/ledger.py


def movements(
    n: int, accounts: int = 100, seed: int = 1
) -> tuple[list[NewRecord], dict[str, dict]]:
    """``n`` events over ``accounts`` accounts, and the fold of them computed here."""
    rng = random.Random(seed)
    records, fold = [], {}
    for i in range(n):
        account = f"acct-{rng.randrange(accounts)}"
        row = fold.get(account)
        if row is None or rng.random() < 0.6:
            amount = rng.choice([5, 10, 20, 50])
            owner = row["owner"] if row else f"owner-{int(account.split('-')[1]) % 10}"
            data = {"account": account, "owner": owner, "amount": amount}
            kind = "Deposited"
            fold[account] = {
                "owner": owner,
                "balance": (row["balance"] if row else 0) + amount,
                "ops": (row["ops"] if row else 0) + 1,
            }
        else:
            amount = rng.choice([1, 2, 3])
            data = {"account": account, "amount": amount}
            kind = "Withdrawn"
            fold[account] = {**row, "balance": row["balance"] - amount, "ops": row["ops"] + 1}
        envelope = {"eventId": f"e-{i}", "eventType": kind, "eventVersion": 1, "data": data}
        records.append(NewRecord(account.encode(), orjson.dumps(envelope), 0))
    return records, fold


def deposits_by_owner(records: list[NewRecord]) -> dict[str, int]:
    out: dict[str, int] = {}
    for record in records:
        envelope = orjson.loads(record.value)
        if envelope["eventType"] == "Deposited":
            data = envelope["data"]
            out[data["owner"]] = out.get(data["owner"], 0) + data["amount"]
    return out


def total_ops(state: dict) -> int:
    return sum(row["ops"] for row in state["rows"].values())


def test_projection_equals_the_fold_of_its_events(
    broker: Broker, ledger: Worker, unique_name: str
) -> None:
    records, fold = movements(50_000)
    broker.produce(f"{unique_name}-movements", records)
    ledger.start()
    state = ledger.wait_until(
        "/state?owner=owner-3",
        lambda s: s["ready"] and total_ops(s) == 50_000,
        timeout=240,
        what="50,000 events folded",
    )
    assert state["rows"] == fold
    assert state["count"] == len(fold)
    assert state["byOwner"] == sorted(k for k, row in fold.items() if row["owner"] == "owner-3")
    assert state["deadLetters"] == 0


def test_kill_9_mid_projection_then_restart_gives_the_exact_fold(
    broker: Broker, ledger: Worker, unique_name: str
) -> None:
    records, fold = movements(30_000, seed=2)
    broker.produce(f"{unique_name}-movements", records)
    ledger.start()
    ledger.wait_until(
        "/state", lambda s: s["ready"] and total_ops(s) >= 3_000, timeout=120, what="some progress"
    )
    ledger.kill()

    ledger.start()
    state = ledger.wait_until(
        "/state",
        lambda s: s["ready"] and total_ops(s) >= 30_000,
        timeout=240,
        what="all 30,000 events",
    )
    assert total_ops(state) == 30_000
    assert state["rows"] == fold
    # the two other views of the same topic, each exact too: each restores and catches up on
    # its own (the re-keyed one through its internal topic), so wait for both
    owners = deposits_by_owner(records)
    state = ledger.wait_until(
        "/state",
        lambda s: (
            sum(s["owners"].values()) >= sum(owners.values())
            and sum(s["activity"].values()) >= 30_000
        ),
        timeout=120,
        what="every deposit in the re-keyed view and every event in activity",
    )
    assert state["activity"] == {k: row["ops"] for k, row in fold.items()}
    assert state["owners"] == owners


def test_view_is_restored_from_its_changelog(
    broker: Broker, ledger: Worker, unique_name: str
) -> None:
    records, fold = movements(5_000, seed=3)
    broker.produce(f"{unique_name}-movements", records)
    ledger.start()
    before = ledger.wait_until(
        "/state", lambda s: s["ready"] and total_ops(s) == 5_000, what="5,000 events"
    )
    assert ledger.stop() == 0

    shutil.rmtree(ledger.data_dir / "views")
    ledger.start()
    after = ledger.wait_until("/state?owner=owner-1", lambda s: s["ready"], what="restored")
    assert after["rows"] == before["rows"] == fold
    assert after["count"] == len(fold)
    assert after["byOwner"] == sorted(k for k, row in fold.items() if row["owner"] == "owner-1")


def test_a_failing_handler_dead_letters_its_event_and_the_partition_goes_on(
    broker: Broker, ledger: Worker, unique_name: str
) -> None:
    def event(kind: str, **data: object) -> NewRecord:
        return NewRecord(
            b"acct-x",
            orjson.dumps(
                {"eventType": kind, "eventVersion": 1, "data": {"account": "acct-x", **data}}
            ),
            0,
        )

    broker.produce(
        f"{unique_name}-movements",
        [
            event("Deposited", owner="o", amount=10),
            event(
                "Deposited", owner="o", amount=13
            ),  # the handler raises: rolled back, dead-lettered
            event("Withdrawn", amount="lots"),  # bad data: dead-lettered
            event("Withdrawn", amount=4),
        ],
    )
    ledger.start()
    state = ledger.wait_until(
        "/state",
        lambda s: (
            s["ready"]
            and s["deadLetters"] == 2
            and "acct-x" in s["rows"]
            and s["rows"]["acct-x"]["ops"] == 2
        ),
        what="both good events",
    )
    assert state["rows"]["acct-x"] == {"owner": "o", "balance": 6, "ops": 2}


def note(account: str, text: str) -> NewRecord:
    data = {"account": account, "text": text}
    return NewRecord(
        account.encode(), orjson.dumps({"eventType": "Noted", "eventVersion": 1, "data": data}), 0
    )


def reset(ledger: Worker, broker: Broker, name: str, view: str) -> str:
    result = run_cli(
        "reset", "tests.apps.ledger:app", view, "--broker", broker.url, "--data-dir", str(ledger.data_dir),
        env={"LEDGER_NAME": name},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def fill_both_views(broker: Broker, ledger: Worker, name: str, records: list[NewRecord]) -> dict:
    """Fold ``records`` into balances and 20 notes into notes, then stop; the state then."""
    broker.produce(f"{name}-movements", records)
    broker.produce(f"{name}-notes", [note(f"acct-{i}", f"note {i}") for i in range(20)])
    ledger.start()
    before = ledger.wait_until(
        "/state",
        lambda s: s["ready"] and total_ops(s) == len(records) and len(s["notes"]) == 20,
        what="both views",
    )
    assert ledger.stop() == 0
    return before


def test_reset_rebuilds_the_named_view_and_leaves_the_other_alone(
    broker: Broker, ledger: Worker, unique_name: str
) -> None:
    records, fold = movements(3_000, seed=4)
    before = fill_both_views(broker, ledger, unique_name, records)

    assert "reset view balances" in reset(ledger, broker, unique_name, "balances")
    views = ledger.data_dir / "views"
    assert not (views / "balances-g1").exists() and (views / "notes-g1").exists()

    ledger.start()
    after = ledger.wait_until(
        "/state", lambda s: s["ready"] and total_ops(s) >= 3_000, what="balances rebuilt"
    )
    assert after["rows"] == fold and total_ops(after) == 3_000
    assert after["calls"] == {
        "balances": 3_000,
        "notes": 0,
    }  # rebuilt from the source; notes untouched
    assert after["notes"] == before["notes"]


def test_a_stale_local_copy_behind_a_recreated_changelog_is_rebuilt(
    broker: Broker, ledger: Worker, unique_name: str
) -> None:
    first, _ = movements(2_000, seed=5)
    broker.produce(f"{unique_name}-movements", first)
    ledger.start()
    ledger.wait_until("/state", lambda s: s["ready"] and total_ops(s) == 2_000, what="2,000 events")
    assert ledger.stop() == 0
    local = ledger.data_dir / "views" / "balances-g1"
    stale = ledger.data_dir.parent / "stale-balances"
    shutil.copytree(local, stale)

    reset(ledger, broker, unique_name, "balances")
    records, fold = movements(3_000, seed=5)  # the same 2,000, then 1,000 more
    assert records[:2_000] == first
    broker.produce(f"{unique_name}-movements", records[2_000:])
    ledger.start()
    ledger.wait_until(
        "/state",
        lambda s: s["ready"] and total_ops(s) == 3_000,
        what="3,000 events after the reset",
    )
    assert ledger.stop() == 0

    shutil.rmtree(local)
    shutil.copytree(stale, local)  # a machine that missed the reset comes back
    ledger.start()
    state = ledger.wait_until("/state", lambda s: s["ready"], what="restored")
    assert state["rows"] == fold and total_ops(state) == 3_000
    assert state["calls"]["balances"] == 0  # restored from the new changelog, not reprocessed


def test_a_view_keyed_differently_from_its_source_is_repartitioned_exactly_once(
    broker: Broker, ledger: Worker, unique_name: str
) -> None:
    rng = random.Random(6)
    records, revenue = [], {}
    for i in range(20_000):
        user, amount = f"user-{rng.randrange(50)}", rng.randrange(1, 100)
        revenue[user] = revenue.get(user, 0) + amount
        data = {"orderId": f"order-{i}", "userId": user, "amount": amount}
        envelope = {"eventType": "OrderPlaced", "eventVersion": 1, "data": data}
        records.append(
            NewRecord(f"order-{i}".encode(), orjson.dumps(envelope), 0)
        )  # keyed by order
    broker.produce(f"{unique_name}-orders", records)

    ledger.env["LEDGER_REVENUE_DELAY"] = "0.0005"  # ~10 s for all: the kill lands mid-way
    ledger.start()
    progress = ledger.wait_until(
        "/state", lambda s: s["ready"] and sum(s["revenue"].values()) > 0, what="some revenue"
    )
    ledger.kill()
    assert sum(progress["revenue"].values()) < sum(revenue.values())

    del ledger.env["LEDGER_REVENUE_DELAY"]
    ledger.start()
    state = ledger.wait_until(
        "/state",
        lambda s: s["ready"] and sum(s["revenue"].values()) >= sum(revenue.values()),
        timeout=240,
        what="all revenue",
    )
    assert state["revenue"] == revenue


@KAFKA_ONLY
def test_a_standby_keeps_a_warm_copy_and_takes_over_without_a_full_restore(
    broker: Broker, workers: Callable[..., Worker], unique_name: str
) -> None:
    broker.create_ledger_topics(unique_name)
    records, fold = movements(8_000, seed=21)
    broker.produce(f"{unique_name}-movements", records)
    env = {"LEDGER_NAME": unique_name}
    first = workers("tests.apps.ledger:app", env, data_dir="first").start()
    second = workers("tests.apps.ledger:app", env, data_dir="second").start()

    def settled(worker: Worker) -> dict | None:
        parts = worker.get("/partitions")
        if parts is None:
            return None
        mine = parts["balances"]
        served = {p for p, s in mine["active"].items() if s["state"] == "serving"}
        standing = {p for p, lag in mine["standbyLag"].items() if lag == 0}
        return mine if served and standing and len(served | standing) == PARTITIONS else None

    def folded() -> int:
        states = [w.get("/state") for w in (first, second)]
        if not all(s and s["ready"] for s in states):
            return 0
        return sum(total_ops(s) for s in states)

    wait_for(lambda: folded() == 8_000, timeout=120, what="8,000 events over two workers")
    wait_for(lambda: settled(first) and settled(second), timeout=60, what="caught-up standbys")
    standing = set(settled(second)["standbyLag"])
    first.kill()

    taken = second.wait_until(
        "/partitions",
        lambda b: (
            {p for p, s in b["balances"]["active"].items() if s["state"] == "serving"}
            == {str(p) for p in range(PARTITIONS)}
        ),
        timeout=90,
        what="the survivor serving every partition",
    )["balances"]["active"]
    assert standing and all(taken[p]["restoreTotal"] == 0 for p in standing), taken
    state = second.wait_until("/state", lambda s: s["ready"], what="serving")
    assert state["rows"] == fold
