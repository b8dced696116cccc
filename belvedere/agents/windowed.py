"""The projection of a windowed view: each event's handler runs once per window the event
falls in, and checkpoints delete the windows past retention.

Per event: its time (:meth:`Window.event_ms`) moves the partition's stream time forward;
the windows it falls in that still take events (stream time < end + grace) each get one call
of the handler, with the view bound to that window (:class:`WindowView`). An event whose
windows have all closed is late: a dead letter of kind ``late`` naming the windows and the
stream time, or one more on the partition's late count (``on_late="count"``).

Sliding windows are made by their key's events, so the event's key is found first (its
record's key) and the windows of that key near the event are read to choose which to update,
make and seed (Kafka Streams' algorithm); a right window keeps its latest event time in a
bookkeeping row beside it (:func:`belvedere.tables.windows.max_time_key`).

Retention: before each checkpoint, :data:`SWEEP_ROWS` rows of the partition and twice as
many as the checkpoint writes are looked at, from where the last sweep stopped (round the end to the first row), and the windows that ended at or before
stream time - retention are deleted in the checkpoint's transaction (and so are those the
checkpoint's own events wrote and its later events expired), so the changelog gets
their tombstones with the checkpoint and a restore brings none back (a sliding window's
latest-event-time row with it). Reads hide an expired
window the sweep has not reached yet, so what a read sees never depends on checkpoint timing.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

import orjson

from belvedere.agents.projection import Handler, PartitionState, Projection
from belvedere.streams.envelope import BadEvent
from belvedere.streams.records import Event
from belvedere.tables.window_keys import parse_window_key
from belvedere.tables.window_reads import key_windows
from belvedere.tables.windows import (
    LATE_COUNT,
    STREAM_TIME,
    LateEvent,
    SessionView,
    Sliding,
    SlidingView,
    Window,
    WindowView,
    decode_ms,
    encode_ms,
    is_max_time_row,
    is_window_row,
    max_time_key,
    when,
)

__all__ = ["SWEEP_ROWS", "WindowedProjection"]

#: Rows a checkpoint looks at for expired windows, besides twice the rows it writes:
#: bounded work per checkpoint.
SWEEP_ROWS = 2000


@dataclass(eq=False)
class WindowedProjection(Projection):
    """Folds ``source`` into the windowed view ``view`` (``view.window`` is set)."""

    def __post_init__(self) -> None:
        #: Where each partition's retention sweep goes on from (its store key).
        self._sweeps: WeakKeyDictionary[PartitionState, bytes] = WeakKeyDictionary()
        #: Windows each partition's open checkpoint wrote, per key (session and sliding
        #: windows, which are found per key: the store does not hold these yet).
        self._sessions: WeakKeyDictionary[Any, dict[Any, set[tuple[int, int]]]] = (
            WeakKeyDictionary()
        )
        #: With ``final_to``: each partition's windows not closed yet, by when they close.
        self._open: WeakKeyDictionary[PartitionState, list[tuple[int, Any, int, int]]] = (
            WeakKeyDictionary()
        )
        if self.view.window.final_to is not None:
            self.buffers_sends = True  # type: ignore[misc]

    @property
    def window(self) -> Window:
        window: Window = self.view.window
        return window

    def add(self, fn: Callable[..., Any], events: Iterable[type[Event]] | None = None) -> None:
        before = set(self.handlers)
        super().add(fn, events)
        for cls in set(self.handlers) - before:
            handler = self.handlers[cls]
            self.handlers[cls] = Handler(
                self._per_window(handler.fn, handler.is_async), handler.is_async, handler.name
            )

    def open_windows(self, txn: Any, event: Any) -> list[Any]:
        """The windows ``event`` goes in, stream time moved forward by it; [] for a late
        event counted; BadEvent ``late`` for one to dead-letter."""
        window = self.window
        ms = window.event_ms(event)
        clock = decode_ms(txn.get_raw(STREAM_TIME))
        if clock is None or ms > clock:
            txn.put_raw(STREAM_TIME, encode_ms(ms))
            clock = ms
        if window.sessions:  # late or not depends on the key's sessions: SessionView says
            pending = self._sessions.setdefault(txn, {})
            return [SessionView(txn, self.view, txn.store, ms, clock, pending)]
        if isinstance(window, Sliding):
            return self._slide(txn, event, ms, clock)
        falls_in = window.windows_of(ms)
        taking = [(start, end) for start, end in falls_in if clock < end + window.grace_ms]
        if taking:
            return [WindowView(txn, start, end) for start, end in taking]
        if window.on_late == "count":
            self.count_late(txn)
            return []
        spans = ", ".join(f"[{when(start)}, {when(end)})" for start, end in falls_in)
        raise LateEvent(
            f"event time {when(ms)} falls in window {spans} of view {self.view.name!r}, "
            f"closed: the partition's stream time is {when(clock)}, past the window's end "
            f"plus the grace of {window.grace_ms} ms",
        )

    def _key_of(self, txn: Any, event: Any) -> Any:
        """The event's view key as the projection routed it: its record's key (the source
        topic's, or the one ``by=`` re-keyed it by); for a record without one, ``by`` or
        the event's key field."""
        view = self.view
        wire = getattr(txn.record, "key", None)
        try:
            if wire is not None:
                return view.check_key(view.parse_key(wire.decode()))
            if self.by is not None:
                return view.check_key(self.by(event))
            name = type(event).event_key or self.source.key_field
            if name is None:
                raise ValueError("the record has no key, and the event no key field")
            return view.check_key(getattr(event, name))
        except (ValueError, TypeError) as exc:  # UnicodeDecodeError too
            raise BadEvent(
                "bad-view-key",
                f"view {view.name!r}: a sliding window needs the event's key first: {exc}",
            ) from None

    def _slide(self, txn: Any, event: Any, ms: int, clock: int) -> list[Any]:
        """The sliding windows of the event's key that its handler runs on, made and
        seeded as Kafka Streams' ``KStreamSlidingWindowAggregate`` does (its reverse scan):
        the windows holding ``ms`` are updated; the event's own window ``[ms - size, ms]``
        is made if missing, seeded with the window that holds its other events; the window
        right after it is made (a copy of the one holding its later events) if one of the
        key's events is in it; and so is the previous event's right window if this event
        is in it. Which windows those are is found from each window's latest event time
        (its end, or what its bookkeeping row says)."""
        window, view = self.window, self.view
        size, grace = window.size_ms, window.grace_ms
        length = size + 1
        key = self._key_of(txn, event)
        if ms + length + grace <= clock:
            return self._late_slide(txn, key, ms, clock)
        key_bytes = view.store_key(key)
        close = clock - grace  # a window ending (inclusive) before this is closed
        horizon = clock - window.retention_ms
        lowest, highest = ms - 2 * size, ms + 1
        written = self._sessions.setdefault(txn, {}).setdefault(key, set())
        # the windows starting in [lowest, highest]: ending after lowest + size, and starting
        # before highest + 1
        found = key_windows(txn.store, key_bytes, lowest + size, highest + 1, longest=length)
        candidates = {row.start for row in found} | {start for start, _ in written}
        starts = sorted(
            (
                start
                for start in candidates
                if lowest <= start <= highest
                and start + length > horizon
                and (key, start, start + length) in txn
            ),
            reverse=True,
        )

        def latest(start: int) -> int:
            held = decode_ms(txn.get_raw(max_time_key(key_bytes, start, start + length)))
            return start + size if held is None else held

        def keep_latest(start: int, held: int) -> None:
            """Only a window whose latest event is not at its end keeps a row saying so
            (a right window): a left window ends at its latest event."""
            data = None if held == start + size else encode_ms(held)
            self._put_raw(txn, max_time_key(key_bytes, start, start + length), data)

        updates: dict[int, tuple[int, int | None]] = {}  # start: (latest event, seed)
        right: int | None = None
        left: int | None = None
        previous: int | None = None
        right_latest = ms
        left_made = right_made = complete = copied = False
        for start in starts:
            end = start + size  # inclusive
            if start == ms + 1:
                right_made = True
            elif end > ms:
                held = latest(start)
                if right is None:
                    right, right_latest = start, held
                updates[start] = (max(held, ms), None)
            elif end == ms:
                left_made = True
                held = latest(start)
                updates[start] = (ms, None)
                if held < ms:
                    previous = held
                else:  # an event at ms made every window this one would
                    complete = True
                    break
            else:
                left, previous = start, latest(start)
                break
        if not complete:
            if previous is not None and previous + 1 not in starts and previous + 1 + size >= ms:
                updates[previous + 1] = (ms, None)
            if not left_made:
                seed = left if previous is not None and ms - size <= previous else None
                updates[ms - size] = (ms, seed)  # replaces the previous one's right window if both
            # the window holding ms that holds later events too: the next window's value
            if not right_made and right is not None and right_latest > ms:
                copied = True
                self._copy(txn, key, right, ms + 1, length)
                keep_latest(ms + 1, right_latest)
                written.add((ms + 1, ms + 1 + length))
        bound = []
        for start, (held, seed) in sorted(updates.items()):
            if start + size < close:
                continue
            if seed is not None:
                self._copy(txn, key, seed, start, length)
            keep_latest(start, held)
            written.add((start, start + length))
            bound.append(SlidingView(txn, key, start, start + length))
        if not bound and not copied:
            return self._late_slide(txn, key, ms, clock)  # every window it is in closed
        return bound

    def _late_slide(self, txn: Any, key: Any, ms: int, clock: int) -> list[Any]:
        window = self.window
        if window.on_late == "count":
            self.count_late(txn)
            return []
        raise LateEvent(
            f"event time {when(ms)} of key {key!r} falls in sliding windows of view "
            f"{self.view.name!r} ending by {when(ms + window.size_ms)}, closed: the "
            f"partition's stream time is {when(clock)}, past their end plus the grace of "
            f"{window.grace_ms} ms"
        )

    def _copy(self, txn: Any, key: Any, source: int, target: int, length: int) -> None:
        """Seed window ``target`` with a copy of window ``source``'s value (decoded again:
        the handler may change it in place)."""
        value = txn.get((key, source, source + length))
        if value is not None:
            view = self.view
            txn[(key, target, target + length)] = view.decode_value(view.encode_value(value))

    @staticmethod
    def _put_raw(txn: Any, store_key: bytes, data: bytes | None) -> None:
        """A bookkeeping row written for the event: undone if the event rolls back."""
        before = txn.get_raw(store_key)
        if before == data:
            return
        txn.put_raw(store_key, data)
        txn.on_rollback(lambda _reason: txn.put_raw(store_key, before))

    @staticmethod
    def count_late(txn: Any) -> None:
        txn.put_raw(LATE_COUNT, encode_ms((decode_ms(txn.get_raw(LATE_COUNT)) or 0) + 1))

    def _per_window(self, fn: Callable[[Any, Any], Any], is_async: bool) -> Callable[..., Any]:
        open_windows = self.open_windows
        counts_late = self.window.on_late == "count"
        if is_async:

            async def each_window_async(txn: Any, event: Any) -> None:
                try:
                    for bound in open_windows(txn, event):
                        result = fn(bound, event)
                        if inspect.isawaitable(result):
                            await result
                except LateEvent:  # a session's: found once the handler names its key
                    if counts_late:
                        self.count_late(txn)
                        return
                    raise

            return each_window_async

        def each_window(txn: Any, event: Any) -> None:
            try:
                for bound in open_windows(txn, event):
                    fn(bound, event)
            except LateEvent:
                if counts_late:
                    self.count_late(txn)
                    return
                raise

        return each_window

    def _send_closed(self, part: PartitionState, clock: int) -> None:
        """Send each window that closed by ``clock`` to ``final_to``, through the
        partition's outbox: written with the checkpoint that stores ``clock``, so each
        window is sent once. The windows still open are found in the store the first
        time (after a restart: those that had not closed by the stored stream time)."""
        window, txn, view = self.window, part.txn, self.view
        grace, final_to = window.grace_ms, window.final_to
        assert final_to is not None
        pending = self._open.get(part)
        if pending is None:
            sent_by = decode_ms(part.store.get(STREAM_TIME))  # the last checkpoint's clock
            pending = []
            for store_key, _ in part.store.rows():
                if is_window_row(store_key):
                    key, start, end = parse_window_key(store_key)
                    if sent_by is None or end + grace > sent_by:
                        pending.append((end + grace, view.key_from_store(key), start, end))
            self._open[part] = pending
        known = {(key, start, end) for _, key, start, end in pending}
        pending.extend((row[2] + grace, *row) for row, _ in txn.items() if row not in known)
        pending.sort(key=lambda item: item[0])
        closed = 0
        for closes, key, start, end in pending:
            if closes > clock:
                break
            closed += 1
            value = txn.get((key, start, end))
            if value is None:
                continue  # merged into a later session, or deleted by the handler
            body = {
                "key": key,
                "start": start,
                "end": end,
                "value": orjson.Fragment(view.encode_value(value)),
            }
            data = orjson.dumps(body)
            final_to.buffered(part.outbox, view.wire_key(key), data, None, [])
        del pending[:closed]

    def after_checkpoint(self, part: PartitionState) -> None:
        self._sessions.pop(part.txn, None)

    async def before_checkpoint(self, part: PartitionState) -> None:
        txn = part.txn
        clock = decode_ms(txn.get_raw(STREAM_TIME))
        if clock is None:
            return
        if self.window.final_to is not None and part.mode == "live":
            self._send_closed(part, clock)
        horizon = clock - self.window.retention_ms
        view = self.view
        key_from_store = view.key_from_store
        sliding = isinstance(self.window, Sliding)  # a latest-event-time row per window
        # windows this checkpoint wrote that its events' stream time has already expired
        for row in [row for row, _ in txn.items() if row[2] <= horizon]:
            del txn[row]
            latest = max_time_key(view.store_key(row[0]), row[1], row[2]) if sliding else b""
            if sliding and txn.get_raw(latest) is not None:
                txn.put_raw(latest, None)
        start = self._sweeps.get(part, b"")
        rows = itertools.chain(part.store.rows(start), part.store.rows(b"", start))
        self._sweeps[part] = start
        # twice the rows this checkpoint writes: the sweep goes round faster than windows
        # are made, so the store holds at most about twice the windows within retention
        for store_key, _ in itertools.islice(rows, SWEEP_ROWS + 2 * (1 + sliding) * len(txn)):
            self._sweeps[part] = store_key + b"\0"
            if sliding and is_max_time_row(store_key):
                if parse_window_key(store_key[:-1])[2] <= horizon:
                    txn.put_raw(store_key, None)
                continue
            if not is_window_row(store_key):
                continue
            key, begins, ends = parse_window_key(store_key)
            if ends <= horizon:
                del txn[(key_from_store(key), begins, ends)]
