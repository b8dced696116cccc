"""One event never stops a worker: an integer past 64 bits, a state that outgrows what the
store can encode, a value JSON has no form for. Each is refused (HTTP 400) or dead-lettered
alone with its kind and reason, on projections, aggregates and sagas, on both brokers; the
worker stays ready, and a restart is clean (nothing applied or dead-lettered twice)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
import pytest

from belvedere.streams.clients import NewRecord
from belvedere.streams.dead_letters import DeadLetter, dead_letter_topic
from belvedere.streams.failure_log import FailureLog
from tests.support.brokers import Broker
from tests.support.http import Answer, call
from tests.support.metrics import labelled, scrape
from tests.support.worker import REPO, Worker, wait_for

BIG = 2**63 - 1  # the largest a field takes; three of them overflow orjson's 64 bits
TOPICS = ("tank-events", "tank-commands", "readings", "log-commands", "log-events")


def create_topics(broker: Broker, name: str) -> None:
    for topic in TOPICS:
        broker.create_topic(f"{name}-{topic}", 2)


def envelope(event_type: str, data_json: bytes, event_id: str) -> bytes:
    """A foreign producer's bytes, with ``data`` as given (orjson would refuse 2**64)."""
    head = {"eventId": event_id, "eventType": event_type, "eventVersion": 1}
    return orjson.dumps(head)[:-1] + b',"data":' + data_json + b"}"


def reading(tank: str, qty: int, event_id: str, event_type: str = "Filled") -> NewRecord:
    data = b'{"tank":"%s","qty":%d}' % (tank.encode(), qty)
    return NewRecord(tank.encode(), envelope(event_type, data, event_id), 0)


def tagged(tank: str, tag: str, event_id: str) -> NewRecord:
    data = orjson.dumps({"tank": tank, "tag": tag})
    return NewRecord(tank.encode(), envelope("Tagged", data, event_id), 0)


def fill(worker: Worker, tank: str, qty: int, flow: str) -> Answer:
    return call(
        f"{worker.url}/commands/Fill",
        "POST",
        b'{"tank":"%s","qty":%d}' % (tank.encode(), qty),
        {"X-Correlation-Id": flow},
    )


def letters(broker: Broker, name: str, topic: str) -> list[DeadLetter]:
    return [
        DeadLetter.from_record(r.key, r.value, r.headers)
        for r in broker.read(dead_letter_topic(name, f"{name}-{topic}"))
    ]


