"""Rebuilding a view into a new generation while it serves, on both brokers."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import orjson
import pytest

from belvedere.streams.clients import NewRecord
from belvedere.tables.generations import Generation, Generations, PartitionProgress
from tests.support.brokers import KAFKA_ONLY, Broker
from tests.support.http import call
from tests.support.metrics import labelled, scrape
from tests.support.worker import REPO, Worker, run_cli, wait_for
from tests.test_projections import fill_both_views, movements, total_ops

APP = "tests.apps.ledger:app"


def scaled(fold: dict[str, dict], factor: int) -> dict[str, dict]:
    """The fold under the new logic (amounts count ``factor`` times)."""
    return {k: {**row, "balance": row["balance"] * factor} for k, row in fold.items()}


def alert_worthy(records: list[NewRecord]) -> list[str]:
    """The event ids of the deposits the projection raises an alert for."""
    found = []
    for record in records:
        envelope = orjson.loads(record.value)
        data = envelope["data"]
        deposit = envelope["eventType"] == "Deposited"
        if deposit and data["amount"] == 50 and data["owner"] == "owner-0":
            found.append(envelope["eventId"])
    return found


class Reads(threading.Thread):
    """GETs rows of a view in a loop, keeping every answer's status, until stopped."""

    def __init__(self, url: str, keys: list[str]) -> None:
        super().__init__(daemon=True)
        self.url, self.keys = url, keys
        self.statuses: list[int] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stopping.is_set():
            key = self.keys[i % len(self.keys)]
            i += 1
            try:
                with urllib.request.urlopen(f"{self.url}/views/balances/{key}", timeout=10) as r:
                    self.statuses.append(r.status)
            except urllib.error.HTTPError as exc:
                self.statuses.append(exc.code)
            except OSError:
                self.statuses.append(0)  # no answer at all

    def stop(self) -> list[int]:
        self.stopping.set()
        self.join(30)
        return self.statuses


