"""Windowed stream-stream joins: two topics' events paired by key within a time of each
other (``app.join``), exactly once under kill -9, the same on every replay.

::

    @app.join(orders, payments, within=timedelta(minutes=15), how="left", on="order_id",
              to=paid)
    def pay(order: OrderPlaced | None, payment: PaymentReceived | None) -> Paid | None: ...

Two stages, both on the engine. Each side is a re-key transform (:class:`JoinInput`) that
copies its events, once, to the join's merged topic under their join key, with a header
naming its side, its event time and where it came from. :class:`StreamJoinProjection`
folds the merged topic: each partition keeps its key's events within their window in the
view ``join-<name>`` (changelogged, like every view) and its stream time, so a partition
alone decides what pairs, what is late and what closed. The merged topic fixes the order
in which both sides' events meet; everything after it depends on that order only, never
on the wall clock or on when checkpoints run, so a replay (a restore after kill -9, the
partition's next owner) makes the same pairs with the same event ids.

What it sends goes through the partition's outbox (:mod:`belvedere.streams.outbox`) as a
transform's does: a pair when its second event is folded, an unmatched event (``left``,
``right``, ``outer``) at the checkpoint whose stream time closed its window, the same
checkpoint that deletes it from the view (a tombstone in the changelog once its key has
no event left), so state holds only what can still pair.
"""

from __future__ import annotations

import heapq
import inspect
import itertools
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from belvedere.agents.flows import TransformProjection, send_outputs
from belvedere.agents.projection import Handler, PartitionState, Projection
from belvedere.streams.outbox import sending_to
from belvedere.streams.records import Event
from belvedere.streams.topics import EventTopic
from belvedere.tables.view import View
from belvedere.tables.windows import LateEvent, Window, when

__all__ = [
    "HEADER_SIDE",
    "HOWS",
    "LEFT",
    "RIGHT",
    "JoinInput",
    "StreamJoinProjection",
    "side_types",
]

LEFT, RIGHT = "left", "right"
#: Which sides' unmatched events each kind of join sends (with None for the other side).
HOWS: dict[str, tuple[str, ...]] = {
    "inner": (),
    "left": (LEFT,),
    "right": (RIGHT,),
    "outer": (LEFT, RIGHT),
}
#: The merged topic's header: ``<side>\0<event time, ms>\0<topic>-<partition>-<offset>``.
HEADER_SIDE = "belvedere-join"
#: The key of a partition's bookkeeping row (stream time, late count): no join key is it.
BOOK = "\0"


class JoinInput(TransformProjection):
    """One side of a join: its events copied once, envelope unchanged, to the merged topic
    under their join key, with the side, event time and origin in :data:`HEADER_SIDE`.
    Its time is read here, from the event as its source gave it."""

    def __init__(
        self,
        source: EventTopic,
        view: View,
        *,
        join: str,
        side: str,
        key_of: Callable[[Any], Any],
        clock: Window,
        merged: EventTopic,
        types: Iterable[type[Event]],
    ) -> None:
        self.side, self.clock = side, clock

        def join_key(event: Any) -> Any:
            key = key_of(event)
            if key is not None and str(key) in ("", BOOK):
                raise ValueError(f"the join key is {str(key)!r}")
            return key

        super().__init__(
            source,
            view,
            kind="rekey",
            name=f"{join}-{side}",
            fn=join_key,
            targets={"rekey": merged},
            types=types,
        )

    def copy_headers(self, record: Any, event: Event) -> list[tuple[str, bytes]]:
        ms = self.clock.event_ms(event)
        origin = f"{record.topic}-{record.partition}-{record.offset}"
        return [*(record.headers or ()), (HEADER_SIDE, f"{self.side}\0{ms}\0{origin}".encode())]


@dataclass(frozen=True)
class StoredRecord:
    """A stored event as the record it was on the merged topic (what a dead letter needs)."""

    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


