"""Sliding windows (Kafka Streams' ``SlidingWindows``): the windows a view holds equal the
ones computed here from the definition, with out-of-order events inside the grace and late
ones beyond it; retention, final results, a restart and a rebuild give the same windows."""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

import belvedere
from belvedere.streams.clients import NewRecord
from belvedere.streams.partitioner import partition_for_key
from belvedere.tables.view import View
from belvedere.tables.windows import is_window_row
from belvedere.testing import TestDriver
from tests.apps.sliding import Reading, fold_step
from tests.support.brokers import Broker
from tests.support.worker import Worker, run_cli

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SIZE, GRACE = 10_000, 5_000


def readings(
    n: int, seed: int, sensors: str = "abc", partition_of: Callable[[str], int] = lambda _: 0
) -> list[tuple[str, int, int]]:
    """``(sensor, ms, amount)``: bursts and gaps of event time, some events out of order
    by less than the grace (their windows all still open), some by more than size plus
    grace (late: every window they fall in closed), by their partition's stream time. Never
    in between, where an event goes into the windows still open only (as with hopping)."""
    rng = random.Random(seed)
    clock: dict[int, int] = {}
    out = []
    now = T0
    for _ in range(n):
        now += rng.choice([0, 1, 7, 300, 1_000, 2_500, 4_000, 9_999, 10_000, 10_001, 30_000])
        sensor = rng.choice(sensors)
        p = partition_of(sensor)
        ms = now
        roll = rng.random()
        if roll < 0.15 and p in clock:  # within the grace: its window [ms - size, ms] open
            ms = clock[p] - rng.randrange(0, GRACE)
        elif roll < 0.2 and p in clock:
            ms = clock[p] - SIZE - GRACE - 1 - rng.randrange(0, 20_000)  # late
        clock[p] = max(clock.get(p, ms), ms)
        out.append((sensor, ms, rng.randrange(1, 100)))
    return out


def brute_force(
    events: list[tuple[str, int, int]],
    partition_of: Callable[[str], int],
    retention: int,
) -> tuple[dict[str, list[tuple[int, int, dict]]], int, dict[int, int]]:
    """Each key's windows from the definition: for each of its events at ``t``, the
    window ``[t - size, t]``, and ``[t + 1, t + 1 + size]`` when some event of the key is in
    it, each the fold of the key's events in it (stored half-open, ``end`` one past);
    stream time per partition, an event late when ``t + size + grace < stream time``;
    windows ending before stream time - retention gone. And how many were late, and each
    partition's last stream time."""
    clock: dict[int, int] = {}
    kept: dict[str, list[tuple[int, int, str]]] = {}
    late = 0
    for i, (sensor, ms, amount) in enumerate(events):
        p = partition_of(sensor)
        now = clock[p] = max(clock.get(p, ms), ms)
        if ms + SIZE + 1 + GRACE <= now:
            late += 1
            continue
        assert ms + 1 + GRACE > now, "the stream has an event partly late"
        kept.setdefault(sensor, []).append((ms, amount, f"r{i}"))
    out = {}
    for sensor, mine in kept.items():
        bounds = set()
        for t, _, _ in mine:
            bounds.add((t - SIZE, t))
            if any(t < u <= t + 1 + SIZE for u, _, _ in mine):
                bounds.add((t + 1, t + 1 + SIZE))
        horizon = clock[partition_of(sensor)] - retention
        windows = []
        for start, last in sorted(bounds):
            if last + 1 <= horizon:
                continue
            inside = [(u, a, r) for u, a, r in mine if start <= u <= last]
            windows.append(
                (
                    start,
                    last + 1,
                    {
                        "n": len(inside),
                        "sum": sum(a for _, a, _ in inside),
                        "max": max(a for _, a, _ in inside),
                        "ids": sorted(r for _, _, r in inside),
                    },
                )
            )
        if windows:
            out[sensor] = windows
    return out, late, clock


def one_view(
    name: str, window: belvedere.Sliding, partitions: int = 1
) -> tuple[belvedere.App, belvedere.EventTopic, View]:
    app = belvedere.App(f"sliding-{name}", checkpoint_events=50)
    topic = app.event_topic(f"sliding-{name}-readings", Reading, partitions=partitions)
    view = app.view(name, value=dict, window=window)

    @app.projection(topic, view=view)
    def fold(view, event: Reading) -> None:
        view[event.sensor] = fold_step(view.get(event.sensor), event)

    return app, topic, view


def at_ms(event: Reading) -> float:
    return event.at_ms / 1000


