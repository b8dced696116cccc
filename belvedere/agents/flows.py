"""Transforms: filter, map, flat_map, branch and re-key, run by the engine.

::

    big = app.event_topic("big-orders", OrderPlaced, partitions=4)

    @app.filter(orders, to=big)
    def is_big(event: OrderPlaced) -> bool:
        return event.amount >= 100

    by_user = app.rekey(big, by="user_id")  # an internal topic keyed by user id

Each transform is a projection of its source into a small progress view (``flow-<name>``,
one row per partition, written at every checkpoint so that the changelog carries the
source offset), and what it sends waits in the partition's outbox
(:mod:`belvedere.streams.outbox`) until the checkpoint writes it: in the source
partition's Kafka transaction, or in the embedded log's one atomic append with the
changelog. So an output is written exactly once with the offsets saying its source event
was handled, whatever is killed when. An output's event id is made from its source's
position (``<topic>-<partition>-<offset>/<transform>/<n>``); it continues the source's
correlation and is caused by it. A handler that raises, or returns what its target topic
does not carry, dead-letters its source event with the reason, and the transform goes on.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from belvedere.agents.aggregates import annotated_types
from belvedere.agents.projection import Handler, PartitionState, Projection
from belvedere.streams.outbox import current_outbox
from belvedere.streams.records import Event
from belvedere.streams.topics import EventTopic
from belvedere.tables.view import View

__all__ = ["KINDS", "TransformProjection", "send_outputs"]

#: What each kind's function returns: filter a bool, map an event or None, flat_map an
#: iterable of events, branch a key of ``to`` or None, rekey the new key.
KINDS = ("filter", "map", "flat_map", "branch", "rekey")


class TransformProjection(Projection):
    """One transform function of ``source``'s events, sending to ``targets``."""

    not_rebuildable = "a transform's outputs were sent when it first handled its events"
    buffers_sends = True

    def __init__(
        self,
        source: EventTopic,
        view: View,
        *,
        kind: str,
        name: str,
        fn: Callable[[Any], Any],
        targets: Mapping[str, EventTopic],
        types: Iterable[type[Event]] | None = None,
    ) -> None:
        super().__init__(source=source, view=view)
        if kind not in KINDS:
            raise ValueError(f"a transform is one of {', '.join(KINDS)}, not {kind!r}")
        self.kind, self.name, self.fn, self.targets = kind, name, fn, dict(targets)
        if not self.targets:
            raise TypeError(f"transform {name!r}: to= names no topic")
        for target in self.targets.values():
            if not isinstance(target, EventTopic):
                raise TypeError(f"transform {name!r}: to= must be event topics, not {target!r}")
            if not target.partitions:  # the outbox picks each output's partition itself
                raise TypeError(
                    f"transform {name!r}: declare {target.get_topic_name()!r} with partitions="
                )
        chosen = list(types) if types is not None else self.event_types(kind, fn, source)
        carried = set(source.codec.types.values())
        for cls in chosen:
            if cls not in carried:
                raise TypeError(
                    f"transform {name!r}: {cls.__name__} is not carried by {source.get_topic_name()!r}"
                )
            if kind in ("filter", "branch", "rekey"):  # the event itself goes on
                for target in self.targets.values():
                    if cls not in target.codec.types.values():
                        raise TypeError(
                            f"transform {name!r}: {target.get_topic_name()!r} does not carry {cls.__name__}"
                        )
            self.handlers[cls] = Handler(self._apply, True, name)
        self.is_async = inspect.iscoroutinefunction(fn)
        #: Per partition: events handled and outputs sent since its last checkpoint.
        self._unsaved: dict[int, tuple[int, int]] = {}

    async def on_start(self) -> None:
        # Created with their partition counts, not subscribed: this worker only writes them.
        for target in self.targets.values():
            await target.maybe_declare()

    @staticmethod
    def event_types(kind: str, fn: Callable[..., Any], source: EventTopic) -> list[type[Event]]:
        if kind == "rekey":
            return list(source.codec.types.values())
        return annotated_types(fn, Event, 0, f"a {kind} function takes (event)")

    async def _apply(self, txn: Any, event: Event) -> None:
        record = txn.record
        result = self.fn(event)
        if self.is_async or inspect.isawaitable(result):
            result = await result
        if self.kind == "rekey":
            target = self.targets["rekey"]
            outbox = current_outbox()
            assert outbox is not None  # a transform's fold always has one
            if result is None:
                raise ValueError("the new key is None")
            key = str(result).encode()
            target.buffered(outbox, key, record.value, None, self.copy_headers(record, event))
            self._count(txn.partition, 1)
            return
        origin = f"{record.topic}-{record.partition}-{record.offset}/{self.name}"
        outputs = self._outputs(event, result)
        await send_outputs(outputs, origin, record.key)
        self._count(txn.partition, len(outputs))

    def copy_headers(self, record: Any, event: Event) -> list[tuple[str, bytes]]:
        """The headers of a re-keyed copy: its source's (a stream join adds its side)."""
        return list(record.headers or ())

    def _outputs(self, event: Event, result: Any) -> list[tuple[EventTopic, Any]]:
        kind = self.kind
        if kind == "filter":
            return [(self.targets["to"], event)] if result else []
        if kind == "branch":
            if result is None:
                return []
            target = self.targets.get(result) if isinstance(result, str) else None
            if target is None:
                raise ValueError(f"returned {result!r}, not one of {sorted(self.targets)} or None")
            return [(target, event)]
        target = self.targets["to"]
        if kind == "map":
            return [] if result is None else [(target, result)]
        if isinstance(result, Event | str | bytes) or not isinstance(result, Iterable):
            raise TypeError(f"returned {type(result).__name__}, not an iterable of events")
        return [(target, output) for output in result]

    def _count(self, partition: int, sent: int) -> None:
        handled, total = self._unsaved.get(partition, (0, 0))
        self._unsaved[partition] = (handled + 1, total + sent)

    async def after_restore(self, part: PartitionState, reader: Any) -> bool:
        self._unsaved.pop(part.tp.partition, None)  # a dropped owner's, if any
        return False

    async def before_checkpoint(self, part: PartitionState) -> None:
        # A row per checkpoint, so that the changelog carries the source offset (and, on
        # the embedded broker, the outputs travel in the same append): the events handled
        # and the outputs sent, in all, exact like the offsets.
        p = part.tp.partition
        handled, sent = self._unsaved.pop(p, (0, 0))
        row = part.txn.get(p) or {"handled": 0, "sent": 0}
        part.txn.put_local(p, {"handled": row["handled"] + handled, "sent": row["sent"] + sent})


async def send_outputs(
    outputs: Sequence[tuple[EventTopic, Any]],
    origin: str,
    source_key: bytes | None,
    *,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> None:
    """Publish each output with the event id ``<origin>/<n>``: the same on a repeat, so
    that a reader can drop repeats by ``eventId``. Correlation and causation continue the
    event being handled unless given (what a stream join sends for a stored event)."""
    for n, (target, output) in enumerate(outputs):
        if not isinstance(output, Event):
            raise TypeError(f"returned {type(output).__name__}, not an event")
        key = source_key if _keyless(target, output) else None
        await target.publish(
            output,
            key=key,
            event_id=f"{origin}/{n}",
            correlation_id=correlation_id,
            causation_id=causation_id,
        )


def _keyless(topic: EventTopic, event: Event) -> bool:
    """Neither the event's class nor the topic names a key field: the output keeps its
    source's key."""
    return type(event).event_key is None and topic.key_field is None