class StreamJoinProjection(Projection):
    """Folds a join's merged topic into ``join-<name>``: per key, the events of both sides
    whose windows are open, each with whether it has paired yet. A left event at ``t``
    pairs with right events in ``[t - before, t + after]`` (``within`` either way unless
    said), and so takes partners until stream time reaches ``t + after + grace``; a right
    one, until ``t + before + grace``."""

    buffers_sends = True
    not_rebuildable = (
        "a join's outputs were sent when it first paired its events, and its view holds "
        "only the events still in their windows, which no code of the app shapes"
    )

    def __init__(
        self,
        merged: EventTopic,
        view: View,
        *,
        name: str,
        fn: Callable[[Any, Any], Any],
        to: EventTopic,
        before_ms: int,
        after_ms: int,
        clock: Window,
        how: str,
        dead_letters: Any,
    ) -> None:
        super().__init__(source=merged, view=view)
        self.name, self.fn, self.to = name, fn, to
        self.before_ms, self.after_ms, self.grace_ms = before_ms, after_ms, clock.grace_ms
        #: Per side, how long after its time (in stream time) an event's window closes.
        self.spans = {LEFT: after_ms + clock.grace_ms, RIGHT: before_ms + clock.grace_ms}
        self.on_late = clock.on_late
        self.unmatched = HOWS[how]
        self.dead_letters = dead_letters
        for cls in merged.codec.types.values():
            self.handlers[cls] = Handler(self._apply, True, name)
        #: Per partition (its transaction): (when a key's next event closes, the key), a
        #: heap; stale entries (a rolled-back event's, a key since emptied) are skipped.
        self._closing: WeakKeyDictionary[Any, list[tuple[int, str]]] = WeakKeyDictionary()

    async def on_start(self) -> None:
        await self.to.maybe_declare()  # written here, not subscribed

    def _closing_of(self, txn: Any) -> list[tuple[int, str]]:
        """The partition's heap; the first time (after a start or a restore) made from its
        store and what its open checkpoint wrote."""
        found = self._closing.get(txn)
        if found is None:
            view = self.view
            stored = (
                (view.key_from_store(key), view.decode_value(data))
                for key, data in txn.store.rows()
            )
            found = [
                (self._next_close(row["events"]), key)
                for key, row in itertools.chain(stored, txn.items())
                if key != BOOK and row.get("events")
            ]
            heapq.heapify(found)
            self._closing[txn] = found
        return found

    def _next_close(self, events: list[dict[str, Any]]) -> int:
        spans = self.spans
        return min(e["time"] + spans[e["side"]] for e in events)

    def _decode(self, entry: dict[str, Any], partition: int) -> Event:
        """A stored event, as the merged topic's record gave it to the handler."""
        topic = self.source.get_topic_name()
        return self.source.codec.decode(  # type: ignore[no-any-return]
            entry["event"].encode(),
            timestamp=entry["ts"] / 1000.0,
            source=f"{topic}-{partition}-{entry['offset']}",
        )

    async def _call(self, left: Event | None, right: Event | None) -> Any:
        result = self.fn(left, right)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _apply(self, txn: Any, event: Event) -> None:
        record = txn.record
        side, ms, origin = _side_of(record)
        key = record.key.decode()
        closing = self._closing_of(txn)  # before this event's writes: they may roll back
        book = txn.get(BOOK) or {"streamTime": None, "late": 0}
        clock, spans = book["streamTime"], self.spans
        if clock is not None and ms + spans[side] <= clock:
            if self.on_late == "count":
                txn.put_local(BOOK, {**book, "late": book["late"] + 1})
                return
            raise LateEvent(
                f"event time {when(ms)} ({side}, key {key!r}) of join {self.name!r} is past "
                f"its window: the partition's stream time is {when(clock)}, at or past the "
                f"event time plus {spans[side] - self.grace_ms} ms plus the grace "
                f"({self.grace_ms} ms)"
            )
        row = txn.get(key)
        stored = row["events"] if row else []
        # how far a partner's time may be before this event's, and after it
        other, behind, ahead = (
            (RIGHT, self.before_ms, self.after_ms)
            if side == LEFT
            else (LEFT, self.after_ms, self.before_ms)
        )
        partners = [
            e
            for e in stored
            if e["side"] == other
            and ms - behind <= e["time"] <= ms + ahead
            and (clock is None or e["time"] + spans[other] > clock)  # closed, not deleted yet
        ]
        outputs = []
        for partner in partners:
            found = self._decode(partner, record.partition)
            pair = (event, found) if side == LEFT else (found, event)
            result = await self._call(*pair)
            if result is not None:
                outputs.append((self.to, result))
        paired = {e["offset"] for e in partners}
        events = [{**e, "matched": True} if e["offset"] in paired else e for e in stored]
        events.append(
            {
                "side": side,
                "time": ms,
                "offset": record.offset,
                "origin": origin,
                "matched": bool(partners),
                "ts": record.timestamp,
                "event": record.value.decode(),
            }
        )
        txn[key] = {"events": events}
        if clock is None or ms > clock:
            txn.put_local(BOOK, {**book, "streamTime": ms})
        heapq.heappush(closing, (ms + spans[side], key))
        await send_outputs(outputs, f"{origin}/{self.name}", record.key)

    async def after_restore(self, part: PartitionState, reader: Any) -> bool:
        self._closing.pop(part.txn, None)  # made again from the restored store
        return False

    async def before_checkpoint(self, part: PartitionState) -> None:
        """Delete the events whose windows the stream time closed, sending the unmatched
        ones through the outbox, so they are written with this checkpoint, once (a
        partition being built, not live, would send nothing: its events were handled)."""
        txn = part.txn
        book = txn.get(BOOK)
        if not book or book["streamTime"] is None:
            return
        clock, spans = book["streamTime"], self.spans
        closing = self._closing_of(txn)
        sends = self.unmatched if part.mode == "live" else ()
        with sending_to(part.outbox):
            while closing and closing[0][0] <= clock:
                _, key = heapq.heappop(closing)
                row = txn.get(key)
                if row is None:
                    continue
                keep = [e for e in row["events"] if e["time"] + spans[e["side"]] > clock]
                if keep:  # the row's next close: an entry however stale the one popped
                    heapq.heappush(closing, (self._next_close(keep), key))
                if len(keep) == len(row["events"]):
                    continue
                for e in row["events"]:
                    closed = e["time"] + spans[e["side"]] <= clock
                    if closed and not e["matched"] and e["side"] in sends:
                        await self._send_unmatched(part, key, e)
                if keep:
                    txn[key] = {"events": keep}
                else:
                    del txn[key]

    async def _send_unmatched(self, part: PartitionState, key: str, entry: dict[str, Any]) -> None:
        """``fn(event, None)`` (or ``fn(None, event)``) sent with the event id of the
        stored event's origin, continuing its correlation; a failure dead-letters it."""
        try:
            event = self._decode(entry, part.tp.partition)
            pair = (event, None) if entry["side"] == LEFT else (None, event)
            result = await self._call(*pair)
            if result is not None:
                await send_outputs(
                    [(self.to, result)],
                    f"{entry['origin']}/{self.name}",
                    key.encode(),
                    correlation_id=event.meta.correlation_id,
                    causation_id=event.meta.event_id,
                )
        except Exception as exc:  # the user's function, or what it returned
            side = f"{entry['side']}\0{entry['time']}\0{entry['origin']}".encode()
            stored = StoredRecord(
                self.source.get_topic_name(),
                part.tp.partition,
                entry["offset"],
                key.encode(),
                entry["event"].encode(),
                ((HEADER_SIDE, side),),
            )
            await self.dead_letters.send(
                stored,
                "handler-error",
                f"{self.name}: {exc!r}",
                view=self.view.name,
                generation=part.generation,
                handler=self.name,
                error=exc,
            )


