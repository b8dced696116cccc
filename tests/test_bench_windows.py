"""The window benchmarks' inputs and their own counts (bench/window_*.py), without a broker."""

from __future__ import annotations

from collections import Counter

import belvedere
from belvedere.streams.envelope import EnvelopeCodec
from bench import window_state, window_throughput


class PageViewed(belvedere.Event, key="url"):
    url: str


def window_of(event: PageViewed) -> str:
    ms = round(event.meta.timestamp.timestamp() * 1000)
    return f"{event.url}|{ms - ms % 60_000}"


def test_the_state_bench_events_decode_and_its_counts_are_the_last_windows() -> None:
    truth: Counter[str] = Counter()
    messages = list(window_state.events(5000, 1, 7, truth))
    codec = EnvelopeCodec([PageViewed])
    events = [codec.decode(value) for _, value in messages]
    assert [key for key, _ in messages] == [e.url.encode() for e in events]
    times = [e.meta.timestamp for e in events]
    assert times == sorted(times) and (times[-1] - times[0]).total_seconds() > 23 * 3600
    last = Counter(window_of(e) for e in events)
    since = int(max(times).timestamp() * 1000) - window_state.CHECKED_MS
    assert truth and all(int(k.split("|")[1]) >= since - 2 * 60_000 for k in truth)
    assert {k: v for k, v in last.items() if int(k.split("|")[1]) >= since} == {
        k: v for k, v in truth.items() if int(k.split("|")[1]) >= since
    }


def test_the_throughput_bench_counts_every_window() -> None:
    messages, truth = window_throughput.make_events(3000, 50)
    codec = EnvelopeCodec([PageViewed])
    assert Counter(window_of(codec.decode(value)) for _, value in messages) == truth
    assert sum(truth.values()) == 3000


def test_per_day_takes_the_first_sample_past_each_day() -> None:
    start = int(window_state.START.timestamp() * 1000)
    samples = [
        {"stream_time": start + h * 3_600_000, "processed": h, "rss_mb": 100.0 + h}
        for h in range(0, 72, 5)
    ]
    rows = window_state.per_day(samples, 3)
    assert [(r["at"], r["processed"]) for r in rows] == [("day 1", 25), ("day 2", 50)]
    assert window_state.growth(rows, "rss_mb") == {
        "day_1": 125.0, "last_day": 150.0, "min": 125.0, "max": 150.0, "change_pct": 20.0,
    }  # fmt: skip
