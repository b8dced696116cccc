"""Change feeds: each change of a view once, across cut-offs, crashes and restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from belvedere.streams.clients import NewRecord as ProducedRecord
from belvedere.streams.embedded import Log, NewRecord
from belvedere.streams.readers import EmbeddedReader
from belvedere.tables.changelog import changelog_records
from belvedere.tables.changes import Checkpoint, Truncated, checkpoints
from belvedere.views_api.positions import decode_token, encode_token
from tests.support.brokers import KAFKA_ONLY, Broker
from tests.support.http import EventStream, call
from tests.support.metrics import scrape
from tests.support.worker import Worker, wait_for
from tests.test_projections import note
from tests.test_views_api import deposit

APP = "tests.apps.ledger:app"


def _append(log: Log, rows: dict[bytes, bytes | None], *, repair: bool = False, end: bool = True):
    records = changelog_records(rows, {("src", 0): 1}, repair=repair)
    if not end:  # a checkpoint cut short by a crash: no end marker
        records = [(k, v, []) for k, v, _ in records]
    log.append("cl", 0, [NewRecord(k, v, 0, tuple(h)) for k, v, h in records])


async def _read_all(log: Log, start: int = 0) -> list[Checkpoint]:
    reader = EmbeddedReader(log)
    found = []
    async for checkpoint in checkpoints(reader, "cl", {0: start}):
        if checkpoint is None:
            return found
        found.append(checkpoint)
    return found


def test_unfinished_checkpoints_and_their_repairs_are_not_changes(tmp_path: Path) -> None:
    log = Log.acquire(tmp_path / "log")
    try:
        log.create_topic("cl", 1)
        _append(log, {b"a": b"1", b"b": b"1"})
        _append(log, {b"a": b"2", b"c": b"2"}, end=False)  # crashed mid-checkpoint
        _append(log, {b"a": b"1", b"c": None}, repair=True)  # a restore puts a and c back
        _append(log, {b"a": b"3", b"b": None})
        _append(log, {b"d": b"4"}, end=False)  # still being written
        found = asyncio.run(_read_all(log))
        assert [c.changes for c in found] == [
            [(b"a", b"1"), (b"b", b"1")],
            [],  # the repair and what it undid
            [(b"a", b"3"), (b"b", None)],
        ]
        assert [(c.start, c.end) for c in found] == [(0, 2), (2, 6), (6, 8)]
        # resuming at a checkpoint's start reads from there
        assert [c.changes for c in asyncio.run(_read_all(log, 6))] == [[(b"a", b"3"), (b"b", None)]]
        with pytest.raises(Truncated):
            asyncio.run(_read_all(log, 99))
    finally:
        log.release()


def notes(start: int, count: int) -> list[ProducedRecord]:
    return [note(f"n-{i:05d}", f"text {i}") for i in range(start, start + count)]


def post(worker: Worker, topic: str, records: list[ProducedRecord]) -> None:
    """Publish through the worker: on the embedded broker, nothing else may write meanwhile."""
    for i in range(0, len(records), 1000):
        body = [orjson.loads(r.value) for r in records[i : i + 1000]]
        answer = call(f"{worker.url}/events/{topic}", "POST", body)
        assert answer.status == 201, answer.raw


def keys_of(stream: EventStream) -> list[str]:
    return [e["data"]["key"] for e in stream.events if e["event"] == "change"]


def read_until(stream: EventStream, before: list[str], wanted: set[str], what: str) -> None:
    wait_for(lambda: wanted <= set(before + keys_of(stream)), timeout=120, what=what)


def test_a_feed_cut_off_and_resumed_after_a_kill_sees_every_update_once(
    broker: Broker, ledger: Worker, unique_name: str
) -> None:
    topic = f"{unique_name}-notes"
    broker.produce(topic, notes(0, 600))
    ledger.start()
    ledger.wait_until("/state", lambda s: s["ready"], what="serving")
    first = EventStream(ledger.url + "/views/notes/changes?from=start")
    wait_for(lambda: len(first.events) >= 200, timeout=90, what="200 changes")
    first.close()
    assert first.status == 200
    seen, last = keys_of(first), first.events[-1]["id"]

    post(ledger, topic, notes(600, 1200))
    ledger.wait_until("/state", lambda s: s["ready"] and len(s["notes"]) > 700, what="more notes")
    ledger.kill()  # mid-way through the second lot
    ledger.start()
    ledger.wait_until("/state", lambda s: s["ready"], what="serving again")
    second = EventStream(ledger.url + "/views/notes/changes", {"Last-Event-ID": last})
    read_until(second, seen, {f"n-{i:05d}" for i in range(1800)}, "every note's change")
    post(ledger, topic, [note("zz-sentinel", "last")])
    read_until(second, seen, {"zz-sentinel"}, "the sentinel")
    second.close()
    every = seen + keys_of(second)
    assert len(every) == len(set(every)) == 1801  # each change once: none lost, none twice
    values = {e["data"]["key"]: e["data"]["value"] for e in second.events if "data" in e}
    assert values["n-01799"] == "text 1799" and values["zz-sentinel"] == "last"


def test_a_bad_feed_id_is_refused(broker: Broker, ledger: Worker) -> None:
    ledger.start()
    ledger.wait_until("/state", lambda s: s["ready"], what="serving")
    assert call(ledger.url + "/views/notes/changes?after=garbage").status == 400
    assert call(ledger.url + "/views/notes/changes?from=middle").status == 400


@KAFKA_ONLY
def test_a_feed_resumed_on_the_other_worker_after_a_kill_sees_every_update_once(
    broker: Broker, workers: Callable[..., Worker], unique_name: str
) -> None:
    broker.create_ledger_topics(unique_name)
    topic = f"{unique_name}-notes"
    broker.produce(topic, notes(0, 800))
    env = {"LEDGER_NAME": unique_name}
    first, second = (workers(APP, dict(env), data_dir=d).start() for d in ("first", "second"))
    for worker in (first, second):
        worker.wait_until("/state", lambda s: s["ready"], what="serving")
    feed = EventStream(first.url + "/views/notes/changes?from=start")
    wait_for(lambda: len(feed.events) >= 300, timeout=120, what="300 changes")
    feed.close()
    seen, last = keys_of(feed), feed.events[-1]["id"]
    first.kill()
    broker.produce(topic, notes(800, 800))
    resumed = EventStream(second.url + "/views/notes/changes", {"Last-Event-ID": last})
    read_until(resumed, seen, {f"n-{i:05d}" for i in range(1600)}, "every note's change")
    broker.produce(topic, [note("zz-sentinel", "last")])
    read_until(resumed, seen, {"zz-sentinel"}, "the sentinel")
    resumed.close()
    every = seen + keys_of(resumed)
    assert len(every) == len(set(every)) == 1601


def test_a_feed_after_a_consistency_token_continues_a_scan_exactly(
    broker: Broker, ledger: Worker, unique_name: str
) -> None:
    ledger.start()
    ledger.wait_until("/state", lambda s: s["ready"], what="serving")
    url, topic = ledger.url, f"{unique_name}-movements"
    first = [deposit(f"early-{i}", 20 + i) for i in range(12)]  # 13 is unlucky
    token = call(f"{url}/events/{topic}", "POST", first).body["token"]
    snapshot = call(f"{url}/views/balances?after={token}&timeout=20&limit=1000")
    assert snapshot.status == 200 and len(snapshot.body["rows"]) == 12, snapshot.raw
    position = snapshot.headers["X-Belvedere-Position"]

    later = [deposit(f"late-{i}", 100 + i) for i in range(12)]
    assert call(f"{url}/events/{topic}", "POST", later).status == 201
    stream = EventStream(f"{url}/views/balances/changes?after={position}&timeout=20")
    try:
        wait_for(lambda: len(keys_of(stream)) >= 12, timeout=60, what="the later changes")
        assert stream.status == 200
        changes = {e["data"]["key"]: e["data"]["value"] for e in stream.events}
        assert changes == {
            f"late-{i}": {"owner": "owner-x", "balance": 100 + i, "ops": 1} for i in range(12)
        }
        assert len(keys_of(stream)) == 12  # nothing the snapshot already had, nothing twice
    finally:
        stream.close()

    ahead = encode_token(
        {t: {p: o + 1000 for p, o in parts.items()} for t, parts in decode_token(token).items()}
    )
    late = call(f"{url}/views/balances/changes?after={ahead}&timeout=0.3")
    assert (late.status, late.body["error"]) == (504, "not-yet-applied"), late.raw
    assert late.headers["X-Belvedere-Position"]
    bad = call(f"{url}/views/balances/changes?after=nonsense")
    assert (bad.status, bad.body["error"]) == (400, "bad-token"), bad.raw
    foreign = call(f"{url}/views/notes/changes?after={token}")
    assert (foreign.status, foreign.body["error"]) == (400, "bad-token"), foreign.raw


def _metric(worker: Worker, name: str) -> int:
    return int(scrape(worker.url)[name])


@pytest.mark.parametrize("broker", ["embedded"], indirect=True)
def test_feeds_of_a_view_share_one_poller_and_beyond_the_cap_get_503(
    broker: Broker, ledger: Worker
) -> None:
    ledger.env["BELVEDERE_MAX_CHANGE_FEEDS"] = "2"
    ledger.start()
    ledger.wait_until("/state", lambda s: s["ready"], what="serving")
    feeds = [EventStream(ledger.url + "/views/notes/changes") for _ in range(2)]
    try:
        wait_for(lambda: _metric(ledger, "belvedere_change_feeds") == 2, timeout=30, what="2 feeds")
        assert _metric(ledger, "belvedere_change_feed_pollers") == 1  # one for both
        refused = call(ledger.url + "/views/notes/changes")
        assert (refused.status, refused.body["error"]) == (503, "too-many-feeds"), refused.raw
        assert int(refused.headers["Retry-After"]) > 0
    finally:
        for feed in feeds:
            feed.close()
    wait_for(lambda: _metric(ledger, "belvedere_change_feeds") == 0, timeout=30, what="closed")
    assert _metric(ledger, "belvedere_change_feed_pollers") == 0
    again = EventStream(ledger.url + "/views/notes/changes")  # a slot freed is taken again
    try:
        wait_for(lambda: again.status == 200, timeout=30, what="a feed once others closed")
    finally:
        again.close()