def test_one_event_never_stops_a_worker_and_a_restart_is_clean(
    broker: Broker, workers: Callable[..., Worker], unique_name: str
) -> None:
    name = unique_name
    create_topics(broker, name)
    # topics, written first (the embedded log opens in one process at a time): foreign bytes with 2**64, an overflowing sum, a value with no JSON form
    broker.produce(
        f"{name}-readings",
        [
            reading("t2", 2**64, "r-huge"),
            reading("t2", 2**64 - 1, "r-over"),
            reading("t2", BIG, "r-1"),
            tagged("t2", "a", "r-2"),
            reading("t2", BIG, "r-3"),
            reading("t2", BIG, "r-overflow"),
            tagged("t2", "set", "r-set"),
            reading("t2", 1, "r-4"),
        ],
    )
    broker.produce(f"{name}-tank-commands", [reading("t3", 2**64, "c-huge", "Fill")])

    worker = workers("tests.apps.tanks:app", {"TANKS_NAME": name}).start()
    worker.wait_until("/state", lambda s: s["ready"], what="ready")

    # HTTP: a field past 64 bits is a 400 naming it, before anything is sent
    for qty in (2**64, 2**64 - 1, 2**63, -(2**63) - 1):
        refused = fill(worker, "t1", qty, "flow-x")
        assert refused.status == 400, refused.raw
        assert refused.body["error"] == "invalid-data" and "qty" in refused.body["detail"]
    # an aggregate whose state would overflow 64 bits: that command fails alone
    assert fill(worker, "t1", BIG, "flow-1").status == 202
    second = fill(worker, "t1", BIG, "flow-2")
    assert second.status == 500 and second.body["error"] == "handler-failed", second.raw
    assert "its state after version 2 cannot be stored" in second.body["detail"]
    assert "Tank.level" in second.body["detail"]
    assert fill(worker, "t1", -5, "flow-3").status == 202
    assert fill(worker, "t9", 7, "flow-4").status == 202  # the partition goes on

    expected = {
        "readings": {
            "r-huge": ("invalid-data", "qty"),
            "r-over": ("invalid-data", "qty"),
            "r-overflow": ("unencodable-state", "Integer exceeds 64-bit range"),
            "r-set": ("unencodable-state", "view 'totals'"),
        },
        "tank-commands": {
            "c-huge": ("invalid-data", "qty"),
            None: ("unencodable-state", "Tank.level"),  # the second Fill (its id generated)
        },
    }

    def dead_lettered() -> dict[str, int]:
        return worker.get("/state")["deadLetters"]

    want = {
        f"{name}-readings:invalid-data": 2,
        f"{name}-readings:unencodable-state": 2,
        f"{name}-tank-commands:invalid-data": 1,
        f"{name}-tank-commands:unencodable-state": 1,
    }
    wait_for(lambda: dead_lettered() == want, timeout=60, what=f"dead letters {want}")
    t2 = wait_for(
        lambda: (
            (row := call(f"{worker.url}/views/totals/t2").body) and row.get("fills") == 3 and row
        ),
        timeout=60,
        what="t2's three good readings",
    )
    assert t2 == {"total": 2 * BIG + 1, "fills": 3, "tags": ["a"]}
    tank = call(f"{worker.url}/aggregates/Tank/t1").body
    assert (tank["version"], tank["state"]["level"]) == (2, BIG - 5)
    wait_for(
        lambda: call(f"{worker.url}/sagas/fill-log/flow-1").body.get("status") == "completed",
        timeout=60,
        what="the saga of the first fill completed",
    )
    assert call(f"{worker.url}/sagas/fill-log/flow-2").status == 404  # its Filled never was
    assert worker.get("/state")["ready"]

    # a restart: ready again, nothing re-applied or dead-lettered again
    assert worker.stop() == 0
    broker.produce(f"{name}-readings", [reading(t, -1, f"after-{t}") for t in ("t2", "t5", "t6")])
    worker.start()
    worker.wait_until("/state", lambda s: s["ready"], what="ready after a restart")
    wait_for(
        lambda: (
            all(call(f"{worker.url}/views/totals/{t}").status == 200 for t in ("t5", "t6"))
            and call(f"{worker.url}/views/totals/t2").body["fills"] == 4
        ),
        timeout=60,
        what="readings after the restart",
    )
    assert call(f"{worker.url}/views/totals/t2").body["total"] == 2 * BIG
    assert dead_lettered() == {}  # this run sent none
    assert call(f"{worker.url}/aggregates/Tank/t1").body["version"] == 2
    assert fill(worker, "t1", 5, "flow-5").status == 202
    assert worker.stop() == 0

    # each dead letter once, with its kind and a reason naming what failed (read once the
    # worker is gone: the embedded log opens in one process at a time)
    for topic, kinds in expected.items():
        found = letters(broker, name, topic)
        assert len(found) == len(kinds), (topic, found)
        for letter in found:
            kind, word = kinds.get(orjson.loads(letter.value)["eventId"]) or kinds[None]
            assert (letter.kind, letter.topic) == (kind, f"{name}-{topic}"), letter
            assert word in letter.reason, letter


TOKEN = {"Authorization": "Bearer r3ad"}
BOOM_LINE = "no tank may be tagged"


def _json(url: str, headers: dict[str, str] | None = None) -> dict:
    """The JSON at ``url``, or {} while it does not answer 200 (the worker starting)."""
    answer = call(url, headers=headers)
    return answer.body if answer.status == 200 else {}


def _boom_line() -> int:
    """The line of tests/apps/tanks.py that raises for a ``boom`` tag."""
    lines = (REPO / "tests" / "apps" / "tanks.py").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if BOOM_LINE in line)


