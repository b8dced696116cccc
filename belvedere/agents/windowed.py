"""The projection of a windowed view: each event's handler runs once per window the event
falls in, and checkpoints delete the windows past retention.

Per event: its time (:meth:`Window.event_ms`) moves the partition's stream time forward;
the windows it falls in that still take events (stream time < end + grace) each get one call
of the handler, with the view bound to that window (:class:`WindowView`). An event whose
windows have all closed is late: a dead letter of kind ``late`` naming the windows and the
stream time, or one more on the partition's late count (``on_late="count"``).

Retention: before each checkpoint, :data:`SWEEP_ROWS` rows of the partition and twice as
many as the checkpoint writes are looked at, from where the last sweep stopped (round the end to the first row), and the windows that ended at or before
stream time - retention are deleted in the checkpoint's transaction (and so are those the
checkpoint's own events wrote and its later events expired), so the changelog gets
their tombstones with the checkpoint and a restore brings none back. Reads hide an expired
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
from belvedere.streams.records import Event
from belvedere.tables.window_keys import parse_window_key
from belvedere.tables.windows import (
    LATE_COUNT,
    STREAM_TIME,
    LateEvent,
    SessionView,
    Window,
    WindowView,
    decode_ms,
    encode_ms,
    is_window_row,
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
        #: Sessions each partition's open checkpoint wrote, per key (session windows).
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
        key_from_store = self.view.key_from_store
        # windows this checkpoint wrote that its events' stream time has already expired
        for row in [row for row, _ in txn.items() if row[2] <= horizon]:
            del txn[row]
        start = self._sweeps.get(part, b"")
        rows = itertools.chain(part.store.rows(start), part.store.rows(b"", start))
        self._sweeps[part] = start
        # twice the rows this checkpoint writes: the sweep goes round faster than windows
        # are made, so the store holds at most about twice the windows within retention
        for store_key, _ in itertools.islice(rows, SWEEP_ROWS + 2 * len(txn)):
            self._sweeps[part] = store_key + b"\0"
            if not is_window_row(store_key):
                continue
            key, begins, ends = parse_window_key(store_key)
            if ends <= horizon:
                del txn[(key_from_store(key), begins, ends)]