def produce_through(worker: Worker, topic: str, records: list[NewRecord]) -> None:
    for i in range(0, len(records), 500):
        body = [[r.key.decode(), orjson.loads(r.value)] for r in records[i : i + 500]]
        request = urllib.request.Request(
            f"{worker.url}/produce/{topic}",
            orjson.dumps(body),
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200


def rebuild(worker: Worker, name: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "belvedere.cli", "rebuild", APP, "balances", "--url", worker.url, *args],
        cwd=REPO,
        env={**os.environ, **worker.env, "LEDGER_NAME": name},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def test_rebuild_while_reads_run_serves_the_new_logic_and_touches_nothing_else(
    broker: Broker, ledger: Worker, unique_name: str
) -> None:
    records, fold = movements(12_000, seed=11)
    first, later = records[:8_000], records[8_000:]
    before = fill_both_views(broker, ledger, unique_name, first)
    # Dead-lettered when first folded; the replay meets them again and only counts them.
    unlucky = {"account": "acct-1", "owner": "owner-1", "amount": 13}
    envelope = {"eventType": "Deposited", "eventVersion": 1, "data": unlucky}
    broker.produce(
        f"{unique_name}-movements", [NewRecord(b"acct-1", orjson.dumps(envelope), 0)] * 3
    )
    ledger.env["LEDGER_FACTOR"] = "3"  # the new release
    ledger.start()
    ledger.wait_until(
        "/state", lambda s: s["ready"] and s["deadLetters"] == 3, what="the new release serving"
    )

    reads = Reads(ledger.url, sorted(before["rows"]))
    reads.start()
    cli = rebuild(ledger, unique_name)
    produce_through(ledger, f"{unique_name}-movements", later)  # live events go on meanwhile
    out, err = cli.communicate(timeout=240)
    assert cli.returncode == 0, err
    assert "now serves generation 2" in out

    state = ledger.wait_until(
        "/state", lambda s: s["ready"] and total_ops(s) == 12_000, what="all 12,000 events"
    )
    statuses = reads.stop()
    assert len(statuses) > 50 and set(statuses) == {200}, sorted(set(statuses))
    assert state["rows"] == scaled(fold, 3)  # the new logic's fold of every event
    # Counted wherever the replay ran, here or (on Kafka) in a helper process.
    assert (state["deadLetters"], state["suppressedDeadLetters"]) == (3, 3)
    metrics = scrape(ledger.url)
    rebuilt = metrics.get(labelled("belvedere_fold_events_total", view="balances", mode="rebuild"))
    assert rebuilt is not None and 8_003 <= rebuilt <= 12_003, metrics  # g2's folds
    assert state["notes"] == before["notes"] and state["calls"]["notes"] == 0
    views = ledger.data_dir / "views"
    wait_for(lambda: not (views / "balances-g1").exists(), timeout=30, what="g1's files gone")
    assert (views / "balances-g2").exists()
    assert (views / "notes-g1").exists()
    status = ledger.get("/views/balances/rebuild")  # idle: the old changelog is retired
    assert status["generation"] == 2 and status["state"] == "idle"
    assert ledger.stop() == 0
    assert broker.partitions(f"{unique_name}-view-balances-g1-changelog") is None
    assert broker.partitions(f"{unique_name}-view-notes-g1-changelog") == 4
    # The replay published nothing: one alert per alert-worthy event, each handled live once.
    alerts = [orjson.loads(a.value) for a in broker.read(f"{unique_name}-alerts")]
    assert sorted((a["causationId"] for a in alerts), key=str) == sorted(alert_worthy(records))
    # Published from a projection handler, each alert continues its deposit's flow (a
    # foreign event without a correlationId starts one named after its eventId).
    assert all(a["correlationId"] == a["causationId"] for a in alerts)

    ledger.start()  # generation 2 survives a restart
    again = ledger.wait_until("/state", lambda s: s["ready"], what="restarted")
    assert again["rows"] == scaled(fold, 3) and again["calls"]["balances"] == 0


def test_rebuild_from_a_timestamp_folds_only_later_events(
    broker: Broker, ledger: Worker, unique_name: str
) -> None:
    # The timer must not flush the new generation's last events before the switch: the
    # switch itself has to (reads right after it once missed them).
    ledger.env["LEDGER_CHECKPOINT_INTERVAL"] = "5"
    now = int(time.time() * 1000)
    old, _ = movements(2_000, seed=12)
    new, new_fold = movements(3_000, seed=13)
    stamp = [NewRecord(r.key, r.value, now - 3_600_000 + i) for i, r in enumerate(old)]
    stamp += [NewRecord(r.key, r.value, now - 60_000 + i) for i, r in enumerate(new)]
    broker.produce(f"{unique_name}-movements", stamp)
    ledger.start()
    ledger.wait_until("/state", lambda s: s["ready"] and total_ops(s) == 5_000, what="5,000 events")

    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((now - 600_000) / 1000))
    cli = rebuild(ledger, unique_name, "--from-timestamp", since)
    _, err = cli.communicate(timeout=240)
    assert cli.returncode == 0, err
    state = ledger.wait_until("/state", lambda s: s["ready"], what="serving")
    assert state["rows"] == new_fold and total_ops(state) == 3_000


#: A deadline for each read during a rebuild: generous (the 2 cores are shared), and far
#: below the whole replay, which every read waited for while the replay never yielded.
READ_DEADLINE = 2.0
#: How long a worker told to stop (SIGINT) mid-replay may take to exit.
STOP_DEADLINE = 15.0


