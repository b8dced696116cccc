"""Windowed views' rows read back: from a store (a key's windows in a range, at an instant,
one window of every key, paged), and over HTTP from a worker on both brokers."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import belvedere
from belvedere.tables.store import PartitionStore, StoreBudget
from belvedere.tables.view import View
from belvedere.tables.window_keys import SEPARATOR, window_key
from belvedere.tables.window_reads import (
    EARLIEST,
    LATEST,
    WindowRow,
    key_windows,
    windows_starting,
)
from belvedere.tables.windows import STREAM_TIME, encode_ms
from belvedere.views_api.positions import decode_token, encode_token
from belvedere.views_api.windows import describe_window
from tests.support.brokers import KAFKA_ONLY, Broker
from tests.support.chromium import Browser
from tests.support.http import EventStream, call
from tests.support.worker import Worker, wait_for

SIZE, HOP = 10_000, 5_000
#: Each view's heading on the status page, and whether it links to a scan of its rows.
HEADINGS = """(() => {
  const views = [...document.querySelectorAll('section.view')];
  if (!views.length) return null;
  const out = Object.fromEntries(views.map(s => [s.dataset.view, s.querySelector('h2').textContent]));
  out.links = Object.fromEntries(views.map(s => [s.dataset.view, !!s.querySelector('a.rows')]));
  return out;
})()"""


def _written(store: PartitionStore, rows: dict[bytes, bytes]) -> None:
    """``rows`` written as a checkpoint writes them."""
    changes, delta = store.plan(rows, None)
    store.write(rows, changes, delta, {("source", 0): 1}, None)


def _hopping(keys: list[bytes], rng: random.Random) -> dict[bytes, list[tuple[int, int, bytes]]]:
    """Per key, hopping windows (10 s, every 5 s) at random starts, some before the epoch."""
    out = {}
    for key in keys:
        starts = sorted(rng.sample(range(-20, 60), 25))
        out[key] = [(s * HOP, s * HOP + SIZE, b"%d" % rng.randrange(1000)) for s in starts]
    return out


def _store_with(path: Path, windows: dict[bytes, list[tuple[int, int, bytes]]]) -> PartitionStore:
    store = PartitionStore(path, StoreBudget(8 << 20, 8 << 20))
    rows = {window_key(k, s, e): v for k, found in windows.items() for s, e, v in found}
    rows[b"a-plain-row"] = b"1"  # not a window's: never read as one
    _written(store, rows)
    return store


STR_KEYS = [b"a", b"ab", b"abc", b"b", "\u00e9t\u00e9".encode()]
INT_KEYS = [View("app", "v", int, int).store_key(k) for k in (-(2**63), -1, 0, 255, 2**63 - 1)]


@pytest.mark.parametrize("keys", [STR_KEYS, INT_KEYS], ids=["str", "int"])
def test_a_keys_windows_in_a_range_and_at_an_instant_are_its_own_overlapping_ones(
    tmp_path: Path, keys: list[bytes]
) -> None:
    rng = random.Random(21)
    windows = _hopping(keys, rng)
    store = _store_with(tmp_path / "0.db", windows)
    try:
        for _ in range(300):
            key = rng.choice(keys)
            low = rng.randrange(-150_000, 350_000)
            high = low + rng.randrange(1, 60_000)
            expected = [WindowRow(key, s, e, v) for s, e, v in windows[key] if s < high and e > low]
            assert key_windows(store, key, low, high) == expected
            assert key_windows(store, key, low, high, longest=SIZE) == expected
            at = [WindowRow(key, s, e, v) for s, e, v in windows[key] if s <= low < e]
            assert key_windows(store, key, low, low + 1) == at  # at an instant
            assert key_windows(store, key, low, low + 1, longest=SIZE) == at
            assert len(at) <= 2  # hopping: an instant is in up to two of them
        for key in keys:
            everything = [WindowRow(key, s, e, v) for s, e, v in windows[key]]
            assert key_windows(store, key) == everything
            assert key_windows(store, key, EARLIEST, LATEST, longest=SIZE) == everything
        assert key_windows(store, b"zz") == []
        # past retention: windows ending at or before the horizon are left out
        for key in keys:
            horizon = rng.randrange(-100_000, 300_000)
            kept = [WindowRow(key, s, e, v) for s, e, v in windows[key] if e > horizon]
            assert key_windows(store, key, horizon=horizon) == kept
            assert key_windows(store, key, horizon, horizon + 1, horizon=horizon) == [
                row for row in kept if row.start <= horizon
            ]
    finally:
        store.close()


def test_one_window_of_every_key_pages_in_store_order_across_partitions(tmp_path: Path) -> None:
    rng = random.Random(7)
    keys = [k.encode() for k in ("a", "ab", "abc", "b", "ba", "c", "d", "da", "e")]
    windows = _hopping(keys, rng)
    parts = [
        _store_with(tmp_path / f"{p}.db", {k: windows[k] for k in keys[p::2]}) for p in range(2)
    ]
    try:
        for start in {s for found in windows.values() for s, _, _ in found}:
            expected = sorted(
                (WindowRow(k, s, e, v) for k in keys for s, e, v in windows[k] if s == start),
                key=lambda row: row.key + SEPARATOR,
            )
            for limit in (1, 2, 100):
                got, after = [], None
                while True:
                    page, more = windows_starting(parts, start, limit, after)
                    got += page
                    if not more:
                        break
                    after = page[-1].key
                assert got == expected
        assert windows_starting(parts, 123, 10) == ([], False)
        start = windows[b"a"][3][0]  # a: partition 0, ab: partition 1
        page, _ = windows_starting(parts, start, 100, horizons=[start + SIZE, None])
        assert b"a" not in [row.key for row in page]
        assert page == [
            row for row in windows_starting(parts, start, 100)[0] if row.key in keys[1::2]
        ]
    finally:
        for store in parts:
            store.close()


def test_windows_past_retention_not_yet_deleted_are_hidden_from_every_read(
    tmp_path: Path,
) -> None:
    """The view's reads and the HTTP routes (which read through ``stored_windows*``) hide
    the same expired windows, whether or not a checkpoint deleted them yet."""
    view = View("app", "v", int, str, window=belvedere.Tumbling(seconds=10, grace=5))
    keys = [b"a", b"ab"]
    windows = {k: [(s * SIZE, (s + 1) * SIZE, b"%d" % s) for s in range(6)] for k in keys}
    store = _store_with(tmp_path / "0.db", windows)
    try:
        clock = 5 * SIZE + 1  # retention 15 s: windows ending at or before 35 s are expired
        _written(store, {STREAM_TIME: encode_ms(clock)})
        for key in keys:
            kept = [WindowRow(key, s, e, v) for s, e, v in windows[key] if e > clock - 15_000]
            assert [row.start for row in kept] == [3 * SIZE, 4 * SIZE, 5 * SIZE]
            assert len(key_windows(store, key)) == 6  # still stored
            assert view.stored_windows(store, key) == kept
            assert view.stored_windows(store, key, 2 * SIZE, 2 * SIZE + 1) == []
        assert view.stored_windows_starting([store], 2 * SIZE, 10) == ([], False)
        page, more = view.stored_windows_starting([store], 3 * SIZE, 1)
        assert (page, more) == ([WindowRow(b"ab", 3 * SIZE, 4 * SIZE, b"3")], True)
    finally:
        store.close()


def test_a_window_is_described_and_bounds_a_read_by_its_size_unless_sessions() -> None:
    tumbling = belvedere.Tumbling(minutes=1)
    hopping = belvedere.Hopping(minutes=10, step=60)
    session = belvedere.Session(seconds=30, merge=max)  # the gap: a session may last longer

    def windowed(window: object) -> View:
        return View("app", "v", int, str, window=window)

    assert describe_window(windowed(tumbling)) == "tumbling 1m"
    assert describe_window(windowed(belvedere.Tumbling(1.5))) == "tumbling 1500ms"
    assert describe_window(windowed(hopping)) == "hopping 10m every 1m"
    assert describe_window(windowed(session)) == "session, gap 30s"
    assert describe_window(windowed(belvedere.Sliding(seconds=90))) == "sliding 90s"
    longest = [w.longest_ms for w in (tumbling, hopping, session)]
    assert longest == [60_000, 600_000, None]
    assert describe_window(View("app", "v", int)) is None


# -- over HTTP ---------------------------------------------------------------------------

#: 2023-11-14T22:13:20Z, 20 s into its minute.
BASE = 1_700_000_000_000
MINUTE = 60_000
URLS = ["a", "ab", "b", "home", "shop"]


def _clicks(n: int, seed: int, urls: list[str] = URLS) -> tuple[list[dict], Counter]:
    rng = random.Random(seed)
    events, counts = [], Counter()
    for _ in range(n):
        url, at = rng.choice(urls), BASE + rng.randrange(5 * MINUTE)
        counts[(url, at - at % MINUTE)] += 1
        events.append({"eventType": "Clicked", "eventVersion": 1, "data": {"url": url, "atMs": at}})
    return events, counts


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _window(start: int, count: int) -> dict:
    return {"start": _iso(start), "end": _iso(start + MINUTE), "value": count}


def _every_window(url: str, start: str, limit: int) -> list[dict]:
    """Every key's window starting at ``start``, page by page."""
    rows, cursor = [], None
    while True:
        more = f"&cursor={cursor}" if cursor else ""
        page = call(f"{url}/views/clicks/windows?start={start}&limit={limit}{more}")
        assert page.status == 200, page.raw
        rows += page.body["rows"]
        cursor = page.body["next"]
        if cursor is None:
            return rows