def test_a_failing_handler_is_logged_once_with_its_traceback_counted_listed_and_unready(
    broker: Broker, workers: Callable[..., Worker], unique_name: str
) -> None:
    name = unique_name
    create_topics(broker, name)
    broker.produce(
        f"{name}-readings",
        [
            tagged("t4", "boom", "b-1"),
            reading("t4", 5, "r-1"),
            tagged("t4", "boom", "b-2"),
            tagged("t4", "boom", "b-3"),
            reading("t4", 6, "r-2"),
        ],
    )
    env = {
        "TANKS_NAME": name,
        "BELVEDERE_READ_TOKEN": "r3ad",
        "BELVEDERE_READY_MAX_DEAD_LETTER_RATE": "2",
    }
    worker = workers("tests.apps.tanks:app", env).start()
    totals = f"{worker.url}/views/totals/t4"
    wait_for(
        lambda: _json(totals, TOKEN).get("fills") == 2,
        timeout=90,
        what="t4's two good readings",
    )
    readings = f"{name}-readings"
    series = labelled(
        "belvedere_dead_letters_total", view="totals", topic=readings, kind="handler-error"
    )

    def metric() -> float | None:
        return scrape(worker.url, headers=TOKEN).get(series)

    assert wait_for(metric, timeout=60, what=series) == 3
    # three dead letters in the last minute (one batch, seconds ago), over the limit of 2:
    # not ready, and why
    unready = call(f"{worker.url}/ready")
    assert unready.status == 503 and unready.body["error"] == "dead-letters", unready.raw
    assert "ready_max_dead_letter_rate (2)" in unready.body["detail"]

    # the first failure: one ERROR with the traceback into the user's handler; not again
    log = worker.logfile.read_text()
    assert log.count("Traceback (most recent call last)") == 1, worker.log_tail()
    assert f'tests/apps/tanks.py", line {_boom_line()}, in tagged' in log, worker.log_tail()
    assert "view totals: handler Totals.tagged failed on" in log
    assert log.count(f"ValueError: {BOOM_LINE} 'boom'") == 1

    # listed over HTTP, with the read token, newest first, a page at a time
    assert call(f"{worker.url}/dead-letters").status == 401
    listed = call(f"{worker.url}/dead-letters?view=totals&kind=handler-error", headers=TOKEN)
    assert listed.status == 200, listed.raw
    letters = listed.body["deadLetters"]
    assert [d["eventId"] for d in letters] == ["b-3", "b-2", "b-1"], letters
    first = letters[-1]
    assert first["kind"] == "handler-error" and first["view"] == "totals"
    assert "Totals.tagged" in first["reason"] and BOOM_LINE in first["reason"]
    assert (first["topic"], first["offset"], first["eventType"]) == (readings, 0, "Tagged")
    assert first["time"] and first["deadLetterTopic"] == dead_letter_topic(name, readings)
    assert listed.body["next"] is None
    page = call(f"{worker.url}/dead-letters?limit=2", headers=TOKEN).body
    rest = call(f"{worker.url}/dead-letters?limit=2&cursor={page['next']}", headers=TOKEN).body
    assert [d["eventId"] for d in page["deadLetters"] + rest["deadLetters"]] == [
        "b-3",
        "b-2",
        "b-1",
    ]
    assert rest["next"] is None
    assert call(f"{worker.url}/dead-letters?view=nope", headers=TOKEN).status == 404
    assert call(f"{worker.url}/dead-letters?cursor=x", headers=TOKEN).status == 400
    assert call(f"{worker.url}/dead-letters?kind=bad-value", headers=TOKEN).body == {
        "deadLetters": [],
        "next": None,
    }

    views = {v["name"]: v for v in call(f"{worker.url}/views", headers=TOKEN).body["views"]}
    assert views["totals"]["deadLetters"] == {"total": 3, "kinds": {"handler-error": 3}}


def test_strict_stops_at_the_first_handler_error_and_a_restart_folds_that_event(
    broker: Broker, workers: Callable[..., Worker], unique_name: str
) -> None:
    name = unique_name
    create_topics(broker, name)
    before, after = reading("t7", 1, "s-1"), reading("t7", 2, "s-2")
    broker.produce(f"{name}-readings", [before, tagged("t7", "boom", "s-boom"), after])
    worker = workers("tests.apps.tanks:app", {"TANKS_NAME": name})
    worker.args = ["--strict"]
    worker.start()
    assert worker.proc is not None
    code = worker.proc.wait(timeout=120)  # generous: a worker's start and first fetch
    worker.proc = None
    log = worker.logfile.read_text()
    assert code == 1, log[-3000:]
    last = log.rstrip().splitlines()[-1]
    assert last.startswith("belvedere: view totals: handler Totals.tagged failed on"), last
    assert "handler Totals.tagged failed on" in log and "strict" in log, log[-3000:]
    # the user's traceback, once; under load faust's consumer thread may still log its own
    # stop race ("Event loop is closed") after it, which is noise, not a second failure
    assert log.count(f'tests/apps/tanks.py", line {_boom_line()}, in tagged') == 1, log[-3000:]
    assert letters(broker, name, "readings") == []  # nothing dead-lettered

    # restarted without --strict: the event is folded again (dead-lettered), nothing lost
    worker.args = []
    worker.start()
    wait_for(
        lambda: _json(f"{worker.url}/views/totals/t7").get("fills") == 2,
        timeout=90,
        what="t7's readings on both sides of the failing one",
    )
    wait_for(
        lambda: worker.get("/state")["deadLetters"] == {f"{name}-readings:handler-error": 1},
        timeout=60,
        what="the failing event dead-lettered",
    )
    assert worker.stop() == 0
    (found,) = letters(broker, name, "readings")
    assert orjson.loads(found.value)["eventId"] == "s-boom" and found.kind == "handler-error"


def test_later_failures_are_counted_and_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = FailureLog(logging.getLogger("tests.failures"), interval=30, clock=lambda: now[0])
    try:
        raise ValueError("first")
    except ValueError as exc:
        error = exc
    with caplog.at_level(logging.ERROR, "tests.failures"):
        log.failed(("h", "handler-error"), "h failed", "h again", error)
        for at in (1.0, 10.0, 29.0):
            now[0] = at
            log.failed(("h", "handler-error"), "h failed", "h again (x)", error)
        log.failed(("other", "bad-value"), "other failed", "other again")
        now[0] = 31.0
        log.failed(("h", "handler-error"), "h failed", "h again (y)", error)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0].startswith("h failed\nTraceback (most recent call last)")
    assert 'test_containment.py", line' in lines[0] and "ValueError: first" in lines[0]
    assert lines[1] == "other failed"
    assert lines[2] == "4 more in the last 31 s: h again (y)"
