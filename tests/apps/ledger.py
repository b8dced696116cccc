"""The app the projection tests run as a worker: account balances folded from events.

``balances`` is a view filled by a projection (the batch path), indexed by owner; ``ops``
counts the events applied per account, so a double-applied event shows. Amounts of 13
make the handler raise, to test that a failing handler dead-letters only its event.

``LEDGER_FACTOR`` changes the balances logic (amounts count that many times), as a new
release would, for the rebuild tests; deposits of 50 by owner-0 publish a LargeDeposit,
the projection's side effect. ``LEDGER_REFUSE_WITHDRAWAL`` makes withdrawals of that
amount fail (a release that fails on events the old one handled), and
``LEDGER_ACTIVITY_RELEASE=2`` runs other code for the ``activity`` view (two releases).
"""

import asyncio
import os
import time

import faust.web
import orjson

import belvedere

NAME = os.environ["LEDGER_NAME"]
PARTITIONS = 4

# Belvedere's default Kafka session (6 s), which the failover test holds to its promise;
# small checkpoints, so that progress shows (and a kill lands) between many of them.
app = belvedere.App(
    NAME,
    checkpoint_events=500,
    checkpoint_interval=float(os.environ.get("LEDGER_CHECKPOINT_INTERVAL", 0.2)),
    # Small enough that a test can send an oversized event the broker still accepts.
    max_event_bytes=int(os.environ.get("LEDGER_MAX_EVENT_BYTES", 1 << 20)),
)


class Deposited(belvedere.Event, key="account"):
    account: str
    owner: str
    amount: int


class Withdrawn(belvedere.Event, key="account"):
    account: str
    amount: int


class Noted(belvedere.Event, key="account"):
    account: str
    text: str


class OrderPlaced(belvedere.Event, key="order_id"):
    order_id: str
    user_id: str
    amount: int


class LargeDeposit(belvedere.Event, key="account"):
    account: str
    amount: int


class Tallied(belvedere.Event, key="n"):
    n: int


class Balance(belvedere.Record):
    owner: str
    balance: int
    ops: int


movements = app.event_topic(
    f"{NAME}-movements", Deposited, Withdrawn, partitions=PARTITIONS, http_publish=True
)
balances = app.view("balances", value=Balance, key=str, indexes=["owner"])
notes_topic = app.event_topic(f"{NAME}-notes", Noted, partitions=PARTITIONS, http_publish=True)
notes = app.view("notes", value=str, key=str)
orders = app.event_topic(f"{NAME}-orders", OrderPlaced, partitions=PARTITIONS, http_publish=True)
revenue = app.view("revenue", value=int, key=str)  # per user, from orders keyed by order id
# Two more views of movements: several projections may read one topic.
activity = app.view("activity", value=int, key=str)  # events per account
owners = app.view("owners", value=int, key=str)  # deposits per owner, re-keyed
tallies_topic = app.event_topic(f"{NAME}-tallies", Tallied, partitions=PARTITIONS)
tallies = app.view("tallies", value=int, key=int)  # keyed by int, like its source
alerts = app.event_topic(f"{NAME}-alerts", LargeDeposit, partitions=1)
FACTOR = int(os.environ.get("LEDGER_FACTOR", "1"))
REFUSED = int(os.environ.get("LEDGER_REFUSE_WITHDRAWAL", "0"))
#: Handler calls in this process, per view: shows what a restart did (not) reprocess.
calls = {"balances": 0, "notes": 0}
#: Slow the balances projection down (seconds per event), so a test can kill a rebuild's
#: replay mid-way.
BALANCES_DELAY = float(os.environ.get("LEDGER_BALANCES_DELAY", "0"))
#: Seconds of CPU per deposit, never giving the event loop a turn: a costly fold, so a
#: test can watch a replay that only yields where the framework makes it.
BALANCES_BUSY = float(os.environ.get("LEDGER_BALANCES_BUSY", "0"))


