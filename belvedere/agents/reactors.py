"""Reactors: pub/sub subscribers that act on events (send an email, call a service,
publish further events), each receiving every event of its types.

::

    @app.reactor(OrderPaid, concurrency=8)
    async def send_receipt(event: OrderPaid, ctx: ReactorContext) -> None:
        await mailer.send(receipt_for(event), idempotency_key=ctx.idempotency_key)

Every reactor is its own subscriber: several reactors of one event type in one app each
get every event (fan-out), and so do reactors in other apps, which are other consumer
groups. A reactor that raises (after its ``retries``) sends the event to the dead letters
with its reason; the event's other readers carry on, and so does the reactor.

A reactor reads its topic in the projection engine's batch path, so it shares the fetch
and the decoding with the projections reading it. Its progress is the source offset of a
small bookkeeping view (``reactor-<name>``, one row per partition), so a restart or a
rebalance resumes where it left off.

With ``concurrency=1`` the handler runs inside the engine's fold, one event at a time, and
what it publishes on Kafka is in the partition's transaction. With more, the fold hands
each event to a lane (one per key: a key's events run one after another, in order, and
different keys at once), at most ``concurrency`` events of a partition running at once and
``TAKEN_PER_SLOT`` times as many handed over; the fold waits for room (while the worker
gives partitions up, ``drain_timeout`` at most, then the events in flight are cancelled).
The offset a checkpoint stores is then the low watermark, the first event not finished, so a crash repeats unfinished events (and those finished after it) and
skips none. Either way delivery is at least once; ``ctx.idempotency_key`` is the same for
every delivery of one event to one reactor, for the service called to drop repeats.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from belvedere.agents.aggregates import annotated_types
from belvedere.agents.projection import Handler, PartitionState, Projection
from belvedere.streams.context import caused_by
from belvedere.streams.records import Event
from belvedere.streams.topics import EventTopic
from belvedere.streams.transactions import producing
from belvedere.tables.view import View

__all__ = ["ReactorContext", "ReactorProjection"]

logger = logging.getLogger(__name__)

#: Events of a partition handed over (running, or waiting in their lanes) per unit of
#: ``concurrency``: other keys' events can go past a busy key's, and memory stays bounded.
TAKEN_PER_SLOT = 8
#: At most this many events of a partition between its watermark and the next event taken
#: (finished ones included): one job stuck for long holds its partition there, so that
#: what is kept of the finished ones stays small.
WINDOW = 10_000
#: The first retry waits this long, each next one twice as long, up to ``MAX_BACKOFF``.
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 5.0


@dataclass(frozen=True)
class ReactorContext:
    """What a reactor's handler may want besides its event (its second parameter)."""

    #: ``<app>/<reactor>/<eventId>``: the same on every delivery of this event to this
    #: reactor (after a crash, a rebalance or a retry); give it to the service called.
    idempotency_key: str
    #: 1 for the first try, 2 for the first retry...
    attempt: int
    partition: int
    offset: int


def _takes_context(fn: Callable[..., Any]) -> bool:
    params = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(params) not in (1, 2):
        raise TypeError(f"{fn.__qualname__}: a reactor takes (event) or (event, ctx)")
    return len(params) == 2


def _has_field(cls: type, name: str) -> bool:
    return any(name in getattr(base, "__annotations__", {}) for base in cls.__mro__)


class _Lanes:
    """One partition's events in flight, for a reactor with ``concurrency`` > 1."""

    def __init__(self, part: PartitionState, concurrency: int) -> None:
        self.part = part
        #: Held by each event while its handler runs.
        self.running = asyncio.Semaphore(concurrency)
        #: Events handed over and not finished (running, or waiting in their lane).
        self.taken = 0
        self.most_taken = concurrency * TAKEN_PER_SLOT
        #: The events waiting or running, per key, first first; a lane's task runs them.
        self.lanes: dict[Any, collections.deque[tuple[Event, Any]]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        #: Offsets handed over and not finished, in offset order (finished ones are
        #: dropped once every earlier one is).
        self.in_flight: collections.deque[int] = collections.deque()
        self.finished: set[int] = set()
        #: Set when an event finishes (the fold may be waiting for room).
        self.moved = asyncio.Event()
        #: Given up while full: nothing more runs here (the partition's next owner
        #: handles it all again from the watermark).
        self.abandoned = False

    def watermark(self) -> int:
        while self.in_flight and self.in_flight[0] in self.finished:
            self.finished.discard(self.in_flight.popleft())
        return self.in_flight[0] if self.in_flight else self.part.next_offset

    def done(self, offset: int) -> None:
        self.finished.add(offset)
        self.taken -= 1
        self.moved.set()

    async def take(self, giving_up: Callable[[], bool], patience: float) -> bool:
        """Wait for room: fewer than ``most_taken`` events taken, and than ``WINDOW`` past
        the watermark. False if the worker is giving partitions up (a rebalance, a stop)
        and nothing finished for ``patience`` seconds: the events in flight are cancelled
        then, or the fold, which holds the engine's lock, would keep it from them."""
        stuck_since: float | None = None
        while not self.abandoned:
            self.watermark()
            if self.taken < self.most_taken and len(self.in_flight) < WINDOW:
                self.taken += 1
                return True
            self.moved.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.moved.wait(), 0.1)
            if self.moved.is_set() or not giving_up():
                stuck_since = None
                continue
            now = time.monotonic()
            stuck_since = stuck_since or now
            if now - stuck_since >= patience:
                self.abandon()
        return False

    def abandon(self) -> None:
        self.abandoned = True
        for task in self.tasks:
            task.cancel()

    async def drain(self, timeout: float) -> None:
        """Wait for the events in flight, up to ``timeout``; cancel what is left."""
        if self.tasks:
            _, late = await asyncio.wait(set(self.tasks), timeout=timeout)
            if late:
                self.abandon()
                await asyncio.gather(*late, return_exceptions=True)