@pytest.fixture
def windowed(broker: Broker, workers: Callable[..., Worker], unique_name: str) -> Worker:
    broker.create_topic(f"{unique_name}-clicks", 4)
    return workers("tests.apps.windowed:app", {"WINDOWED_NAME": unique_name})


def test_a_windowed_view_is_read_by_key_range_instant_and_window_over_http(
    windowed: Worker, unique_name: str
) -> None:
    windowed.start()
    windowed.wait_until("/ready", lambda _: True, what="the worker ready")
    url = windowed.url
    feed = EventStream(f"{url}/views/clicks/changes")
    events, counts = _clicks(300, seed=3)
    posted = call(f"{url}/events/{unique_name}-clicks", "POST", events)
    assert posted.status == 201, posted.raw
    token = posted.body["token"]
    minutes = sorted({start for _, start in counts})

    for key in URLS:
        mine = [(start, n) for (u, start), n in sorted(counts.items()) if u == key]
        every = call(f"{url}/views/clicks/windows/{key}?after={token}&timeout=20")
        assert every.status == 200, every.raw
        assert every.body == {"key": key, "windows": [_window(s, n) for s, n in mine]}
        assert every.headers["X-Belvedere-Worker"] == url
        assert every.headers["X-Belvedere-Generation"] == "1"
        assert "X-Belvedere-Position" in every.headers
        # [from, to): the windows overlapping it, from ms or ISO-8601
        low, high = minutes[1] + 1, minutes[3]
        ranged = call(f"{url}/views/clicks/windows/{key}?from={low}&to={_iso(high)}&max_lag=0")
        assert ranged.status == 200, ranged.raw
        expected = [_window(s, n) for s, n in mine if s < high and s + MINUTE > low]
        assert ranged.body["windows"] == expected
        at = call(f"{url}/views/clicks/windows/{key}?at={_iso(minutes[2] + 59_999)}")
        assert at.body["windows"] == [_window(s, n) for s, n in mine if s == minutes[2]]

    # one window of every key, a page at a time, from every partition
    for limit in (2, 100):
        rows = _every_window(url, _iso(minutes[0]), limit)
        expected_keys = sorted(
            (u for (u, s) in counts if s == minutes[0]), key=lambda u: u.encode() + SEPARATOR
        )
        assert rows == [
            {"key": u, **_window(minutes[0], counts[(u, minutes[0])])} for u in expected_keys
        ]

    # the change feed names each change's key and window; a window changes several times,
    # so wait for each one's last value, not for as many changes as windows
    want = {(u, _iso(s), _iso(s + MINUTE)): n for (u, s), n in counts.items()}

    def last_values() -> dict[tuple[str, str, str], Any]:
        last = {}
        for event in list(feed.events):
            data = event["data"]
            last[(data["key"], data["start"], data["end"])] = data["value"]
        return last

    wait_for(lambda: last_values() == want, timeout=30, what="every window's last change")
    feed.close()

    # a token for a write not made yet: 504 with where the view is, for one key or every key
    ahead = encode_token(
        {t: {p: o + 1000 for p, o in parts.items()} for t, parts in decode_token(token).items()}
    )
    for path in ("/views/clicks/windows/home", f"/views/clicks/windows?start={BASE}"):
        late = call(f"{url}{path}{'&' if '?' in path else '?'}after={ahead}&timeout=0.3")
        assert (late.status, late.body["error"]) == (504, "not-yet-applied"), late.raw
        assert late.headers["X-Belvedere-Position"]

    # what is not a windowed read is said so, in JSON
    for path, code in [
        ("/views/pages/windows/home", "not-windowed"),
        (f"/views/pages/windows?start={BASE}", "not-windowed"),
        ("/views/clicks/home", "windowed-view"),
        ("/views/clicks?key=home", "windowed-view"),
        ("/views/clicks", "windowed-view"),
        ("/views/clicks/by/url/home", "windowed-view"),
        ("/views/clicks/windows", "bad-parameter"),
        ("/views/clicks/windows/home?from=yesterday", "bad-parameter"),
        (f"/views/clicks/windows/home?at={BASE}&from={BASE}", "bad-parameter"),
        (f"/views/clicks/windows/home?from={BASE}&to={BASE}", "bad-parameter"),
    ]:
        answer = call(url + path)
        assert (answer.status, answer.body["error"]) == (400, code), (path, answer.raw)
    assert call(f"{url}/views/nothing/windows/home").status == 404
    assert call(f"{url}/views/pages/home?after={token}&timeout=20").body == sum(
        n for (u, _), n in counts.items() if u == "home"
    )

    # the catalog (and so the status page) says which views are windowed, and how
    views = {v["name"]: v for v in call(f"{url}/views").body["views"]}
    assert views["clicks"]["window"] == "tumbling 1m"
    assert views["pages"]["window"] is None
    assert views["clicks"]["keys"] == len(counts)  # its windows, not its bookkeeping rows