def send(
    driver: TestDriver, topic: belvedere.EventTopic, events: list[tuple[str, int, int]]
) -> None:
    for i, (sensor, ms, amount) in enumerate(events):
        driver.send(topic, Reading(sensor=sensor, at_ms=ms, amount=amount, rid=f"r{i}"))


@pytest.mark.parametrize("seed", [3, 11, 29])
def test_windows_equal_the_definition_with_out_of_order_and_late_events(seed: int) -> None:
    retention = 3 * 3_600_000  # every window kept: compared, not only the last minute's
    app, topic, view = one_view(
        f"equal-{seed}",
        belvedere.Sliding(
            seconds=SIZE / 1000, grace=GRACE / 1000, retention=retention / 1000, time=at_ms
        ),
    )
    events = readings(600, seed=seed)
    want, late, _ = brute_force(events, lambda _: 0, retention)
    assert late > 10
    with TestDriver(app) as driver:
        send(driver, topic, events)
        driver.run()
        for sensor in "abc":
            assert view.windows(sensor) == want[sensor], sensor
        dead = driver.dead_letters()
        assert len(dead) == late and {d.kind for d in dead} == {"late"}
        assert f"sliding windows of view 'equal-{seed}'" in dead[0].reason
        # reads: an instant's windows, one window across keys
        start, end, value = want["a"][-1]
        assert view.window_at("a", end - 1) == view.windows("a", end - 1, end)[0]
        assert ("a", value) in view.window_rows(start)


def test_a_view_keyed_by_another_field_slides_by_that_key() -> None:
    app = belvedere.App("sliding-by", checkpoint_events=50)
    topic = app.event_topic("sliding-by-readings", Reading, partitions=1)
    view = app.view(
        "by-site",
        value=dict,
        window=belvedere.Sliding(seconds=10, grace=5, time=at_ms, retention=3_600),
    )

    @app.projection(topic, view=view, by=lambda event: event.sensor[0])
    def fold(view, event: Reading) -> None:
        view[event.sensor[0]] = fold_step(view.get(event.sensor[0]), event)

    events = readings(300, seed=4, sensors=["a1", "a2", "b1"])  # type: ignore[arg-type]
    want, late, _ = brute_force([(s[0], ms, a) for s, ms, a in events], lambda _: 0, 3_600_000)
    with TestDriver(app) as driver:
        send(driver, topic, events)
        driver.run()
        assert view.windows("a") == want["a"] and view.windows("b") == want["b"]
        assert len(driver.dead_letters()) == late


@pytest.mark.parametrize("on_late", ["dead-letter", "count"])
def test_an_event_partly_late_goes_into_the_open_windows_only(on_late: str) -> None:
    app, topic, view = one_view(
        f"partly-{on_late}",
        belvedere.Sliding(seconds=10, grace=5, time=at_ms, retention=3_600, on_late=on_late),
    )
    second = 1_000
    with TestDriver(app) as driver:
        # stream time 118 s; 104 s: each window it would be in closed (ends before 113 s);
        # 109 s: its own [99, 109] and [101, 111] (100 s's right window) closed, [108, 118]
        # open; its right window [109.001, 119.001] made as a copy of [108, 118] before it
        send(driver, topic, [("a", T0 + t * second, 1) for t in (100, 118, 104, 109)])
        driver.run()
        assert [(s - T0, e - T0, v["ids"]) for s, e, v in view.windows("a")] == [
            (90 * second, 100 * second + 1, ["r0"]),
            (108 * second, 118 * second + 1, ["r1", "r3"]),
            (109 * second + 1, 119 * second + 2, ["r1"]),
        ]
        if on_late == "count":
            assert view.late_count() == 1 and driver.dead_letters() == []
        else:
            (late,) = driver.dead_letters()
            assert late.kind == "late" and "2026-01-01T00:01:44.000+00:00" in late.reason


def test_the_handler_is_bound_to_the_events_key() -> None:
    app = belvedere.App("sliding-other-key", checkpoint_events=50)
    topic = app.event_topic("sliding-other-key-readings", Reading, partitions=1)
    view = app.view("other", value=int, window=belvedere.Sliding(seconds=10, time=at_ms))

    @app.projection(topic, view=view)
    def fold(view, event: Reading) -> None:
        view["elsewhere" if event.amount == 13 else event.sensor] = view.get(event.sensor, 0) + 1

    with TestDriver(app) as driver:
        send(driver, topic, [("a", T0, 1), ("a", T0 + 1, 13), ("a", T0 + 2, 1)])
        driver.run()
        (dead,) = driver.dead_letters()
        assert dead.kind == "handler-error"
        assert "bound to its event's key 'a', not 'elsewhere'" in dead.reason
        # the failed event left no window and no trace in the others
        assert view.windows("a") == [
            (T0 - 10_000, T0 + 1, 1),
            (T0 - 9_998, T0 + 3, 2),
            (T0 + 1, T0 + 10_002, 1),
        ]


