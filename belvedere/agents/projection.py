"""Projections: the handlers that fold a source topic's events into a view.

A handler takes ``(view, event)`` and reads and writes the view like a mapping; which
events it handles is read from its ``event`` parameter's annotation (or given with
``events=``). Handlers may be plain or async functions, or the methods of one class::

    @app.projection(orders, view=revenue)
    def on_created(view, event: OrderCreated):
        view[event.user_id] = view.get(event.user_id, Decimal(0)) + event.amount

    @app.projection(orders, view=order_status)
    class OrderStatus:
        def created(self, view, event: OrderCreated): ...
        async def paid(self, view, event: OrderPaid): ...

A projection folds each source partition assigned to the worker into one partition of its
view, once per generation of the view (two while it is rebuilt): a ``PartitionState``,
which the projection's hooks receive.
"""

from __future__ import annotations

import inspect
import time
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from faust.types import TP

from belvedere.streams.outbox import Outbox
from belvedere.streams.readers import PartitionReader
from belvedere.streams.records import Event
from belvedere.streams.topics import EventTopic
from belvedere.tables.store import PartitionStore
from belvedere.tables.transaction import PartitionTransaction
from belvedere.tables.view import PartitionStatus, View

__all__ = [
    "Handler",
    "PartitionState",
    "Projection",
    "Slot",
    "by_correlation",
    "co_partitioning_problem",
    "slot",
]


@dataclass(frozen=True)
class Handler:
    fn: Callable[[Any, Any], Any]
    is_async: bool
    name: str


def _event_types(fn: Callable[..., Any]) -> list[type[Event]]:
    params = list(inspect.signature(fn).parameters.values())
    if len(params) != 2:
        raise TypeError(f"{fn.__qualname__}: a projection handler takes (view, event)")
    hint = typing.get_type_hints(fn).get(params[1].name)
    if hint is None:
        raise TypeError(f"{fn.__qualname__}: annotate the event parameter, or pass events=")
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = typing.get_args(hint) if union else (hint,)
    for option in options:
        if not (isinstance(option, type) and issubclass(option, Event)):
            raise TypeError(f"{fn.__qualname__}: {option!r} is not an Event class")
    return list(options)


@dataclass(eq=False)
class Projection:
    """The handlers that fold ``source`` into ``view``.

    With ``by`` (the view key of an event), events are first re-keyed through the internal
    topic ``repartition``, so each lands in the view partition its key hashes to.
    """

    source: EventTopic
    view: View
    by: Callable[[Any], Any] | None = None
    repartition: EventTopic | None = None
    handlers: dict[type[Event], Handler] = field(default_factory=dict)
    #: More topics re-keyed into ``repartition`` besides ``source`` (a saga's).
    more_sources: tuple[EventTopic, ...] = ()
    #: The handler of every event no handler's type takes (an agent's, which takes all).
    every_event: Handler | None = None
    #: Other views its handlers read (``reads=``): each must be co-partitioned with the
    #: folded topic, checked at start (:func:`co_partitioning_problem`).
    reads: tuple[View, ...] = ()
    #: Whether a handler's read of a view not in ``reads`` (nor replicated) is refused
    #: (``app.projection``'s; the other kinds read what their own code says).
    checks_reads: bool = False

    #: Checkpoint at the end of every batch, not on the interval: someone waits on it.
    eager: ClassVar[bool] = False
    #: Why the view cannot be rebuilt by replaying its source (None: it can).
    not_rebuildable: ClassVar[str | None] = None
    #: What its handlers publish (or send to a plain topic) waits in the partition's
    #: outbox and is written with the checkpoint, not sent at once (transforms, agents).
    buffers_sends: ClassVar[bool] = False

    async def on_start(self) -> None:
        """Called when the worker starts, before any partition is assigned."""

    async def after_restore(self, part: PartitionState, reader: PartitionReader) -> bool:
        """Called once a partition is restored, before its first batch; True if it
        changed the partition's state (the engine then checkpoints it)."""
        return False

    async def before_checkpoint(self, part: PartitionState) -> None:
        """Called before a checkpoint of ``part`` is written."""

    def after_checkpoint(self, part: PartitionState) -> None:
        """Called once a checkpoint of ``part`` is durable (local and changelog)."""

    def stored_offsets(self, part: PartitionState) -> dict[tuple[str, int], int]:
        """The source offsets a checkpoint of ``part`` stores: where the partition resumes
        after a crash or on its next owner. What it applied, unless it still works on
        some of that after the handler returned (a concurrent reactor)."""
        return part.offsets()

    async def before_release(self, part: PartitionState) -> None:
        """Called when ``part`` is given up (revoked, or the worker stopping), under the
        engine's lock, before its last checkpoint (written if ``part.dirty``)."""

    @property
    def sources(self) -> tuple[EventTopic, ...]:
        return (self.source, *self.more_sources)

    async def on_tick(self, part: PartitionState) -> None:
        """Called every half checkpoint interval for each served partition, under
        the engine's lock (a timer may change the partition's state here)."""

    @property
    def allowed_reads(self) -> frozenset[str] | None:
        """What its handlers may read outside their own view (None: unchecked)."""
        if not self.checks_reads:
            return None
        return frozenset((self.view.name, *(v.name for v in self.reads)))

    @property
    def fold_topic(self) -> EventTopic:
        """The topic the handlers are applied from."""
        return self.repartition if self.repartition is not None else self.source

    def add(self, fn: Callable[..., Any], events: Iterable[type[Event]] | None = None) -> None:
        types_ = list(events) if events is not None else _event_types(fn)
        carried = set(self.source.codec.types.values())
        for cls in types_:
            if cls not in carried:
                raise TypeError(
                    f"{fn.__qualname__}: {cls.__name__} is not carried by {self.source.get_topic_name()!r}"
                )
            if cls in self.handlers:
                raise TypeError(
                    f"{cls.__name__} already has a handler in the projection into {self.view.name!r}"
                )
            self.handlers[cls] = Handler(fn, inspect.iscoroutinefunction(fn), fn.__qualname__)

    def register(self, target: Any, events: Iterable[type[Event]] | None = None) -> Any:
        """Add a function, or every annotated method of a class (instantiated once)."""
        if inspect.isclass(target):
            instance = target()
            found = False
            for name, _ in inspect.getmembers(target, inspect.isfunction):
                if name.startswith("_"):
                    continue
                self.add(getattr(instance, name))
                found = True
            if not found:
                raise TypeError(f"{target.__qualname__} has no handler methods")
        else:
            self.add(target, events)
        return target