def _side_of(record: Any) -> tuple[str, int, str]:
    """(side, event time in ms, origin) from a merged record's header."""
    for name, value in reversed(record.headers or ()):
        if name == HEADER_SIDE:
            side, ms, origin = bytes(value).decode().split("\0")
            return side, int(ms), origin
    raise ValueError(f"no {HEADER_SIDE} header: not written by a join's input")


def side_types(fn: Callable[..., Any], position: int) -> list[type[Event]]:
    """The event types of one side: its parameter's annotation (a union, ``| None``
    allowed: the side an unmatched event lacks)."""
    params = list(inspect.signature(fn).parameters.values())
    if len(params) != 2:
        raise TypeError(f"join {fn.__qualname__}: the function takes (left, right)")
    param = params[position].name
    hint = typing.get_type_hints(fn).get(param)
    if hint is None:
        raise TypeError(f"join {fn.__qualname__}: annotate {param!r} with its side's event types")
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = [o for o in (typing.get_args(hint) if union else (hint,)) if o is not type(None)]
    for option in options:
        if not (isinstance(option, type) and issubclass(option, Event)):
            raise TypeError(f"join {fn.__qualname__}: {option!r} is not an Event class")
    if not options:
        raise TypeError(f"join {fn.__qualname__}: {param!r} names no event type")
    return options