@pytest.mark.parametrize("broker", ["embedded"], indirect=True)
def test_an_embedded_rebuild_keeps_reads_the_status_page_and_ctrl_c_responsive(
    broker: Broker, ledger: Worker, unique_name: str
) -> None:
    records, fold = movements(20_000, seed=14)
    broker.produce(f"{unique_name}-movements", records)
    ledger.start()
    ledger.wait_until("/state", lambda s: s["ready"] and total_ops(s) == 20_000, what="the fold")
    assert ledger.stop() == 0
    ledger.env["LEDGER_BALANCES_BUSY"] = "0.0003"  # a replay of several seconds
    ledger.start()
    ledger.wait_until("/state", lambda s: s["ready"], what="serving")
    assert call(f"{ledger.url}/views/balances/rebuild", "POST", {}).status == 202

    def timed(path: str) -> float:
        began = time.monotonic()
        answer = call(ledger.url + path, timeout=60)
        assert answer.status == 200, (path, answer.status)
        return time.monotonic() - began

    slowest, done, status = 0.0, [], {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        slowest = max(slowest, timed(f"/views/balances/{sorted(fold)[len(done) % 50]}"), timed("/"))
        status = ledger.get("/views/balances/rebuild")
        if status["state"] != "rebuilding" or status["done"] >= status["total"] > 0:
            break
        done.append(status["done"])
        if len({d for d in done if d > 0}) >= 3:  # the progress moved twice
            break
    moving = sorted({d for d in done if d > 0})
    assert len(moving) >= 3 and moving == [d for d in dict.fromkeys(done) if d > 0], done
    assert status["state"] == "rebuilding", status  # still replaying: stop it now
    assert slowest < READ_DEADLINE, f"a read took {slowest:.2f}s during the rebuild"

    assert ledger.proc is not None
    ledger.proc.send_signal(signal.SIGINT)
    began = time.monotonic()
    code = ledger.proc.wait(STOP_DEADLINE)  # raises TimeoutExpired past the deadline
    ledger.proc = None
    assert code == 0, f"exit {code} after {time.monotonic() - began:.1f}s"


def test_rebuild_requests_are_checked(broker: Broker, ledger: Worker, unique_name: str) -> None:
    ledger.env["BELVEDERE_ADMIN_TOKEN"] = "s3cret"
    ledger.start()
    ledger.wait_until("/state", lambda s: s["ready"], what="serving")

    def post(path: str, token: str | None, body: bytes = b"") -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers["Content-Type"] = "application/json"
        request = urllib.request.Request(ledger.url + path, body, headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, orjson.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, orjson.loads(exc.read())

    assert post("/views/balances/rebuild", None)[0] == 401
    assert post("/views/balances/rebuild", "wrong")[0] == 403
    status, body = post("/views/nope/rebuild", "s3cret")
    assert status == 404 and body["error"] == "unknown-view"
    status, body = post("/views/balances/rebuild", "s3cret", b'{"fromTimestamp": "yesterday"}')
    assert status == 400 and "ISO-8601" in body["detail"]
    status, body = post("/views/balances/rebuild", "s3cret")
    assert status == 202 and body["building"] == 2
    status, body = post("/views/balances/rebuild", "s3cret")
    assert status == 409 and body["error"] == "rebuild-running"
    assert call(ledger.url + "/views/balances/rebuild").status == 200  # watching is a read
    admin = {"Authorization": "Bearer s3cret"}
    status = wait_for(
        lambda: (
            (a := call(ledger.url + "/views/balances/rebuild", headers=admin)).status == 200
            and a.body["state"] == "idle"
            and a.body
        ),
        timeout=90,
        what="the switch",
    )
    assert status["generation"] == 2

    result = run_cli(
        "rebuild", APP, "balances", "--url", ledger.url, env={"LEDGER_NAME": unique_name}
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "401" in result.stderr


# -- the control state, without a broker -----------------------------------------------------


def test_generation_records_go_building_switched_cleaned() -> None:
    gen = Generation().start(from_timestamp=5)
    assert (gen.active, gen.building, gen.from_timestamp, gen.highest) == (1, 2, 5, 2)
    switched = gen.switched()
    assert (switched.active, switched.building, switched.previous) == (2, None, 1)
    assert switched.cleaned().start(None).building == 3


def test_generations_know_when_every_partition_caught_up() -> None:
    state = Generations()
    gen = Generation().start(None)
    state.apply([(b"gen/v", gen.encode())])
    state.apply([(b"part/v/0", PartitionProgress(2, "following", 0, 10, 10).encode())])
    assert not state.all_in("v", 2, 2, {"following"})
    state.apply([(b"part/v/1", PartitionProgress(2, "replaying", 0, 4, 10, 2.0).encode())])
    report = state.report("v", 2)
    assert (report["state"], report["done"], report["total"], report["eta"]) == (
        "rebuilding", 14, 20, 3.0,
    )  # fmt: skip
    state.apply([(b"part/v/1", PartitionProgress(2, "following", 0, 10, 10).encode())])
    assert state.all_in("v", 2, 2, {"following"})
    assert not state.all_in("v", 3, 2, {"following"})


@pytest.mark.parametrize("bad", [b"other/v", b"gen"])
def test_a_foreign_control_record_is_refused(bad: bytes) -> None:
    with pytest.raises((ValueError, IndexError)):
        Generations().apply([(bad, b"{}")])


def test_a_late_record_about_an_older_generation_does_not_hide_a_newer_one() -> None:
    state = Generations()
    state.apply([(b"part/v/0", PartitionProgress(2, "following").encode())])
    state.apply([(b"part/v/0", PartitionProgress(1, "switched").encode())])
    assert state.all_in("v", 2, 1, {"following"})


@KAFKA_ONLY
def test_every_worker_switches_to_the_rebuilt_generation(
    broker: Broker, workers: Callable[..., Worker], unique_name: str
) -> None:
    broker.create_ledger_topics(unique_name)
    records, fold = movements(10_000, seed=14)
    broker.produce(f"{unique_name}-movements", records)
    env = {"LEDGER_NAME": unique_name}
    pair = [workers(APP, dict(env), data_dir=name) for name in ("first", "second")]

    def merged() -> dict | None:
        states = [w.get("/state") for w in pair]
        if not all(s and s["ready"] for s in states):
            return None
        return {k: v for s in states for k, v in s["rows"].items()}

    for worker in pair:
        worker.start()
    wait_for(lambda: (m := merged()) and sum(r["ops"] for r in m.values()) == 10_000,
             timeout=120, what="10,000 events over two workers")  # fmt: skip
    for worker in pair:  # a rolling release of the new logic
        assert worker.stop() == 0
        worker.env["LEDGER_FACTOR"] = "3"
        worker.start()
    wait_for(merged, timeout=120, what="both workers serving again")

    cli = rebuild(pair[0], unique_name)
    _, err = cli.communicate(timeout=240)
    assert cli.returncode == 0, err
    for worker in pair:
        status = worker.wait_until(
            "/views/balances/rebuild", lambda s: s["state"] == "idle", what="idle"
        )
        assert status["generation"] == 2
        parts = worker.get("/partitions")["balances"]["active"]
        assert parts and {p["generation"] for p in parts.values()} == {2}, parts
    assert wait_for(lambda: merged() == scaled(fold, 3), timeout=60, what="the new fold")


HELPER_LINE = re.compile(r"\[(\d+)\] \[INFO\] replay helper: view balances g2: replaying")


def _gone(pid: int) -> bool:
    """Whether ``pid`` ended (a zombie left for an init that does not reap counts)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@KAFKA_ONLY
@pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="replay helpers are used with 2 cores or more"
)
def test_replay_helpers_killed_lose_nothing_and_die_with_their_worker(
    broker: Broker, ledger: Worker, unique_name: str
) -> None:
    """A helper killed mid-replay leaves its partitions to the worker; a worker killed
    leaves no helper behind; the rebuild then completes with every event once."""
    records, fold = movements(6_000, seed=15)
    fill_both_views(broker, ledger, unique_name, records)
    ledger.env.update(LEDGER_FACTOR="3", LEDGER_BALANCES_DELAY="0.002")
    ledger.start()
    ledger.wait_until("/state", lambda s: s["ready"], what="the new release serving")
    zygote = int(re.findall(r"forked from process (\d+)", ledger.logfile.read_text())[-1])
    cli = rebuild(ledger, unique_name)
    try:
        helpers = wait_for(
            lambda: (
                [int(p) for p in HELPER_LINE.findall(ledger.logfile.read_text())][:2]
                if len(HELPER_LINE.findall(ledger.logfile.read_text())) >= 2
                else None
            ),
            timeout=60,
            what="two replay helpers at work",
        )
        os.kill(helpers[0], 9)
        wait_for(
            lambda: re.search(r"view balances g2: replaying partitions \[.*\] in this process",
                              ledger.logfile.read_text()),
            timeout=30, what="the worker taking the killed helper's partitions back",
        )  # fmt: skip
        assert not _gone(helpers[1]) and not _gone(zygote)
        ledger.kill()
        wait_for(lambda: _gone(helpers[1]) and _gone(zygote), timeout=30, what="helpers gone")
    finally:
        cli.kill()
        cli.communicate()
    del ledger.env["LEDGER_BALANCES_DELAY"]
    ledger.start()
    ledger.wait_until(
        "/views/balances/rebuild",
        lambda s: s["generation"] == 2 and s["state"] == "idle",
        what="the rebuild resumed and done",
    )
    state = ledger.wait_until("/state", lambda s: s["ready"], what="serving")
    assert state["rows"] == scaled(fold, 3)


@KAFKA_ONLY
@pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="replay helpers are used with 2 cores or more"
)
def test_a_partition_moving_away_stops_its_replay_helper_before_its_new_owner_writes(
    broker: Broker, workers: Callable[..., Worker], unique_name: str
) -> None:
    """Two writers to one changelog partition would leave it holding stale rows for the
    next restore: a partition's helper is stopped while it is revoked, before the rebalance
    lets its new owner replay it. Restored from the changelog alone, the view is exact."""
    broker.create_ledger_topics(unique_name)
    records, fold = movements(6_000, seed=16)
    broker.produce(f"{unique_name}-movements", records)
    env = {"LEDGER_NAME": unique_name, "LEDGER_FACTOR": "3"}
    first = workers(APP, dict(env), data_dir="first")
    first.start()
    first.wait_until("/state", lambda s: s["ready"] and total_ops(s) == 6_000, what="folded")
    assert first.stop() == 0
    first.env["LEDGER_BALANCES_DELAY"] = "0.004"
    first.start()
    first.wait_until("/state", lambda s: s["ready"], what="serving again")
    cli = rebuild(first, unique_name)
    second = workers(APP, {**env, "LEDGER_BALANCES_DELAY": "0.004"}, data_dir="second")
    try:
        wait_for(lambda: len(HELPER_LINE.findall(first.logfile.read_text())) >= 2,
                 timeout=60, what="two replay helpers at work")  # fmt: skip
        second.start()
        wait_for(lambda: re.search(r"g2: partitions \[.+\] revoked; their replay helper stopped",
                                   first.logfile.read_text()),
                 timeout=60, what="a helper stopped by the rebalance")  # fmt: skip
        for worker in (first, second):
            worker.wait_until(
                "/views/balances/rebuild",
                lambda s: s["generation"] == 2 and s["state"] == "idle",
                what="the rebuild done",
                timeout=180,
            )
    finally:
        cli.kill()
        cli.communicate()
    for worker in (first, second):
        assert worker.stop() == 0
    shutil.rmtree(second.data_dir)  # the view from the g2 changelog alone, on one worker
    del second.env["LEDGER_BALANCES_DELAY"]
    second.start()
    state = second.wait_until("/state", lambda s: s["ready"], what="restored from changelog")
    assert state["rows"] == scaled(fold, 3)


# -- events the new code fails on, and the code the workers run ------------------------------


def fold_without(records: list[NewRecord], refused: int) -> dict[str, dict]:
    """The balances fold of ``records`` by a release that fails on withdrawals of
    ``refused`` (and, like every release, on deposits of 13)."""
    rows: dict[str, dict] = {}
    for record in records:
        envelope = orjson.loads(record.value)
        data = envelope["data"]
        row = rows.get(data["account"])
        if envelope["eventType"] == "Deposited" and data["amount"] != 13:
            row = row or {"owner": data["owner"], "balance": 0, "ops": 0}
            rows[data["account"]] = {
                **row, "balance": row["balance"] + data["amount"], "ops": row["ops"] + 1,
            }  # fmt: skip
        elif envelope["eventType"] == "Withdrawn" and data["amount"] != refused:
            assert row is not None
            rows[data["account"]] = {
                **row, "balance": row["balance"] - data["amount"], "ops": row["ops"] + 1,
            }  # fmt: skip
    return rows


def test_a_rebuild_whose_new_code_fails_on_some_events_dead_letters_them_and_switches_only_when_accepted(
    broker: Broker, ledger: Worker, unique_name: str
) -> None:
    records, fold = movements(3_000, seed=21)
    # Two deposits the old code already dead-lettered: the replay does not send them again.
    unlucky = {"eventType": "Deposited", "eventVersion": 1,
               "data": {"account": "acct-1", "owner": "owner-1", "amount": 13}}  # fmt: skip
    broker.produce(
        f"{unique_name}-movements",
        [*records, *[NewRecord(b"acct-1", orjson.dumps(unlucky), 0)] * 2],
    )
    ledger.start()
    ledger.wait_until("/state", lambda s: s["ready"] and total_ops(s) == 3_000 and
                      s["deadLetters"] == 2, what="the old release's fold")  # fmt: skip
    assert ledger.stop() == 0
    failing = sum(
        1
        for r in records
        if (e := orjson.loads(r.value))["eventType"] == "Withdrawn" and e["data"]["amount"] == 3
    )
    assert failing > 50
    ledger.env["LEDGER_REFUSE_WITHDRAWAL"] = "3"  # a release that fails on those
    ledger.start()
    ledger.wait_until("/state", lambda s: s["ready"], what="the new release serving")

    cli = rebuild(ledger, unique_name)
    out, err = cli.communicate(timeout=240)
    assert cli.returncode == 1, (out, err)
    assert f"{failing} event(s) failed under the new code (handler-error: {failing})" in err
    assert "generation 1 keeps serving" in err and "--accept-failures" in err
    status = ledger.get("/views/balances/rebuild")
    assert (status["state"], status["generation"], status["building"]) == ("refused", 1, 2)
    assert status["failures"] == {"handler-error": failing} and status["failed"] == failing
    state = ledger.wait_until("/state", lambda s: s["ready"], what="serving")
    assert state["rows"] == fold  # the old generation still serves
    assert state["suppressedDeadLetters"] == 2  # counted, not dead-lettered again
    progress = rebuild(ledger, unique_name, "--status").communicate(timeout=60)[0]
    assert f"refused g2  {failing} failed" in progress

    assert ledger.stop() == 0  # the embedded log is the worker's while it runs
    listing = run_cli(
        "dlq", "list", APP, f"{unique_name}-movements", "--broker", broker.url,
        "--data-dir", str(ledger.data_dir), "--generation", "2",
        env={"LEDGER_NAME": unique_name},
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    assert (
        f"{failing} dead letter(s) in {unique_name}-{unique_name}-movements-dead-letters (of {failing + 2})"
        in listing.stdout
    )
    lines = listing.stdout.splitlines()[:-1]
    assert len(lines) == failing
    assert all("view=balances g2  handler-error: Balances.withdrawn: ValueError(" in line
               for line in lines), lines[:3]  # fmt: skip

    ledger.start()  # still refused after a restart; then the operator accepts the failures
    ledger.wait_until(
        "/views/balances/rebuild", lambda s: s["state"] == "refused", what="still refused"
    )
    cli = rebuild(ledger, unique_name, "--accept-failures")
    out, err = cli.communicate(timeout=240)
    assert cli.returncode == 0, (out, err)
    assert "now serves generation 2" in out
    assert (
        f"{failing} event(s) that failed under the new code accepted (handler-error: {failing}"
        in out
    )
    state = ledger.wait_until("/state", lambda s: s["ready"], what="serving")
    assert state["rows"] == fold_without(records, refused=3)
    assert ledger.get("/views/balances/rebuild")["state"] == "idle"


def test_a_rebuild_warns_when_the_cli_imported_other_code_than_the_workers_run(
    broker: Broker, ledger: Worker, unique_name: str
) -> None:
    broker.produce(f"{unique_name}-movements", movements(500, seed=22)[0])
    ledger.env["LEDGER_ACTIVITY_RELEASE"] = "2"
    ledger.start()
    ledger.wait_until("/state", lambda s: s["ready"] and len(s["activity"]) > 0, what="serving")
    result = run_cli(
        "rebuild", APP, "activity", "--url", ledger.url, env={"LEDGER_NAME": unique_name},
        timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "warning: the workers fold view activity with other code than this command" in (
        result.stderr
    )
    assert "now serves generation 2" in result.stdout


@KAFKA_ONLY
def test_a_rebuild_is_refused_when_the_workers_run_different_projection_code(
    broker: Broker, workers: Callable[..., Worker], unique_name: str
) -> None:
    broker.create_ledger_topics(unique_name)
    broker.produce(f"{unique_name}-movements", movements(2_000, seed=23)[0])
    env = {"LEDGER_NAME": unique_name}
    pair = [
        workers(APP, dict(env), data_dir="first"),
        workers(APP, {**env, "LEDGER_ACTIVITY_RELEASE": "2"}, data_dir="second"),
    ]
    for worker in pair:
        worker.start()
    for worker in pair:
        worker.wait_until("/state", lambda s: s["ready"], what="serving")
    wait_for(
        lambda: all(w.get("/partitions")["balances"]["active"] for w in pair),
        timeout=60, what="partitions on both workers",
    )  # fmt: skip
    result = run_cli("rebuild", APP, "activity", "--url", pair[0].url, env=env, timeout=240)
    assert result.returncode == 1, result.stderr
    assert "were folded by different projection code" in result.stderr
    status = pair[1].get("/views/activity/rebuild")
    assert status["state"] == "refused" and len(status["code"]) == 2
    for worker in pair:
        parts = worker.get("/partitions")
        assert all(p["generation"] == 1 for p in parts["balances"]["active"].values())
    # One release everywhere, then a new rebuild replaces the refused one and switches.
    assert pair[1].stop() == 0
    del pair[1].env["LEDGER_ACTIVITY_RELEASE"]
    pair[1].start()
    pair[1].wait_until("/state", lambda s: s["ready"], what="serving again")
    result = run_cli("rebuild", APP, "activity", "--url", pair[0].url, env=env, timeout=240)
    assert result.returncode == 0, result.stderr
    assert "now serves generation 3" in result.stdout


def test_the_switch_report_names_failures_and_the_code_of_each_partition() -> None:
    state = Generations()
    state.apply([(b"gen/v", Generation().start(None).encode())])
    state.apply([(b"part/v/0", PartitionProgress(2, "following", codes=("a",)).encode())])
    state.apply([(b"part/v/1", PartitionProgress(2, "following", codes=("a", "b")).encode())])
    state.apply([(b"part/v/1", PartitionProgress(1, "switched", codes=("c",)).encode())])
    assert state.codes("v", 2) == {"a", "b"}
    refused = state.of("v").refuse("because")
    state.apply([(b"gen/v", refused.encode())])
    report = state.report("v", 2)
    assert (report["state"], report["refused"], report["code"]) == (
        "refused",
        "because",
        ["a", "b"],
    )
    accepted = state.of("v").accepted()
    assert accepted.accept_failures and accepted.refused is None
    assert not accepted.start(None).accept_failures and accepted.start(None, True).accept_failures