@KAFKA_ONLY
def test_two_workers_answer_any_keys_windows_and_every_keys_window(
    windowed: Worker, workers: Callable[..., Worker], unique_name: str
) -> None:
    pair = [windowed.start()]
    pair.append(workers("tests.apps.windowed:app", dict(windowed.env), data_dir="second").start())

    def split() -> bool:
        views = pair[0].get("/views")
        if views is None:
            return False
        parts = next(v for v in views["views"] if v["name"] == "clicks")["partitions"]
        serving = {p: s["worker"] for p, s in parts.items() if s["state"] == "serving"}
        return len(serving) == 4 and set(serving.values()) == {w.url for w in pair}

    wait_for(split, timeout=120, what="the partitions split over two serving workers")
    urls = [f"page-{i}" for i in range(12)]
    events, counts = _clicks(400, seed=5, urls=urls)
    posted = call(f"{pair[0].url}/events/{unique_name}-clicks", "POST", events)
    assert posted.status == 201, posted.raw
    token = posted.body["token"]
    first = min(start for _, start in counts)
    for worker in pair:
        answered_by = set()
        for key in urls:
            read = call(f"{worker.url}/views/clicks/windows/{key}?after={token}&timeout=20")
            assert read.status == 200, read.raw
            mine = [(start, n) for (u, start), n in sorted(counts.items()) if u == key]
            assert read.body["windows"] == [_window(s, n) for s, n in mine]
            answered_by.add(read.headers["X-Belvedere-Worker"])
        assert answered_by == {w.url for w in pair}  # some answered here, some forwarded
        rows = _every_window(worker.url, str(first), 3)
        assert [(r["key"], r["value"]) for r in rows] == sorted(
            ((u, n) for (u, s), n in counts.items() if s == first),
            key=lambda r: r[0].encode() + SEPARATOR,
        )


@pytest.mark.parametrize("broker", ["embedded"], indirect=True)
def test_the_status_page_says_how_a_view_is_windowed(
    windowed: Worker, unique_name: str, chromium: str
) -> None:
    windowed.start()
    windowed.wait_until("/ready", lambda _: True, what="the worker ready")
    browser = Browser(chromium, windowed.url + "/")
    try:
        shown = wait_for(
            lambda: browser.evaluate(HEADINGS) or None, timeout=30, what="the page's views"
        )
    finally:
        browser.close()
    assert "windows tumbling 1m" in shown["clicks"] and "rows (windows)" in shown["clicks"]
    assert "windows" not in shown["pages"] and " keys " in shown["pages"]
    assert shown["links"] == {"clicks": False, "pages": True}  # no scan of a windowed view