class ReactorProjection(Projection):
    """One reactor function, subscribed to ``source``."""

    not_rebuildable = "a reactor's effects happened when it first handled its events"

    def __init__(
        self,
        source: EventTopic,
        view: View,
        fn: Callable[..., Any],
        types: list[type[Event]],
        *,
        app_id: str = "",
        name: str | None = None,
        concurrency: int = 1,
        key: str | Callable[[Any], Any] | None = None,
        retries: int = 0,
        drain_timeout: float = 10.0,
        dead_letters: Any = None,
        giving_up: Callable[[], bool] = lambda: False,
    ) -> None:
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"{fn.__qualname__}: concurrency must be an int >= 1")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"{fn.__qualname__}: retries must be an int >= 0")
        if key is not None and concurrency == 1:
            raise ValueError(f"{fn.__qualname__}: key= orders concurrent events: pass concurrency=")
        if isinstance(key, str):
            missing = [t.__name__ for t in types if not _has_field(t, key)]
            if missing:
                raise ValueError(f"{fn.__qualname__}: key {key!r} is not a field of {missing}")
        super().__init__(source=source, view=view)
        self.fn = fn
        self.name = name or fn.__name__
        self.is_async = inspect.iscoroutinefunction(fn)
        self.with_context = _takes_context(fn)
        self.concurrency = concurrency
        self.key = key
        self.retries = retries
        self.drain_timeout = drain_timeout
        self.dead_letters = dead_letters
        #: True while the worker is giving partitions up (rebalancing, stopping).
        self.giving_up = giving_up
        self.key_prefix = f"{app_id}/{self.name}/"
        react = self._react if concurrency == 1 else self._hand_over
        handler = Handler(react, True, fn.__qualname__)
        for cls in types:
            self.handlers[cls] = handler
        #: Events handled per partition since the worker started.
        self.handled: dict[int, int] = {}
        #: Per partition, the events in flight (concurrency > 1).
        self._lanes: dict[int, _Lanes] = {}
        #: When the partitions being given up stop waiting for their events in flight.
        self._release_by: float | None = None

    @staticmethod
    def event_types(fn: Callable[..., Any]) -> list[type[Event]]:
        return annotated_types(fn, Event, 0, "a reactor takes (event) or (event, ctx)")

    async def _call(self, event: Event, ctx: ReactorContext) -> None:
        with caused_by(event):
            result = self.fn(event, ctx) if self.with_context else self.fn(event)
            if self.is_async:
                await result

    async def _attempts(self, event: Event, partition: int, offset: int) -> None:
        """Run the handler, retrying with backoff; raises what the last try raised."""
        key = self.key_prefix + event.meta.event_id
        for attempt in range(1, self.retries + 2):
            try:
                await self._call(event, ReactorContext(key, attempt, partition, offset))
                break
            except Exception as exc:
                if attempt > self.retries:
                    raise
                delay = min(FIRST_BACKOFF * 2 ** (attempt - 1), MAX_BACKOFF)
                logger.warning(
                    "reactor %s: %r on %s, try %d; again in %.1fs",
                    self.name, exc, key, attempt, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
        self.handled[partition] = self.handled.get(partition, 0) + 1

    async def _react(self, txn: Any, event: Event) -> None:
        """Inside the fold (concurrency 1): the engine dead-letters what this raises."""
        await self._attempts(event, txn.partition, txn.record.offset)

    # -- concurrency > 1 ------------------------------------------------------------------------

    def _lanes_of(self, part: PartitionState) -> _Lanes | None:
        lanes = self._lanes.get(part.tp.partition)
        return lanes if lanes is not None and lanes.part is part else None

    def _lane_key(self, event: Event, record: Any) -> Any:
        if self.key is None:
            return record.key
        if isinstance(self.key, str):
            return getattr(event, self.key)
        return self.key(event)

    async def _hand_over(self, txn: Any, event: Event) -> None:
        """Inside the fold: queue the event on its key's lane, once there is room."""
        record = txn.record
        lanes = self._lanes.get(txn.partition)
        if lanes is None or lanes.part.txn is not txn:  # not restored by the engine
            await self._attempts(event, txn.partition, record.offset)
            return
        key = self._lane_key(event, record)  # a key function that raises: a dead letter
        taken = await lanes.take(self.giving_up, self.drain_timeout)
        lanes.in_flight.append(record.offset)
        if not taken:
            return  # unfinished: handled again from the watermark
        lane = lanes.lanes.get(key)
        if lane is not None:
            lane.append((event, record))
            return
        lanes.lanes[key] = collections.deque([(event, record)])
        task = asyncio.get_running_loop().create_task(self._run_lane(lanes, key))
        lanes.tasks.add(task)
        task.add_done_callback(lanes.tasks.discard)

    async def _run_lane(self, lanes: _Lanes, key: Any) -> None:
        lane = lanes.lanes[key]
        part = lanes.part
        with producing(None):  # outside the fold: not in the partition's transaction
            while lane:
                event, record = lane[0]
                try:
                    if not part.fenced:  # another worker has it
                        async with lanes.running:
                            await self._attempts(event, part.tp.partition, record.offset)
                except Exception as exc:
                    await self._dead_letter(part, record, exc)
                lane.popleft()
                lanes.done(record.offset)
        del lanes.lanes[key]

    async def _dead_letter(self, part: PartitionState, record: Any, exc: Exception) -> None:
        reason = f"{self.fn.__qualname__}: {exc!r}"
        try:
            await self.dead_letters.send(
                record,
                "handler-error",
                reason,
                view=self.view.name,
                generation=part.generation,
                handler=self.fn.__qualname__,
                error=exc,
            )
        except Exception as failed:  # its lane goes on; the event counts as finished
            logger.error("reactor %s: dead-lettering %s failed: %r", self.name, reason, failed)

    # -- the engine's hooks -----------------------------------------------------------------------

    async def after_restore(self, part: PartitionState, reader: Any) -> bool:
        if self.concurrency > 1:  # (a partition dropped when fenced leaves its lanes behind)
            self._lanes[part.tp.partition] = _Lanes(part, self.concurrency)
        return False

    def stored_offsets(self, part: PartitionState) -> dict[tuple[str, int], int]:
        offsets = part.offsets()
        lanes = self._lanes_of(part)
        if lanes is not None:
            offsets[(part.tp.topic, part.tp.partition)] = lanes.watermark()
        return offsets

    def _moved(self, part: PartitionState) -> bool:
        """Events finished since the last checkpoint, which stored an earlier watermark."""
        lanes = self._lanes_of(part)
        if lanes is None:
            return False
        stored = part.status.positions.get((part.tp.topic, part.tp.partition), 0)
        return lanes.watermark() > stored

    async def on_tick(self, part: PartitionState) -> None:
        if not part.dirty and self._moved(part):
            part.dirty += 1  # the checkpoint timer writes the new watermark

    async def before_release(self, part: PartitionState) -> None:
        lanes = self._lanes_of(part)
        if lanes is None:
            return
        # The partitions given up together (a rebalance, a stop) share one deadline.
        started = time.monotonic()
        if self._release_by is None or started > self._release_by + 1.0:
            self._release_by = started + self.drain_timeout
        await lanes.drain(max(0.0, self._release_by - started))
        if lanes.watermark() < part.next_offset:
            logger.warning(
                "reactor %s[%d]: given up with events unfinished after %.1fs; from offset %d "
                "they are handled again",
                self.name, part.tp.partition, time.monotonic() - started, lanes.watermark(),
            )  # fmt: skip
        if not part.dirty and self._moved(part):
            part.dirty += 1  # (its lanes stay: the checkpoint that follows reads them)

    async def before_checkpoint(self, part: PartitionState) -> None:
        # A row per checkpoint, so that the changelog carries the source offset to
        # whichever worker has the partition next.
        part.txn.put_local(part.tp.partition, {"handled": self.handled.get(part.tp.partition, 0)})
