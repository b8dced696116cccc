"""Windows of a view: which windows an event falls in, by its event time, and how long
each is kept.

A windowed view's row is a (key, window) pair, stored under
:func:`belvedere.tables.window_keys.window_key`. Beside its rows each partition keeps its
*stream time* (the largest event time it has applied) and how many late events it counted,
as two bookkeeping rows (:data:`STREAM_TIME`, :data:`LATE_COUNT`: store keys shorter than
any windowed row's, so :func:`is_window_row` tells them apart). They are written with the
checkpoint and its changelog, so a restart, a restore and a rebuild see the same clock. A
sliding window whose latest event is not at its end keeps that time in one more row, right
after the window's (:func:`max_time_key`).

Grace and retention are measured against stream time, never the wall clock: replaying the
same events gives the same windows, the same late events and the same expiries.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from belvedere.streams.envelope import BadEvent
from belvedere.streams.topics import DeadLetteringTopic, EventTopic
from belvedere.tables.window_keys import SEPARATOR, window_key
from belvedere.tables.window_reads import key_windows

__all__ = [
    "BOOKKEEPING",
    "LATE_COUNT",
    "STREAM_TIME",
    "Hopping",
    "LateEvent",
    "Session",
    "SessionView",
    "Sliding",
    "SlidingView",
    "Tumbling",
    "Window",
    "WindowView",
    "is_max_time_row",
    "is_window_row",
    "max_time_key",
    "window_store_key",
]

#: Store keys of a windowed partition's bookkeeping rows (0xFE: never in a UTF-8 key).
STREAM_TIME = b"\xfestream-time"
LATE_COUNT = b"\xfelate-count"
BOOKKEEPING = (STREAM_TIME, LATE_COUNT)
_ON_LATE = ("dead-letter", "count")


class LateEvent(BadEvent):
    """An event whose windows all closed: a dead letter of kind ``late``, never a reason
    for a ``strict`` worker to stop (late input is the input's, not the code's)."""

    def __init__(self, reason: str) -> None:
        super().__init__("late", reason)


def when(ms: int) -> str:
    """An instant in ms, as ISO-8601 in UTC (what a late event's reason says)."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def is_window_row(store_key: bytes) -> bool:
    """True for a windowed row's store key, False for a partition's bookkeeping row."""
    return len(store_key) >= 17 and store_key[-17:-16] == SEPARATOR


def max_time_key(key: bytes, start: int, end: int) -> bytes:
    """The store key of a sliding window's bookkeeping row: the latest event time it holds
    (what Kafka Streams keeps with each sliding window to know which windows to make). It
    sorts right after its window's row, under the key's prefix, and is never read as one."""
    return window_key(key, start, end) + b"\0"


def is_max_time_row(store_key: bytes) -> bool:
    """True for the store key of a sliding window's latest-event-time row."""
    return (
        store_key[-1:] == b"\0" and store_key[-18:-17] == SEPARATOR and not is_window_row(store_key)
    )


def encode_ms(ms: int) -> bytes:
    """A bookkeeping row's value: JSON, like every row (what reads the changelog parses)."""
    return orjson.dumps(ms)


def decode_ms(data: bytes | None) -> int | None:
    return None if data is None else int(orjson.loads(data))


def window_store_key(view: Any, row: tuple[Any, int, int]) -> bytes:
    """The store key of a transaction's windowed row key ``(key, start, end)``."""
    key, start, end = row
    return window_key(view.store_key(key), start, end)


def _ms(what: str, value: timedelta | float | None, **units: float | None) -> int | None:
    given = [(name, v) for name, v in units.items() if v is not None]
    if value is not None and given:
        raise ValueError(f"window: give {what} as a timedelta or as keywords, not both")
    if value is None and not given:
        return None
    if isinstance(value, timedelta):
        ms = value / timedelta(milliseconds=1)
    elif value is not None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"window: {what} must be a timedelta or seconds, not {value!r}")
        ms = value * 1000.0
    else:
        scale = {"seconds": 1000, "minutes": 60_000, "hours": 3_600_000, "days": 86_400_000}
        ms = sum(scale[name] * float(v) for name, v in given)  # type: ignore[arg-type]
    if ms != int(ms):
        raise ValueError(f"window: {what} must be a whole number of milliseconds, not {ms} ms")
    return int(ms)


def _positive(kind: str, what: str, value: Any, **units: float | None) -> int:
    ms = _ms(what, value, **units)
    if ms is None or ms <= 0:
        raise ValueError(f"{kind}: the {what} must be positive, not {ms} ms")
    return ms