@app.projection(movements, view=balances)
class Balances:
    async def deposited(self, view, event: Deposited) -> None:
        calls["balances"] += 1
        if BALANCES_DELAY:
            await asyncio.sleep(BALANCES_DELAY)
        if BALANCES_BUSY:
            until = time.perf_counter() + BALANCES_BUSY
            while time.perf_counter() < until:
                pass
        if event.amount == 13:
            raise ValueError("unlucky amount")
        row = view.get(event.account) or Balance(owner=event.owner, balance=0, ops=0)
        view[event.account] = Balance(
            owner=row.owner, balance=row.balance + event.amount * FACTOR, ops=row.ops + 1
        )
        if event.amount == 50 and event.owner == "owner-0":
            await alerts.publish(LargeDeposit(account=event.account, amount=event.amount))

    async def withdrawn(self, view, event: Withdrawn) -> None:
        calls["balances"] += 1
        if event.amount == REFUSED:
            raise ValueError(f"this release refuses withdrawals of {REFUSED}")
        row = view[event.account]
        view[event.account] = Balance(
            owner=row.owner, balance=row.balance - event.amount * FACTOR, ops=row.ops + 1
        )


if os.environ.get("LEDGER_ACTIVITY_RELEASE") == "2":

    @app.projection(movements, view=activity)
    def moved(view, event: Deposited | Withdrawn) -> None:
        view[event.account] = view.get(event.account, 0) + 1  # the same, in release 2

else:

    @app.projection(movements, view=activity)
    def moved(view, event: Deposited | Withdrawn) -> None:
        view[event.account] = view.get(event.account, 0) + 1


@app.projection(movements, view=owners, by="owner")
def deposited_by(view, event: Deposited) -> None:  # Withdrawn has no owner: not re-keyed
    view[event.owner] = view.get(event.owner, 0) + event.amount


@app.projection(notes_topic, view=notes)
def noted(view, event: Noted) -> None:
    calls["notes"] += 1
    view[event.account] = event.text


@app.projection(tallies_topic, view=tallies)
def tallied(view, event: Tallied) -> None:
    view[event.n] = view.get(event.n, 0) + 1


#: Slow the revenue projection down (seconds per event), so a test can kill it mid-way.
REVENUE_DELAY = float(os.environ.get("LEDGER_REVENUE_DELAY", "0"))


@app.projection(orders, view=revenue, by="user_id")
async def placed(view, event: OrderPlaced) -> None:
    if REVENUE_DELAY:
        await asyncio.sleep(REVENUE_DELAY)
    view[event.user_id] = view.get(event.user_id, 0) + event.amount


@app.page("/state")
async def state(web, request):
    serving = [s.state == "serving" for v in app.views.values() for s in v.status.values()]
    if not app.ready or not all(serving):
        return web.json({"ready": False}, status=503)
    rows, _ = balances.scan(limit=100_000)
    owner = request.query.get("owner")
    return web.json(
        {
            "ready": True,
            "count": balances.count(),
            "rows": {key: row.to_data() for key, row in rows},
            "byOwner": sorted(key for key, _ in balances.lookup("owner", owner)) if owner else None,
            "deadLetters": app.dead_letters.total,
            "suppressedDeadLetters": sum(app.dead_letters.suppressed.values()),
            "notes": dict(notes.scan(limit=100_000)[0]),
            "revenue": dict(revenue.scan(limit=100_000)[0]),
            "activity": dict(activity.scan(limit=100_000)[0]),
            "owners": dict(owners.scan(limit=100_000)[0]),
            "calls": calls,
        }
    )


@app.page("/partitions")
async def partitions(web, request):
    """Each view's partitions here: served (with what their restore read) and standbys."""
    return web.json(
        {
            view.name: {
                "active": {
                    p: {
                        "state": s.state,
                        "restoreTotal": s.restore_total,
                        "generation": s.generation,
                    }
                    for p, s in view.status.items()
                },
                "standbyLag": view.standby_lag,
            }
            for view in (balances, notes, revenue)
        }
    )


@app.page("/produce/{topic}")
class Produce(faust.web.View):
    """Appends ``[[key, envelope], ...]`` to a topic through this worker: on the embedded
    broker, while the worker runs, nothing else can."""

    async def post(self, request, topic):
        futures = [
            await app.producer.send(topic, key.encode(), orjson.dumps(value), None, None, None)
            for key, value in orjson.loads(await request.read())
        ]
        await asyncio.gather(*futures)
        return self.json({"produced": len(futures)})
