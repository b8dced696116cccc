"""Windowed views: tumbling and hopping windows by event time, grace and late events,
retention (store and changelog), kill -9 and restores, against a fold computed here."""

from __future__ import annotations

import datetime as dt
import operator
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import orjson
import pytest

import belvedere
from belvedere.streams.clients import NewRecord
from belvedere.streams.partitioner import partition_for_key
from belvedere.tables.view import View
from belvedere.tables.windows import is_window_row
from belvedere.testing import TestDriver
from tests.support.brokers import Broker
from tests.support.http import call
from tests.support.worker import Worker, run_cli

PARTITIONS = 2  # tests/apps/clicks.py
MINUTE = 60_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
URLS = [f"/page/{i}" for i in range(12)]


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


def window_fold(
    clicks: list[tuple[str, int]],
    size: int,
    step: int,
    grace: int,
    retention: int,
    closed: list[list[object]] | None = None,
) -> tuple[dict[str, list[list[int]]], int, int]:
    """Each URL's windows ``[start, end, count]`` as a windowed view should hold them, with
    stream time per partition in arrival order; the late events; the rows kept. Adds the
    windows closed by the last stream time to ``closed``, as ``[url, start, end, count]``."""
    clock: dict[int, int] = {}
    counts: dict[tuple[str, int], int] = {}
    late = 0
    for url, ms in clicks:
        p = partition_for_key(url.encode(), PARTITIONS)
        now = clock[p] = max(clock.get(p, ms), ms)
        starts = [
            s for s in range(ms - ms % step - size + step, ms + 1, step) if s <= ms < s + size
        ]
        taking = [s for s in starts if now < s + size + grace]
        late += not taking
        for s in taking:
            counts[(url, s)] = counts.get((url, s), 0) + 1
    out: dict[str, list[list[int]]] = {}
    for (url, s), n in sorted(counts.items()):
        now = clock[partition_for_key(url.encode(), PARTITIONS)]
        if closed is not None and s + size + grace <= now:
            closed.append([url, s, s + size, n])
        if s + size > now - retention:
            out.setdefault(url, []).append([s, s + size, n])
    return out, late, sum(len(v) for v in out.values())


def session_fold(
    clicks: list[tuple[str, int]],
    gap: int,
    grace: int,
    retention: int,
    partitions: int = PARTITIONS,
) -> tuple[dict[str, list[list[int]]], int, int]:
    """Each URL's sessions ``[start, end, count]``: a click within ``gap`` of a session joins
    it, one bridging two merges them; late when neither its own gap nor a session it joins
    ends (plus the grace) after stream time."""
    clock: dict[int, int] = {}
    sessions: dict[str, list[list[int]]] = {}
    late = 0
    for url, ms in clicks:
        p = partition_for_key(url.encode(), partitions)
        now = clock[p] = max(clock.get(p, ms), ms)
        mine = sessions.setdefault(url, [])
        joined = [x for x in mine if x[0] - gap <= ms < x[1]]
        if ms + gap + grace <= now and all(x[1] + grace <= now for x in joined):
            late += 1
            continue
        for x in joined:
            mine.remove(x)
        start = min([ms] + [x[0] for x in joined])
        end = max([ms + gap] + [x[1] for x in joined])
        mine.append([start, end, 1 + sum(x[2] for x in joined)])
    out = {}
    for url, mine in sessions.items():
        horizon = clock[partition_for_key(url.encode(), partitions)] - retention
        if kept := sorted(x for x in mine if x[1] > horizon):
            out[url] = kept
    return out, late, sum(len(v) for v in out.values())