def duration(ms: int) -> str:
    """``ms`` in its largest whole unit: ``1m``, ``90s``, ``1500ms``."""
    for unit, length in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms >= length and ms % length == 0:
            return f"{ms // length}{unit}"
    return f"{ms}ms"


class Window:
    """What every window kind shares: event time, grace, retention, what late events do.

    ``time`` is where an event's time comes from: None for the envelope's timestamp
    (``event.meta.timestamp``), a field name, or a function of the event; either gives
    seconds since the epoch as a number or a ``datetime``.
    """

    #: The size of each window, ms (a session's gap: its shortest).
    size_ms: int
    #: How far apart windows start, ms (the size for tumbling windows).
    step_ms: int
    #: Whether windows are made by the events' gaps, not the clock (sessions).
    sessions = False

    @property
    def longest_ms(self) -> int | None:
        """No window is longer (ms), so a read seeks past those starting that long before
        its range; None for sessions, which grow past their gap."""
        return None if self.sessions else self.size_ms

    def __init__(
        self,
        *,
        grace: timedelta | float = 0,
        retention: timedelta | float | None = None,
        time: str | Callable[[Any], Any] | None = None,
        on_late: str = "dead-letter",
        final_to: Any = None,
    ) -> None:
        self.grace_ms = _ms("grace", grace) or 0
        if self.grace_ms < 0:
            raise ValueError(f"window: grace must not be negative, not {grace!r}")
        retention_ms = _ms("retention", retention)
        shortest = (self.longest_ms or self.size_ms) + self.grace_ms
        if retention_ms is None:
            retention_ms = shortest
        if retention_ms < shortest:
            raise ValueError(
                f"window: retention ({retention_ms} ms) must be at least the size plus the grace "
                f"({shortest} ms): a window would be deleted while it still "
                "takes events"
            )
        self.retention_ms = retention_ms
        if on_late not in _ON_LATE:
            raise ValueError(f"window: on_late must be one of {_ON_LATE}, not {on_late!r}")
        self.on_late = on_late
        if time is not None and not (isinstance(time, str) or callable(time)):
            raise TypeError(f"window: time must be a field name or a function, not {time!r}")
        self.time = time
        if final_to is not None and (
            not isinstance(final_to, DeadLetteringTopic) or isinstance(final_to, EventTopic)
        ):
            raise TypeError(
                f"window: final_to must be a plain topic (app.topic(...)), not {final_to!r}: "
                "each closed window is sent there as JSON {key, start, end, value}"
            )
        #: Where each window's final value is sent once it closes (None: nowhere).
        self.final_to = final_to

    def event_ms(self, event: Any) -> int:
        """The event's time, ms since the epoch."""
        time = self.time
        if time is None:
            value = event.meta.timestamp
        elif isinstance(time, str):
            value = getattr(event, time)
        else:
            value = time(event)
        if hasattr(value, "timestamp"):  # a datetime
            value = value.timestamp()
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"event time must be seconds (a number) or a datetime, not {value!r}")
        return round(value * 1000)

    def windows_of(self, ms: int) -> list[tuple[int, int]]:
        """The windows ``[start, end)`` an instant falls in, oldest first."""
        size, step = self.size_ms, self.step_ms
        last = ms - ms % step
        return [
            (start, start + size)
            for start in range(last - size + step, last + 1, step)
            if start <= ms < start + size
        ]

    def describe(self) -> str:
        """How the status page and ``GET /views`` name it: ``tumbling 1m``,
        ``hopping 10m every 1m``, ``sliding 10s``."""
        said = f"{type(self).__name__.lower()} {duration(self.size_ms)}"
        return said if self.step_ms == self.size_ms else f"{said} every {duration(self.step_ms)}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size_ms={self.size_ms}, step_ms={self.step_ms}, "
            f"grace_ms={self.grace_ms}, retention_ms={self.retention_ms})"
        )


class _Sized(Window):
    """A kind whose only shape is its ``size``."""

    def __init__(
        self,
        size: timedelta | float | None = None,
        *,
        seconds: float | None = None,
        minutes: float | None = None,
        hours: float | None = None,
        **options: Any,
    ) -> None:
        kind = type(self).__name__
        size_ms = _positive(kind, "size", size, seconds=seconds, minutes=minutes, hours=hours)
        self.size_ms = self.step_ms = size_ms
        super().__init__(**options)