def co_partitioning_problem(projection: Projection, default_partitions: int) -> str | None:
    """Why a view ``projection``'s handlers read (``reads=``) is not partitioned like the
    topic they fold, once partition counts are known (None: every one is). A lookup reads
    the local partition of the same number: a key there only if both hash keys alike into
    as many partitions."""
    fold = projection.fold_topic.get_topic_name()
    count = projection.view.partitions or default_partitions
    hashing = projection.view.partitioner
    for other in projection.reads:
        if other.replicated:
            continue
        theirs = other.partitions or default_partitions
        if (theirs, other.partitioner) != (count, hashing):
            return (
                f"view {projection.view.name!r} reads view {other.name!r}, which is not "
                f"co-partitioned with its source: {fold!r} has {count} partition(s) hashed by "
                f"{hashing}, view {other.name!r} has {theirs} hashed by {other.partitioner}; "
                "give both sources the same partition count and partitioner, or make "
                f"{other.name!r} a global view"
            )
    return None


def by_correlation(sources: Iterable[EventTopic], inbox: EventTopic) -> dict[str, Any]:
    """A projection's arguments for folding ``sources`` re-keyed by correlation id through
    ``inbox`` (one flow per row: sagas, the trace index)."""
    first, *more = sources
    return {
        "source": first,
        "by": lambda event: event.meta.correlation_id,
        "repartition": inbox,
        "more_sources": tuple(more),
    }


#: A view's partition here, named by its view and the source partition it is folded from.
Slot = tuple[str, TP]


def slot(projection: Projection, tp: TP) -> Slot:
    return (projection.view.name, tp)


class PartitionState:
    """One source partition's projection into one generation of its view: its store, its
    open transaction and where it got. The engine's fold, checkpoints and rebuilds change
    it, under :class:`belvedere.agents.partitions.Partitions`' lock."""

    def __init__(
        self,
        projection: Projection,
        tp: TP,
        store: PartitionStore,
        partitions: int,
        generation: int,
        status: PartitionStatus,
    ) -> None:
        self.projection = projection
        self.tp = tp
        self.store = store
        self.generation = generation
        self.changelog = projection.view.changelog_topic_for(generation)
        self.status = status
        #: live (the served generation) | replaying | following (a generation being built)
        self.mode = "live"
        #: A replay's first offset (log start or timestamp), where it resumed, and when.
        self.positioned = False
        self.replay_start = self.replay_from = 0
        self.replay_began = 0.0
        self.txn = PartitionTransaction(projection.view, store, tp.partition, partitions)
        #: What its handlers sent since the last checkpoint, if the projection buffers sends.
        self.outbox = Outbox(self.txn.on_rollback) if projection.buffers_sends else None
        offsets = store.source_offsets()
        self.next_offset = offsets.pop((tp.topic, tp.partition), 0)
        #: For a repartitioned view: next offset to apply per original source partition.
        self.origins: dict[tuple[str, int], int] = offsets
        self.sought = False
        #: Set when its transaction failed (fenced): dropped, nothing more is written.
        self.fenced = False
        #: Events applied since the last checkpoint, and when that was.
        self.dirty = 0
        #: A read waits for this partition's position: checkpoint at once (checkpoint_soon).
        self.hurry = False
        self.flushed_at = time.monotonic()
        #: The timestamp (ms) of the last event applied.
        self.last_event_ms: int | None = None
        status.positions = self.offsets()

    @property
    def slot(self) -> Slot:
        return (self.projection.view.name, self.tp)

    def offsets(self) -> dict[tuple[str, int], int]:
        return {**self.origins, (self.tp.topic, self.tp.partition): self.next_offset}