def clicks_stream(n: int, seed: int) -> list[tuple[str, int]]:
    """``n`` clicks over 30 minutes of event time, a few out of order (some within the
    grace, some beyond), then a click per URL at the end (the last stream time)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ms = T0 + i * (30 * MINUTE // n)
        if rng.random() < 0.05:
            ms -= rng.randrange(0, 150_000)
        out.append((rng.choice(URLS), ms))
    end = T0 + 31 * MINUTE
    return out + [(url, end) for url in URLS]


def records(clicks: list[tuple[str, int]], first: int = 0) -> list[NewRecord]:
    return [
        NewRecord(
            url.encode(),
            orjson.dumps(
                {
                    "eventId": f"c-{first + i}",
                    "eventType": "Clicked",
                    "eventVersion": 1,
                    "timestamp": iso(ms),
                    "data": {"url": url, "at": ms / 1000},  # the hopping view's time
                }
            ),
            0,
        )
        for i, (url, ms) in enumerate(clicks)
    ]


def expected(clicks: list[tuple[str, int]]) -> dict:
    closed: list[list[object]] = []
    minutes, late_minutes, kept_minutes = window_fold(
        clicks, MINUTE, MINUTE, 30_000, 10 * MINUTE, closed
    )
    hopping, late_hopping, kept_hopping = window_fold(clicks, 2 * MINUTE, MINUTE, 0, 4 * MINUTE)
    sessions, late_sessions, kept_sessions = session_fold(clicks, 20_000, 10_000, 10 * MINUTE)
    return {
        "minutes": minutes,
        "hopping": hopping,
        "sessions": sessions,
        "late": late_hopping,
        "sessionsLate": late_sessions,
        "deadLetters": late_minutes,
        "final": sorted(closed),
        "stored": {"minutes": kept_minutes, "hopping": kept_hopping, "sessions": kept_sessions},
    }


STATE = "/state?urls=" + ",".join(URLS)


def finals(broker: Broker, name: str) -> list[list[object]]:
    """What per-minute sent to its final topic: [url, start, end, count] per record."""
    return sorted(broker.final_windows(f"{name}-minutes-final"))


def settled(want: dict) -> Callable[[dict], bool]:
    return lambda s: s["ready"] and all(s[k] == want[k] for k in ("stored", "late", "sessionsLate"))


@pytest.fixture
def clicks_app(broker: Broker, workers: Callable[..., Worker], unique_name: str) -> Worker:
    broker.create_topic(f"{unique_name}-clicks", PARTITIONS)
    broker.create_topic(f"{unique_name}-minutes-final", PARTITIONS)
    return workers("tests.apps.clicks:app", {"CLICKS_NAME": unique_name})


@pytest.fixture
def slow_clicks_app(broker: Broker, workers: Callable[..., Worker], unique_name: str) -> Worker:
    broker.create_topic(f"{unique_name}-clicks", PARTITIONS)
    broker.create_topic(f"{unique_name}-minutes-final", PARTITIONS)
    return workers("tests.apps.clicks:app", {"CLICKS_NAME": unique_name, "CLICKS_DELAY": "0.001"})


def test_windows_equal_the_fold_and_survive_a_restore_and_a_rebuild(
    broker: Broker, clicks_app: Worker, unique_name: str
) -> None:
    clicks = clicks_stream(2_000, seed=1)
    want = expected(clicks)
    assert want["deadLetters"] > 0 and want["late"] > 0  # the input has late events
    broker.produce(f"{unique_name}-clicks", records(clicks))
    clicks_app.start()
    state = clicks_app.wait_until(STATE, settled(want), timeout=120, what="every click folded")
    assert {k: state[k] for k in want if k != "final"} == {
        k: v for k, v in want.items() if k != "final"
    }

    # A restore from the changelog alone brings no deleted window back.
    assert clicks_app.stop() == 0
    assert finals(broker, unique_name) == want["final"]  # each closed window, once
    log = clicks_app.logfile.read_text()
    assert "(late): " in log and "Traceback" not in log  # late input: a line, no traceback
    shutil.rmtree(clicks_app.data_dir / "views")
    clicks_app.start()
    restored = clicks_app.wait_until(STATE, lambda s: s["ready"], timeout=120, what="restored")
    assert restored["stored"] == want["stored"]
    assert restored["minutes"] == want["minutes"] and restored["hopping"] == want["hopping"]

    # A rebuild replays the topic by event time into a new generation: the same windows.
    result = run_cli(
        "rebuild", "tests.apps.clicks:app", "per-minute", "--url", clicks_app.url,
        env={"CLICKS_NAME": unique_name}, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rebuilt = clicks_app.wait_until(
        STATE, lambda s: s["ready"] and s["generation"] == 2, timeout=120, what="rebuilt"
    )
    assert rebuilt["stored"] == want["stored"] and rebuilt["late"] == want["late"]
    assert rebuilt["minutes"] == want["minutes"] and rebuilt["hopping"] == want["hopping"]
    assert clicks_app.stop() == 0
    assert finals(broker, unique_name) == want["final"]  # none sent again


def test_final_results_are_sent_once_across_a_rebuilds_switch(
    broker: Broker, clicks_app: Worker, unique_name: str
) -> None:
    """Clicks keep coming, each a minute after the last (each closes a window), while the
    rebuild replays and switches: the windows the old generation closed after its last
    checkpoint are sent by it, before the new one serves, and none twice."""
    before = clicks_stream(300, seed=4)
    during = [(URLS[i % len(URLS)], T0 + (32 + i) * MINUTE) for i in range(6_000)]
    want = expected(before + during)
    topic = f"{unique_name}-clicks"
    broker.produce(topic, records(before))
    clicks_app.start()
    clicks_app.wait_until(STATE, settled(expected(before)), timeout=120, what="the first clicks")
    rebuilt: list[subprocess.CompletedProcess] = []
    rebuild = threading.Thread(
        target=lambda: rebuilt.append(
            run_cli(
                *("rebuild", "tests.apps.clicks:app", "per-minute", "--url", clicks_app.url),
                env={"CLICKS_NAME": unique_name},
                timeout=120,
            )
        )
    )
    rebuild.start()
    sent, paced = 0, None
    while sent < len(during):  # ~200 clicks/s until the switch, then the rest at once
        if paced is None and (clicks_app.get(STATE) or {}).get("generation") == 2:
            paced = sent
        chunk = 1000 if paced is not None else 10
        batch = records(during[sent : sent + chunk], first=len(before) + sent)
        posted = call(
            f"{clicks_app.url}/events/{topic}", "POST", [orjson.loads(r.value) for r in batch]
        )
        assert posted.status == 201, posted.raw  # the embedded broker is the worker's: POST
        sent += chunk
        time.sleep(0.05 if paced is None else 0)  # the feed's pace, not a wait for a condition
    rebuild.join(150)
    assert rebuilt and rebuilt[0].returncode == 0, rebuilt and rebuilt[0].stderr
    assert paced, f"the switch came {'before' if paced == 0 else 'after'} the clicks during it"
    clicks_app.wait_until(
        STATE,  # the row counts settle long before the last click: the windows too
        lambda s: settled(want)(s) and s["minutes"] == want["minutes"],
        timeout=120,
        what="every click folded",
    )
    assert clicks_app.stop() == 0
    assert finals(broker, unique_name) == want["final"]


def test_kill_9_mid_stream_gives_the_exact_windows(
    broker: Broker, slow_clicks_app: Worker, unique_name: str
) -> None:
    clicks = clicks_stream(3_000, seed=2)
    want = expected(clicks)
    broker.produce(f"{unique_name}-clicks", records(clicks))
    clicks_app = slow_clicks_app
    clicks_app.start()
    progress = clicks_app.wait_until(
        STATE,
        lambda s: s["ready"] and s["hoppingStreamTime"] > T0 + 5 * MINUTE,
        timeout=120,
        what="some progress",
    )
    assert progress["hoppingStreamTime"] < T0 + 25 * MINUTE  # killed mid-stream
    clicks_app.kill()
    clicks_app.start()
    state = clicks_app.wait_until(STATE, settled(want), timeout=120, what="every click folded")
    # dead letters are counted per process: the events refolded after the kill count again
    assert {k: state[k] for k in want if k not in ("deadLetters", "final")} == {
        k: v for k, v in want.items() if k not in ("deadLetters", "final")
    }
    assert clicks_app.stop() == 0
    assert finals(broker, unique_name) == want["final"]  # each closed window, once
    log = clicks_app.logfile.read_text()
    assert "(late): " in log and "Traceback" not in log  # late input: a line, no traceback


# -- declarations and local reads, in process ----------------------------------------------


class Viewed(belvedere.Event, key="page"):
    page: str
    at: float


@pytest.mark.parametrize(
    ("declare", "error"),
    [
        (lambda: belvedere.Tumbling(seconds=0), "size must be positive"),
        (lambda: belvedere.Tumbling(timedelta(minutes=1), seconds=5), "not both"),
        (lambda: belvedere.Hopping(minutes=1, step=timedelta(minutes=2)), "larger than the size"),
        (lambda: belvedere.Hopping(minutes=1, step=timedelta(seconds=25)), "multiple of the step"),
        (lambda: belvedere.Hopping(minutes=1), "step must be positive"),
        (lambda: belvedere.Tumbling(minutes=5, retention=60), "retention .* at least the size"),
        (lambda: belvedere.Tumbling(minutes=1, grace=-1), "grace must not be negative"),
        (lambda: belvedere.Tumbling(minutes=1, on_late="drop"), "on_late must be one of"),
        (lambda: belvedere.Tumbling(minutes=1, time=3), "time must be a field name or a function"),
        (lambda: belvedere.Session(minutes=5), "give merge=fn"),
        (lambda: belvedere.Tumbling(minutes=1, final_to="out"), "final_to must be a plain topic"),
        (lambda: belvedere.Session(0, merge=max), "gap must be positive"),
    ],
)
def test_a_bad_window_is_one_clear_error(declare: Callable[[], object], error: str) -> None:
    with pytest.raises((ValueError, TypeError), match=error):
        declare()


def test_a_window_on_a_table_or_with_indexes_is_refused() -> None:
    app = belvedere.App("windows-refused")
    with pytest.raises(TypeError, match="windows are declared on a view"):
        app.Table("t", window=belvedere.Tumbling(minutes=1))
    with pytest.raises(ValueError, match="a windowed view has no indexes"):
        app.view("v", value=dict, indexes=["x"], window=belvedere.Tumbling(minutes=1))
    with pytest.raises(TypeError, match=r"window must be belvedere\.Tumbling"):
        app.view("w", value=int, window=timedelta(minutes=1))
    plain = app.view("plain", value=int)
    with pytest.raises(TypeError, match="not windowed"):
        plain.windows("k")


def one_view(
    name: str, value: type, window: belvedere.Tumbling | belvedere.Hopping | belvedere.Session
) -> tuple[belvedere.App, belvedere.EventTopic, View]:
    """An app with one topic of ``Viewed`` events, one partition, and one windowed view."""
    app = belvedere.App(f"windows-{name}", checkpoint_events=100)
    views = app.event_topic(f"windows-{name}-views", Viewed, partitions=1)
    return app, views, app.view(name, value=value, window=window)


def test_local_reads_and_the_late_dead_letter() -> None:
    app, views, hourly = one_view(
        "hourly", list, belvedere.Hopping(hours=1, step=timedelta(minutes=30), time="at", grace=60)
    )

    @app.projection(views, view=hourly)
    def seen(view, event: Viewed) -> None:
        view[event.page] = [*view.get(event.page, []), event.at]

    hour = 3_600
    with TestDriver(app) as driver:
        for page, at in [("a", 10), ("b", 20), ("a", 1_900), ("a", 2 * hour + 5), ("a", 1_750)]:
            driver.send(views, Viewed(page=page, at=at))  # the last: too late for its windows
        driver.run()
        ms = 1000
        # [-30 min, 30 min) ended past the retention (size + grace): hidden, then deleted
        assert hourly.windows("a") == [
            (0, hour * ms, [10.0, 1_900.0]),
            (1_800 * ms, 5_400 * ms, [1_900.0]),
            (5_400 * ms, 9_000 * ms, [7_205.0]),
            (7_200 * ms, 10_800 * ms, [7_205.0]),
        ]
        assert hourly.windows("a", from_ms=0, to_ms=5_400 * ms) == hourly.windows("a")[:2]
        # overlapping [from, to), as over HTTP: a window starting before from_ms is in
        assert hourly.windows("a", from_ms=3_599 * ms, to_ms=5_401 * ms) == hourly.windows("a")[:3]
        assert hourly.window_at("a", 5_400 * ms) == hourly.windows("a")[2]
        assert hourly.window_at("a", 1_900 * ms) == (0, hour * ms, [10.0, 1_900.0])
        assert hourly.window_at("a", 4 * hour * ms) is None
        assert hourly.window_rows(0) == [("a", [10.0, 1_900.0]), ("b", [20.0])]
        assert hourly.stream_time(0) == (2 * hour + 5) * ms
        with pytest.raises(TypeError, match="is windowed"):  # a plain scan: 400 over HTTP
            hourly.scan()
        assert hourly.count() == 5  # its windows: a, 4 of them (one past retention); b, 1
        (late,) = driver.dead_letters()
        assert late.kind == "late" and late.view == "hourly"
        assert "1970-01-01T00:00:00.000+00:00, 1970-01-01T01:00:00.000+00:00" in late.reason
        assert "stream time is 1970-01-01T02:00:05.000+00:00" in late.reason


def test_retention_keeps_the_store_bounded_however_long_the_stream() -> None:
    app, views, per_second = one_view(
        "per-second", int, belvedere.Tumbling(seconds=1, time="at", retention=timedelta(seconds=30))
    )

    @app.projection(views, view=per_second)
    def seen(view, event: Viewed) -> None:
        view[event.page] = view.get(event.page, 0) + 1

    with TestDriver(app) as driver:
        for second in range(3_000):  # 3,000 windows of 5 pages each, 30 s kept
            for page in "abcde":
                driver.send(views, Viewed(page=page, at=second + 0.5))
        driver.run()
        (store,) = per_second.stores.values()
        stored = sum(1 for key, _ in store.rows() if is_window_row(key))
        assert 5 * 30 <= stored <= 2 * 5 * 31 + 500  # what retention keeps, and one checkpoint's
        assert [start for start, _, _ in per_second.windows("c")] == [
            s * 1000
            for s in range(2_969, 3_000)  # ending after stream time - 30 s
        ]


def test_sessions_merge_when_an_event_bridges_them() -> None:
    app, views, visits = one_view(
        "visits",
        int,
        belvedere.Session(
            seconds=10, merge=operator.add, time="at", grace=5, retention=timedelta(hours=1)
        ),
    )

    @app.projection(views, view=visits)
    def seen(view, event: Viewed) -> None:
        view[event.page] = view.get(event.page, 0) + 1

    rng = random.Random(7)
    clicks = [("c", 0), ("c", 18_000), ("c", 9_000)]  # the third bridges the first two
    clicks += [
        (rng.choice("ab"), 60_000 + i * 2_000 - rng.choice([0, 0, 0, 5_000, 20_000]))
        for i in range(400)
    ]
    clicks += [("c", 100)]  # late: its session closed long ago
    want, late, _ = session_fold(
        [(f"/page/{u}", ms) for u, ms in clicks], 10_000, 5_000, 3_600_000, partitions=1
    )
    assert late > 0
    with TestDriver(app) as driver:
        for page, ms in clicks:
            driver.send(views, Viewed(page=f"/page/{page}", at=ms / 1000))
        driver.run()
        for page in ("/page/a", "/page/b", "/page/c"):
            assert [list(w) for w in visits.windows(page)] == want.get(page, []), page
        assert want["/page/c"] == [[0, 28_000, 3]]  # the click at 100 ms came too late
        assert visits.window_at("/page/c", 27_999) == (0, 28_000, 3)
        assert visits.window_rows(0) == [("/page/c", 3)]
        assert len(want["/page/a"]) > 5 and any(w[2] > 1 for w in want["/page/a"])
        assert sum(1 for d in driver.dead_letters() if d.kind == "late") == late


def test_an_instants_windows_are_those_of_the_definition() -> None:
    """Every kind's windows of an instant, before the epoch too, against the definition:
    the epoch-aligned starts ``k * step`` whose ``[start, start + size)`` holds it."""
    rng = random.Random(5)
    kinds = [belvedere.Tumbling(0.007), belvedere.Tumbling(minutes=1)]
    kinds += [belvedere.Hopping(minutes=10, step=60), belvedere.Hopping(0.006, 0.002)]
    for window in kinds:
        size, step = window.size_ms, window.step_ms
        for _ in range(2_000):
            ms = rng.randrange(-(10**13), 10**13)
            first = (ms - size) // step * step
            want = [(s, s + size) for s in range(first, ms + 1, step) if s <= ms < s + size]
            assert window.windows_of(ms) == want, (window, ms)