class Tumbling(_Sized):
    """Windows of one ``size``, end to end: each event falls in exactly one."""

    def windows_of(self, ms: int) -> list[tuple[int, int]]:
        start = ms - ms % self.size_ms  # the general case's loop, for one window
        return [(start, start + self.size_ms)]


class Hopping(Window):
    """Windows of one ``size`` starting every ``step``: an event falls in ``size / step``
    of them (the handler runs once per window)."""

    def __init__(
        self,
        size: timedelta | float | None = None,
        step: timedelta | float | None = None,
        *,
        seconds: float | None = None,
        minutes: float | None = None,
        hours: float | None = None,
        **options: Any,
    ) -> None:
        size_ms = _positive("Hopping", "size", size, seconds=seconds, minutes=minutes, hours=hours)
        step_ms = _positive("Hopping", "step", step)
        if step_ms > size_ms:
            raise ValueError(
                f"Hopping: the step ({step_ms} ms) is larger than the size ({size_ms} ms): "
                "events between windows would fall in none"
            )
        if size_ms % step_ms:
            raise ValueError(
                f"Hopping: the size ({size_ms} ms) must be a multiple of the step ({step_ms} ms)"
            )
        self.size_ms, self.step_ms = size_ms, step_ms
        super().__init__(**options)


class Sliding(_Sized):
    """Windows made per key by its events, as Kafka Streams' ``SlidingWindows``
    (``ofTimeDifferenceAndGrace``): an event at ``t`` has its window ``[t - size, t]``
    (both ends in), and ``[t + 1, t + 1 + size]`` exists when an event of the key falls in
    it. A window's value is the fold of its key's events within it, so the handler is a
    fold step on one window of the event's key. Stored half-open like every window:
    ``[start, start + size + 1)``."""

    @property
    def longest_ms(self) -> int:
        """Both ends are in a window: it lasts one millisecond more than ``size``."""
        return self.size_ms + 1

    def windows_of(self, ms: int) -> list[tuple[int, int]]:
        """The window an event makes ending at it (which others it updates depends on the
        key's events)."""
        return [(ms - self.size_ms, ms + 1)]


class WindowView:
    """A windowed view as one event's handler sees it, bound to one window: ``get``, ``[]``,
    ``in`` and ``del`` read and write the rows of that window only."""

    __slots__ = ("_txn", "end", "start")

    def __init__(self, txn: Any, start: int, end: int) -> None:
        self._txn = txn
        #: The window, ``[start, end)``, ms since the epoch.
        self.start = start
        self.end = end

    def get(self, key: Any, default: Any = None) -> Any:
        return self._txn.get((key, self.start, self.end), default)

    def __getitem__(self, key: Any) -> Any:
        return self._txn[(key, self.start, self.end)]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._txn[(key, self.start, self.end)] = value

    def __delitem__(self, key: Any) -> None:
        del self._txn[(key, self.start, self.end)]

    def __contains__(self, key: Any) -> bool:
        return (key, self.start, self.end) in self._txn

    def __repr__(self) -> str:
        return f"WindowView(start={self.start}, end={self.end})"


class SlidingView(WindowView):
    """A sliding window as one event's handler sees it: bound to the window and to the
    event's key, the only key it reads or writes (the key's events define its windows)."""

    __slots__ = ("key",)

    def __init__(self, txn: Any, key: Any, start: int, end: int) -> None:
        super().__init__(txn, start, end)
        #: The event's key: the projection's view key of the event.
        self.key = key

    def _row(self, key: Any) -> tuple[Any, int, int]:
        if key != self.key:
            raise ValueError(
                f"a sliding window is bound to its event's key {self.key!r}, not {key!r}: "
                "its windows are made by that key's events (key the source, or by=, by it)"
            )
        return (key, self.start, self.end)

    def get(self, key: Any, default: Any = None) -> Any:
        return self._txn.get(self._row(key), default)

    def __getitem__(self, key: Any) -> Any:
        return self._txn[self._row(key)]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._txn[self._row(key)] = value

    def __delitem__(self, key: Any) -> None:
        del self._txn[self._row(key)]

    def __contains__(self, key: Any) -> bool:
        return self._row(key) in self._txn

    def __repr__(self) -> str:
        return f"SlidingView(key={self.key!r}, start={self.start}, end={self.end})"