@pytest.mark.parametrize(
    ("declare", "error"),
    [
        (lambda: belvedere.Sliding(seconds=0), "Sliding: the size must be positive"),
        (lambda: belvedere.Sliding(), "Sliding: the size must be positive"),
        (lambda: belvedere.Sliding(timedelta(seconds=1), minutes=1), "not both"),
        (lambda: belvedere.Sliding(seconds=10, retention=10), r"at least .* \(10001 ms\)"),
        (lambda: belvedere.Sliding(seconds=1, on_late="drop"), "on_late must be one of"),
        (lambda: belvedere.Sliding(seconds=1, final_to="t"), "final_to must be a plain topic"),
    ],
)
def test_a_bad_sliding_window_is_one_clear_error(declare: Callable[[], Any], error: str) -> None:
    with pytest.raises((ValueError, TypeError), match=error):
        declare()


def test_retention_keeps_the_store_bounded_and_a_restore_brings_nothing_back(
    tmp_path: Path,
) -> None:
    app, topic, view = one_view(
        "bounded", belvedere.Sliding(seconds=1, time=at_ms, retention=timedelta(seconds=5))
    )
    with TestDriver(app, data_dir=tmp_path) as driver:
        events = [(s, T0 + i * 400, 1) for i in range(3_000) for s in "ab"]
        send(driver, topic, events)
        driver.run()
        (store,) = view.stores.values()
        keys = [key for key, _ in store.rows()]
        windows = sum(1 for key in keys if is_window_row(key))
        kept = len(view.windows("a")) + len(view.windows("b"))
        assert 50 <= kept <= windows <= kept + 4 * 50  # one checkpoint's expired, at most
        assert len(keys) <= 2 * windows + 2  # their latest-time rows go with them
        last = T0 + 2_999 * 400
        assert [w[0] for w in view.windows("a")] == sorted(
            t - 1_000 if left else t + 1
            for t in range(T0, last + 1, 400)
            for left in (True, False)
            if t + (1 if left else 1_002) > last - 5_000 and (left or t < last)
        )
        rows = dict(store.rows())
        windows_a = view.windows("a")
    # the stores gone: restored from the changelog alone, with no window retention deleted
    shutil.rmtree(tmp_path / "views")
    with TestDriver(app, data_dir=tmp_path) as driver:
        driver.run()
        (store,) = view.stores.values()
        assert dict(store.rows()) == rows
        assert view.windows("a") == windows_a


# -- on a worker, both brokers -------------------------------------------------------------

PARTITIONS = 2  # tests/apps/sliding.py
SENSORS = "abcdefg"


def partition_of(sensor: str) -> int:
    return partition_for_key(sensor.encode(), PARTITIONS)


def records(events: list[tuple[str, int, int]]) -> list[NewRecord]:
    return [
        NewRecord(
            sensor.encode(),
            orjson.dumps(
                {
                    "eventId": f"e-{i}",
                    "eventType": "Reading",
                    "eventVersion": 1,
                    "timestamp": "2026-01-01T00:00:00Z",
                    "data": {"sensor": sensor, "atMs": ms, "amount": amount, "rid": f"r{i}"},
                }
            ),
            0,
        )
        for i, (sensor, ms, amount) in enumerate(events)
    ]


STATE = "/state?sensors=" + ",".join(SENSORS)


def as_json(want: dict[str, list[tuple[int, int, dict]]]) -> dict[str, list[list[Any]]]:
    return {s: [list(w) for w in want.get(s, [])] for s in SENSORS}


def finals(broker: Broker, name: str) -> list[list[Any]]:
    return sorted(broker.final_windows(f"{name}-final"), key=repr)


@pytest.fixture
def sliding_app(broker: Broker, workers: Callable[..., Worker], unique_name: str) -> Worker:
    broker.create_topic(f"{unique_name}-readings", PARTITIONS)
    broker.create_topic(f"{unique_name}-final", PARTITIONS)
    return workers("tests.apps.sliding:app", {"SLIDING_NAME": unique_name})