def retention_horizon(window: Window, store: Any) -> int | None:
    """Windows ending at or before this (ms) are past retention in ``store``'s partition:
    every read (local or HTTP) hides them until a checkpoint deletes them (None: no event
    yet)."""
    clock = decode_ms(store.get(STREAM_TIME))
    return None if clock is None else clock - window.retention_ms


class Session(Window):
    """A window per key per burst of activity: an event within ``gap`` of a key's session
    joins it (the session is ``[first event, last event + gap)``), and an event that bridges
    two sessions merges them into one, their values combined by ``merge(a, b) -> value``
    (earlier session first) before the handler sees it."""

    sessions = True

    def __init__(
        self,
        gap: timedelta | float | None = None,
        *,
        merge: Callable[[Any, Any], Any] | None = None,
        seconds: float | None = None,
        minutes: float | None = None,
        hours: float | None = None,
        **options: Any,
    ) -> None:
        gap_ms = _positive("Session", "gap", gap, seconds=seconds, minutes=minutes, hours=hours)
        if not callable(merge):
            raise TypeError(
                "Session: give merge=fn(a, b) -> value: it combines two sessions' values "
                "when an event bridges them"
            )
        self.merge = merge
        self.size_ms = self.step_ms = gap_ms
        super().__init__(**options)

    def describe(self) -> str:
        return f"session, gap {duration(self.size_ms)}"

    def windows_of(self, ms: int) -> list[tuple[int, int]]:
        """The session an event alone would make (sessions are found per key)."""
        return [(ms, ms + self.size_ms)]


class SessionView:
    """A session-windowed view as one event's handler sees it: ``view[key]`` is ``key``'s
    session that the event joins (the sessions it bridges merged); writing it writes that
    session, the merged ones deleted."""

    __slots__ = ("_at", "_clock", "_pending", "_store", "_txn", "_view", "_window")

    def __init__(
        self,
        txn: Any,
        view: Any,
        store: Any,
        at: int,
        clock: int,
        pending: dict[Any, set[tuple[int, int]]],
    ) -> None:
        self._txn = txn
        self._view = view
        self._store = store
        self._window: Session = view.window
        self._at = at
        self._clock = clock
        #: Sessions this checkpoint wrote per key (not in the store yet).
        self._pending = pending

    def _session(self, key: Any) -> tuple[int, int, list[tuple[int, int]]]:
        """The session the event makes of ``key``'s sessions, and those it joins;
        LateEvent if neither the event's own gap nor any session it joins still takes
        events (stream time before its end plus the grace)."""
        at, gap, txn = self._at, self._window.size_ms, self._txn
        key_bytes = self._view.store_key(self._view.check_key(key))
        horizon = retention_horizon(self._window, self._store)
        found = key_windows(self._store, key_bytes, end=at + gap + 1, horizon=horizon)
        candidates = {(row.start, row.end) for row in found}
        candidates.update(self._pending.get(key, ()))
        joined = sorted(
            (start, end)
            for start, end in candidates
            if start - gap <= at < end and (key, start, end) in txn
        )
        start = min([at, *(s for s, _ in joined)])
        end = max([at + gap, *(e for _, e in joined)])
        grace, clock = self._window.grace_ms, self._clock
        if at + gap + grace <= clock and all(e + grace <= clock for _, e in joined):
            raise LateEvent(
                f"event time {when(at)} of key {key!r} of view {self._view.name!r} joins no "
                f"session still open: the partition's stream time is {when(clock)}, past "
                f"the end plus the grace of {grace} ms"
            )
        return start, end, joined

    def get(self, key: Any, default: Any = None) -> Any:
        _, _, joined = self._session(key)
        if not joined:
            return default
        values = [self._txn[(key, start, end)] for start, end in joined]
        merged = values[0]
        for value in values[1:]:
            merged = self._window.merge(merged, value)
        return merged

    def __getitem__(self, key: Any) -> Any:
        missing = object()
        value = self.get(key, missing)
        if value is missing:
            raise KeyError(key)
        return value

    def __contains__(self, key: Any) -> bool:
        return bool(self._session(key)[2])

    def __setitem__(self, key: Any, value: Any) -> None:
        start, end, joined = self._session(key)
        for old in joined:
            if old != (start, end):
                del self._txn[(key, *old)]
        self._txn[(key, start, end)] = value
        self._pending.setdefault(key, set()).add((start, end))

    def __delitem__(self, key: Any) -> None:
        _, _, joined = self._session(key)
        if not joined:
            raise KeyError(key)
        for old in joined:
            del self._txn[(key, *old)]