def expected(n: int, seed: int) -> tuple[list[tuple[str, int, int]], dict, list[list[Any]], int]:
    """A stream (ending with a reading per sensor a minute after the rest, which closes
    every window before it), its windows, the closed ones, and how many windows in all."""
    events = readings(n, seed=seed, sensors=SENSORS, partition_of=partition_of)
    end = max(ms for _, ms, _ in events) + 60_000
    events += [(s, end, 1) for s in SENSORS]
    want, late, clock = brute_force(events, partition_of, 3 * 3_600_000)
    assert late > 0
    closed = sorted(
        (
            [sensor, start, end, value]
            for sensor, windows in want.items()
            for start, end, value in windows
            if end + GRACE <= clock[partition_of(sensor)]
        ),
        key=repr,
    )
    return events, as_json(want), closed, sum(len(w) for w in want.values())


def test_a_worker_folds_sliding_windows_and_a_restore_and_a_rebuild_give_them_again(
    broker: Broker, sliding_app: Worker, unique_name: str
) -> None:
    events, want, closed, stored = expected(500, seed=5)
    broker.produce(f"{unique_name}-readings", records(events))
    worker = sliding_app.start()

    def settled(state: dict) -> bool:
        return state["ready"] and state["stored"] == stored

    state = worker.wait_until(STATE, settled, timeout=120, what="every reading folded")
    assert state["windows"] == want
    over_http = worker.get("/views/sliding/windows/a")
    assert over_http is not None
    assert [w["value"] for w in over_http["windows"]] == [w[2] for w in want["a"]]
    at = max((w[0] for w in want["a"]), key=lambda t: sum(s <= t < e for s, e, _ in want["a"]))
    holding = worker.get(f"/views/sliding/windows/a?at={at}")  # where most windows overlap
    assert holding is not None and len(holding["windows"]) > 1
    assert [w["value"] for w in holding["windows"]] == [v for s, e, v in want["a"] if s <= at < e]
    first = want["a"][0][0]
    page = worker.get(f"/views/sliding/windows?start={first}")  # one window of every key
    assert page is not None
    assert [(r["key"], r["value"]) for r in page["rows"]] == [
        (sensor, w[2]) for sensor in SENSORS for w in want.get(sensor, []) if w[0] == first
    ]
    catalog = worker.get("/views")
    assert catalog is not None
    assert {v["name"]: v["window"] for v in catalog["views"]}["sliding"] == "sliding 10s"

    # A restore from the changelog alone gives the same windows, and sends none again.
    assert worker.stop() == 0
    assert finals(broker, unique_name) == closed  # each closed window, once
    shutil.rmtree(worker.data_dir / "views")
    worker.start()
    restored = worker.wait_until(STATE, settled, timeout=120, what="restored")
    assert restored["windows"] == want

    # A rebuild replays the topic into a new generation: the same windows.
    result = run_cli(
        "rebuild", "tests.apps.sliding:app", "sliding", "--url", worker.url,
        env={"SLIDING_NAME": unique_name}, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rebuilt = worker.wait_until(
        STATE, lambda s: settled(s) and s["generation"] == 2, timeout=120, what="rebuilt"
    )
    assert rebuilt["windows"] == want
    assert worker.stop() == 0
    assert finals(broker, unique_name) == closed  # none sent again


def test_kill_9_mid_stream_gives_the_exact_sliding_windows(
    broker: Broker, workers: Callable[..., Worker], unique_name: str
) -> None:
    broker.create_topic(f"{unique_name}-readings", PARTITIONS)
    broker.create_topic(f"{unique_name}-final", PARTITIONS)
    worker = workers(
        "tests.apps.sliding:app", {"SLIDING_NAME": unique_name, "SLIDING_DELAY": "0.002"}
    )
    events, want, closed, stored = expected(800, seed=6)
    broker.produce(f"{unique_name}-readings", records(events))
    worker.start()
    last = max(ms for _, ms, _ in events)
    progress = worker.wait_until(
        STATE,
        lambda s: s["ready"] and s["streamTime"] > T0 + (last - T0) // 5,
        timeout=120,
        what="some progress",
    )
    assert progress["streamTime"] < last  # killed mid-stream
    worker.kill()
    worker.start()
    state = worker.wait_until(
        STATE, lambda s: s["ready"] and s["stored"] == stored, timeout=120, what="every reading"
    )
    assert state["windows"] == want
    assert worker.stop() == 0
    assert finals(broker, unique_name) == closed  # each closed window, once
