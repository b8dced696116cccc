"""The projection engine: folds fetched batches into views, effectively once.

For each fetched batch of a source partition (taken off faust's consumer by the tap):

1. decode each event (bad input -> dead letters), skip offsets already applied, and
   apply its handler inside a savepoint of the partition's transaction (a handler that
   raises is rolled back and its event dead-lettered; with ``App(strict=True)`` the worker
   stops there instead, before that event);
2. write the changed rows, their index entries, the count and the next source offset in
   one RocksDB batch, marking the rows pending;
3. produce one changelog record per changed row, the last closing the checkpoint with the
   source offsets, and wait for the broker;
4. mark the rows confirmed with the changelog offset, then commit the source offset to
   the broker (only a hint: the store's offset is the truth).

On Kafka a live partition's checkpoint is a Kafka transaction instead (see
:mod:`belvedere.streams.transactions`): what its handlers published, its changelog records
and its source offset are committed together, and the local write follows the commit, so a
worker fenced by the partition's next owner writes nothing anyone reads.

A crash anywhere repeats at most the unfinished batch, whose offsets the store skips: the
view is the fold of every event exactly once. On assignment each partition is restored
from its changelog first (see :mod:`belvedere.tables.changelog`).

The partitions folded here, and in which generation, are kept by
:mod:`belvedere.agents.partitions`. A view being rebuilt has a second partition there per
source partition, for its new generation: :mod:`belvedere.agents.rebuild` replays history
into it, and once it has caught up, the live batches here are folded into both generations
until the switch.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from faust.types import TP
from mode import Service

from belvedere.agents.engine_surface import Decode
from belvedere.agents.partitions import Partitions
from belvedere.agents.projection import (
    PartitionState,
    Projection,
    co_partitioning_problem,
    slot,
)
from belvedere.agents.rebuild import Rebuilder
from belvedere.agents.standby import Standbys
from belvedere.agents.surface import AgentsApp
from belvedere.compat.aiokafka import compresses, record_batch
from belvedere.compat.faust import commit_offsets, kafka_producer
from belvedere.console import DETAIL
from belvedere.streams.context import enter_cause, leave_cause
from belvedere.streams.envelope import BadEvent
from belvedere.streams.failure_log import user_traceback
from belvedere.streams.outbox import OutboxRecord, sending_to
from belvedere.streams.readers import PartitionReader, reader_for
from belvedere.streams.topics import EventTopic
from belvedere.streams.transactions import (
    Fenced,
    PartitionProducer,
    Transactions,
    current_producer,
    producing,
)
from belvedere.tables.changelog import CHANGELOG_CONFIG, changelog_records
from belvedere.tables.recovery import Target, catch_up
from belvedere.tables.store import PartitionStore, StoreBudget
from belvedere.tables.transaction import UnencodableState, WrongPartition
from belvedere.tables.view import (
    LookupElsewhere,
    PartitionStatus,
    UndeclaredRead,
    reading_only,
    stop_reading_only,
)
from belvedere.tables.windows import LateEvent

__all__ = [
    "HEADER_ORIGIN",
    "NotCoPartitioned",
    "ProjectionEngine",
    "StrictStop",
    "origin_of",
    "send_all",
]

#: On a repartitioned copy: the original record's topic, partition and offset.
HEADER_ORIGIN = "bv-origin"
#: The key of a watermark on a repartition topic (Kafka wants a key or a value).
WATERMARK_KEY = b"__belvedere_watermark__"


def _decode(codec: Any, record: Any) -> Any:
    return codec.decode(
        record.value,
        headers=record.headers,
        timestamp=record.timestamp / 1000.0,
        source=f"{record.topic}-{record.partition}-{record.offset}",
    )


def _decoder(codec: Any, shared: bool) -> Decode:
    """Decodes a batch's records; ``shared`` by several projections, each record once (an
    event is an immutable value, so they may share it)."""
    if not shared:
        return lambda record: _decode(codec, record)
    seen: dict[int, Any] = {}

    def decode(record: Any) -> Any:
        found = seen.get(record.offset)
        if found is None:
            try:
                found = _decode(codec, record)
            except BadEvent as exc:
                found = exc
            seen[record.offset] = found
        if isinstance(found, BadEvent):
            raise found
        return found

    return decode


def _failure(exc: Exception) -> tuple[str, str]:
    """A failed event's dead-letter kind, and its reason."""
    if isinstance(exc, WrongPartition):
        return "wrong-partition", str(exc)
    if isinstance(exc, UnencodableState):
        return "unencodable-state", str(exc)
    if isinstance(exc, UndeclaredRead):
        return "undeclared-read", str(exc)
    if isinstance(exc, LookupElsewhere):
        return "wrong-partition", str(exc)
    if isinstance(exc, BadEvent):  # an agent reading a key its topic cannot decode
        return exc.kind, exc.reason
    return "handler-error", repr(exc)


class NotCoPartitioned(ValueError):
    """A projection reads (``reads=``) a view partitioned unlike its source: the worker
    does not start, since its lookups would find rows only by chance."""


class StrictStop(Exception):
    """A handler failed on a worker run with ``strict``: the worker stops there, its
    partition's offset before the event, so the fixed code folds it when restarted."""

    class Logged(logging.Filter):
        """Leaves out faust's tracebacks of a ``StrictStop`` on its way out of the consumer
        (the handler's own was logged, and the CLI's last line says it again)."""

        def filter(self, record: logging.LogRecord) -> bool:
            return not (record.exc_info and isinstance(record.exc_info[1], StrictStop))

    def __init__(self, view: str, handler: str, record: Any) -> None:
        super().__init__(
            f"view {view}: handler {handler} failed on {record.topic}[{record.partition}]"
            f"@{record.offset} (strict: the worker stops; fix it and restart, and that "
            "event is folded again)"
        )


def _offset(record: Any) -> int:
    return record.offset


def origin_of(record: Any) -> tuple[tuple[str, int], int] | None:
    for name, value in record.headers or ():
        if name == HEADER_ORIGIN:
            topic, partition, offset = bytes(value).split(b"\0")
            return (topic.decode(), int(partition)), int(offset)
    return None


logger = logging.getLogger(__name__)


async def send_all(
    producer: Any,
    topic: str,
    partition: int,
    records: Sequence[tuple[bytes, bytes | None, list[tuple[str, bytes]]]],
) -> list[int]:
    """Write (key, value, headers) records to one partition, in order; returns each one's
    offset once the broker has them all."""
    if current := current_producer():  # a live partition's transaction, on Kafka
        producer = await current.begin()
    if isinstance(producer, AIOKafkaProducer):  # a replay helper's own, or a transaction's
        kafka = producer
    elif (send_batch := getattr(producer, "send_batch", None)) is not None:
        # the embedded broker: one append for the whole lot
        return [meta.offset for meta in send_batch(topic, partition, records)]
    else:
        kafka = kafka_producer(producer)
    if kafka is None or compresses(kafka):  # compressed: aiokafka batches it
        futures = [
            await producer.send(topic, key, value, partition, None, headers)
            for key, value, headers in records
        ]
        return [meta.offset for meta in await asyncio.gather(*futures)]
    return await _send_in_batches(kafka, topic, partition, records)


#: Bytes per record batch a checkpoint's changelog is sent in: under the broker's default
#: message.max.bytes (1 MiB), far over the producer's 16 KiB batches.
CHANGELOG_BATCH_BYTES = 512 << 10


async def _send_in_batches(
    kafka: Any, topic: str, partition: int, records: Sequence[tuple[bytes, bytes | None, Any]]
) -> list[int]:
    """Records appended to record batches built here and sent whole (aiokafka's batch API):
    a few futures per checkpoint instead of one per record, which was a third of a
    projection's time at a million keys (docs/benchmarks.md)."""
    sent: list[tuple[Any, int]] = []  # (the batch's future, its record count)
    batch, count = record_batch(kafka, CHANGELOG_BATCH_BYTES), 0
    for key, value, headers in records:
        if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:
            sent.append((await kafka.send_batch(batch, topic, partition=partition), count))
            batch, count = record_batch(kafka, CHANGELOG_BATCH_BYTES), 0
            if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:
                # an output over the batch size (an event up to its topic's max_event_bytes)
                size = len(key or b"") + len(value or b"") + sum(len(n) + len(v) for n, v in headers)  # fmt: skip
                batch = record_batch(kafka, size + 1024)
                if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:
                    raise ValueError(f"a record for {topic} does not fit a record batch")
        count += 1
    if count:
        sent.append((await kafka.send_batch(batch, topic, partition=partition), count))
    offsets: list[int] = []
    for future, n in sent:
        base = (await future).offset
        offsets.extend(range(base, base + n))
    return offsets


class ProjectionEngine(Service):
    """Runs every projection of an app on the partitions this worker is assigned."""

    def __init__(self, app: AgentsApp, **kwargs: Any) -> None:
        self.app = app
        self.projections: dict[str, Projection] = {}
        self.budget: StoreBudget | None = None
        #: The projections folding each topic, and those re-keying each source topic.
        self._by_topic: dict[str, list[Projection]] = {}
        self._rekeys: dict[str, list[Projection]] = {}
        #: Every topic a projection reads, by name (for its codec).
        self._topics: dict[str, Any] = {}
        #: Each (view, source partition) folded here, in its generations.
        self.partitions = Partitions(self.checkpoint)
        #: How far re-keying got in source partitions that no projection folds directly.
        self._rekeyed: dict[TP, int] = {}
        self.rebuilds = Rebuilder(self)
        #: Changelog topics already declared by this worker.
        self._declared: set[str] = set()
        self.standbys = Standbys(self)
        self._reader: PartitionReader | None = None
        self._requests_reader: PartitionReader | None = None
        #: Source events applied (or dead-lettered) per view, since the worker started.
        self.events_processed: dict[str, int] = {}
        #: Seconds spent folding, and source events folded, per (view, "live" or "rebuild").
        self.fold_seconds: dict[tuple[str, str], float] = {}
        self.fold_events: dict[tuple[str, str], int] = {}
        #: A checkpoint is written after this many seconds or events, whichever comes first.
        self.checkpoint_interval = 0.5
        self.checkpoint_events = 20_000
        #: Set when a read asks for a checkpoint now (checkpoint_soon): wakes the timer.
        self._hurry = asyncio.Event()
        #: Where changelogs are written: the app's producer, or a replay helper's own.
        self.changelog_producer: Any = None
        #: Handler errors that stop the fold instead of dead-lettering the event (a replay
        #: helper's: what it cannot do, the worker can).
        self.fatal_handler_errors: tuple[type[BaseException], ...] = ()
        super().__init__(**kwargs)

    @property
    def transactions(self) -> Transactions | None:
        """Live source partitions' transactional producers (Kafka only)."""
        return self.partitions.transactions

    def add(self, projection: Projection) -> None:
        """Several projections may read one topic: each folds it into its own view."""
        if projection.repartition is not None:
            for source in projection.sources:
                self._rekeys.setdefault(source.get_topic_name(), []).append(projection)
                self._topics[source.get_topic_name()] = source
        self._by_topic.setdefault(projection.fold_topic.get_topic_name(), []).append(projection)
        self._topics[projection.fold_topic.get_topic_name()] = projection.fold_topic
        self.projections[projection.view.name] = projection

    def _reports_bad_input(self, projection: Projection, topic: str) -> bool:
        """Whether this projection dead-letters what cannot be decoded from ``topic``: one
        of the projections reading it does, so a bad message is dead-lettered once."""
        readers = [*self._by_topic.get(topic, ()), *self._rekeys.get(topic, ())]
        return not readers or readers[0] is projection

    def projections_of(self, topic: str) -> list[Projection]:
        """The projections folding ``topic`` (a source, or a re-keyed copy)."""
        return self._by_topic.get(topic, [])

    # -- lifecycle ----------------------------------------------------------------------------

    async def on_start(self) -> None:
        self.budget = StoreBudget()
        await self.rebuilds.load()
        changelogs: list[tuple[Any, int]] = []
        for projection in self.projections.values():
            self.size_view(projection)
            view = projection.view
            gen = self.rebuilds.generation(view.name)
            view.generation = gen.active
            changelogs += [(view, g) for g in (gen.active, gen.building) if g is not None]
            self.rebuilds.remove_stale_files(view)
        self.check_co_partitioning()  # a worker started without the CLI's check()
        await asyncio.gather(  # at once: ~25 ms a topic on Kafka, one by one
            *(self.declare_changelog(view, generation) for view, generation in changelogs),
            *(projection.on_start() for projection in self.projections.values()),
        )
        self._reader = reader_for(self.app)
        await self._reader.connect()  # ahead of the first restore, which a rebalance waits on
        if self.app.conf.broker[0].scheme != "embedded":
            self.partitions.transactions = Transactions(self.app)
        helpers = self.app.replay_helpers
        if helpers is not None:
            logger.info(
                "rebuilds replay in up to %d helper processes, forked from process %d",
                helpers.processes, helpers.zygote,
            )  # fmt: skip
        self.app.on_partitions_revoked.connect(self._on_revoked)
        self.app.on_partitions_assigned.connect(self._on_assigned)
        self.app.batch_tap = self
        if self.app.strict:  # the fetcher's logger, and the (tapped) consumer's
            for log in (logging.getLogger("faust.transport.consumer"), self.app.consumer.logger):
                log.addFilter(StrictStop.Logged())

    def check_co_partitioning(self) -> None:
        """Raise NotCoPartitioned when a projection reads (``reads=``) a view partitioned
        unlike the topic it folds, with every view sized as the worker will size it."""
        for projection in self.projections.values():
            self.size_view(projection)
        for projection in self.projections.values():
            problem = co_partitioning_problem(projection, self.app.conf.topic_partitions)
            if problem is not None:
                raise NotCoPartitioned(problem)

    def size_view(self, projection: Projection) -> None:
        """Give ``projection``'s view the partition count of the topic it is folded from;
        one declared otherwise cannot be folded into."""
        fold = projection.fold_topic
        partitions = fold.partitions or self.app.conf.topic_partitions
        view = projection.view
        if view.partitions is None:
            view.partitions = partitions
        elif view.partitions != partitions:
            raise ValueError(
                f"view {view.name!r} has {view.partitions} partitions but {fold.get_topic_name()!r} has "
                f"{partitions}; a projection's view is partitioned like its source (or pass by=)"
            )

    async def declare_changelog(self, view: Any, generation: int) -> None:
        name = view.changelog_topic_for(generation)
        if name in self._declared:
            return
        await self.app.topic(
            name,
            partitions=view.partitions,
            compacting=True,
            internal=True,
            config=CHANGELOG_CONFIG,
        ).maybe_declare()
        self._declared.add(name)

    async def on_stop(self) -> None:
        async with self.partitions.lock:
            self.partitions.close()
            for reader in (self._reader, self._requests_reader):
                if reader is not None:
                    await reader.close()
            self._reader = self._requests_reader = None
            await self.rebuilds.close()
            if self.transactions is not None:
                await self.transactions.close_all()
        await self.standbys.close()

    def requests_reader(self) -> PartitionReader:
        """The reader HTTP requests share (an aggregate's events, a view's change feed): one
        thread and one set of broker connections, not a new one per request (4.5 ms against
        0.9 ms for a small read on loopback, before TLS and SASL)."""
        if self._requests_reader is None:
            self._requests_reader = reader_for(self.app)
        return self._requests_reader

    def all_served(self) -> bool:
        """Every assigned partition a projection folds is restored and served here."""
        try:
            assigned = self.app.consumer.assignment()
        except Exception:  # no consumer yet
            return False
        return all(
            slot(projection, tp) in self.partitions.active
            for tp in assigned
            for projection in self.projections_of(tp.topic)
        )

    async def flush(self) -> None:
        """Checkpoint every partition with applied events (the consumer is stopping)."""
        async with self.partitions.lock:
            for part in self.partitions.all():
                await part.projection.before_release(part)
                if part.dirty:
                    await self.checkpoint(part)

    @Service.task
    async def _control(self) -> None:
        await self.rebuilds.follow_control()

    @Service.task
    async def _replay(self) -> None:
        await self.rebuilds.replay()

    @Service.task
    async def _standbys(self) -> None:
        await self.standbys.follow()

    @Service.task
    async def _checkpoint_timer(self) -> None:
        """Checkpoint partitions whose events are older than the interval, when input is slow."""
        interval = self.checkpoint_interval
        ticked = time.monotonic()
        while not self.should_stop:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hurry.wait(), interval / 2)
            hurried = self._hurry.is_set()
            self._hurry.clear()
            if self.partitions.lock.locked() and not hurried:
                continue
            async with self.partitions.lock:
                now = time.monotonic()
                if now - ticked >= interval / 2:
                    ticked = now
                    for part in list(self.partitions.active.values()):
                        await self._tick(part)
                for part in self.partitions.all():
                    if part.dirty and (
                        part.projection.eager or part.hurry or now - part.flushed_at >= interval
                    ):
                        await self.checkpoint(part)

    async def _tick(self, part: PartitionState) -> None:
        """A timer's writes, in a savepoint like an event's: one that cannot be stored is
        undone and logged, and the partition goes on."""
        txn = part.txn
        txn.savepoint()
        try:
            await part.projection.on_tick(part)
            txn.release()
        except Exception as exc:
            txn.rollback(repr(exc))
            logger.error(
                "view %s[%d]: a timer's change was undone: %r",
                part.projection.view.name, part.tp.partition, exc,
            )  # fmt: skip

    def checkpoint_soon(self, view: str, partition: int) -> None:
        """A read waits until ``view``'s ``partition`` has applied a position (``?after=``):
        checkpoint it as soon as it has applied anything new, instead of at the end of
        ``checkpoint_interval``, so read-after-write takes a fetch and a checkpoint, not
        half a second."""
        for part in self.partitions.active.values():
            if part.tp.partition == partition and part.projection.view.name == view:
                part.hurry = True
                self._hurry.set()

    def store_dir(self, view: Any, generation: int) -> Path:
        return Path(self.app.conf.datadir) / "views" / f"{view.name}-g{generation}"

    # -- rebalancing --------------------------------------------------------------------------

    async def _on_revoked(self, sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        partitions = self.partitions
        async with partitions.lock:
            await self.rebuilds.revoked(revoked)
            for tp in revoked:
                self._rekeyed.pop(tp, None)
                for take, projection in (
                    (take, projection)
                    for take in (partitions.abandon, partitions.withdraw)
                    for projection in self.projections_of(tp.topic)
                ):
                    part = take(slot(projection, tp))
                    if part is None:
                        continue
                    await projection.before_release(part)
                    if part.dirty:
                        await self.checkpoint(part)
                    if part.fenced:
                        continue  # dropped already
                    if part.mode == "live":
                        view = part.projection.view
                        view.stores.pop(tp.partition, None)
                        view.status.pop(tp.partition, None)
                    part.store.close()
            if self.transactions is not None:
                await self.transactions.close(revoked)

    async def _on_assigned(self, sender: Any, assigned: set[TP], **kwargs: Any) -> None:
        async with self.partitions.lock:
            new = [
                (projection, tp)
                for tp in sorted(assigned)
                for projection in self.projections_of(tp.topic)
                if slot(projection, tp) not in self.partitions.active
            ]
            if self.transactions is not None:  # fences their last owners, before the restore
                await self.transactions.open({tp for _, tp in new})
            entries = []
            for projection, tp in new:
                view = projection.view
                gen = self.rebuilds.generation(view.name)
                status = view.status[tp.partition] = PartitionStatus(
                    generation=view.generation, restore_started=time.monotonic()
                )
                entries.append((projection, tp, view.generation, status))
                if gen.building is not None:
                    building = PartitionStatus(
                        generation=gen.building, restore_started=time.monotonic()
                    )
                    entries.append((projection, tp, gen.building, building))
            if entries:
                to_replay: list[PartitionState] = []
                for part in await self.restore(entries):
                    if part.generation == part.projection.view.generation:
                        self.partitions.serve(part)
                    else:
                        to_replay.append(part)
                await self.rebuilds.replay_parts(to_replay)

    async def restore(
        self, entries: Sequence[tuple[Projection, TP, int, PartitionStatus]]
    ) -> list[PartitionState]:
        """Bring each (source partition, generation)'s view partition up to its changelog,
        all of them in one pass."""
        assert self.budget is not None
        if self._reader is None:
            self._reader = reader_for(self.app)
        reader = self._reader
        targets: dict[TP, Target] = {}
        new: dict[TP, tuple[Projection, TP, int]] = {}
        for projection, tp, generation, status in entries:
            view = projection.view
            ctp = TP(view.changelog_topic_for(generation), tp.partition)
            path = self.store_dir(view, generation) / f"{tp.partition}.db"
            standby = await self.standbys.release(path)
            if standby is None:
                store = PartitionStore(path, self.budget)
            else:  # readable with max_lag all along, as far behind as the standby was
                store, status.restore_total = standby
                view.restoring(tp.partition, store, status)
            targets[ctp] = Target(view, store, status)
            new[ctp] = (projection, tp, generation)
        await catch_up(reader, targets, self.budget)

        parts = []
        for ctp, target in targets.items():
            projection, tp, generation = new[ctp]
            view, store, restorer, status = (
                target.view,
                target.store,
                target.restorer,
                target.status,
            )
            assert restorer is not None and status is not None
            pending = set(store.pending_keys())
            undone = restorer.finish() - pending
            repair = undone | pending
            part = PartitionState(projection, tp, store, view.partitions or 1, generation, status)
            if undone:  # values readers of the changelog already had
                rows = {key: store.get(key) for key in undone}
                await self._write_changelog(part, rows, repair=True)
            if pending:  # values the changelog never completed
                await self._write_changelog(part, {key: store.get(key) for key in pending})
            if await projection.after_restore(part, reader):
                await self.checkpoint(part)
                if part.fenced:
                    continue
            parts.append(part)
            logger.info(
                "view %s[%d] g%d: restored %d rows from the changelog (%d dropped, %d repaired), at source offset %d",
                view.name, tp.partition, generation, restorer.applied, restorer.dropped, len(repair), part.next_offset,
                extra=DETAIL,
            )  # fmt: skip
        return parts

    # -- the batch path -----------------------------------------------------------------------

    def claims(self, tp: TP) -> bool:
        return tp.topic in self._by_topic or tp.topic in self._rekeys

    async def on_batch(self, batches: Mapping[TP, Sequence[Any]]) -> None:
        partitions = self.partitions
        async with partitions.lock:
            served, built = partitions.active, partitions.building
            for tp, records in batches.items():
                rekeys = self._rekeys.get(tp.topic, [])
                folds = self.projections_of(tp.topic)
                readers = [*folds, *rekeys]
                rebuilding = any(slot(p, tp) in built for p in folds)
                decode = _decoder(self._topics[tp.topic].codec, len(readers) > 1 or rebuilding)
                for projection in rekeys:
                    await self._rekey(projection, tp, records, decode)
                parts = [served.get(slot(projection, tp)) for projection in folds]
                if not all(parts):
                    # Fetched before its restore started (or after a revoke): read it again later.
                    if tp in self.app.consumer.assignment():
                        await self.app.consumer.seek(tp, records[0].offset)
                    continue
                if not folds:
                    self._rekeyed[tp] = records[-1].offset + 1
                    await self._commit(tp)
                    continue
                self._rekeyed.pop(tp, None)
                for projection, part in zip(folds, parts, strict=True):
                    assert part is not None
                    await self._process(part, records, decode)
                    building = built.get(slot(projection, tp))
                    if building is not None and building.mode == "following":
                        await self.rebuilds.follow(building, records, part.next_offset, decode)

    async def _process(self, part: PartitionState, records: Sequence[Any], decode: Decode) -> None:
        first = records[0].offset
        if first > part.next_offset and not part.sought:
            # The broker's committed offset ran ahead of the store's (e.g. a restore from an
            # older changelog): go back once rather than skip events.
            part.sought = True
            await self.app.consumer.seek(part.tp, part.next_offset)
            return
        part.sought = True
        await self.fold(part, records, decode)

    async def fold(
        self, part: PartitionState, records: Sequence[Any], decode: Decode | None = None
    ) -> None:
        """Apply ``records`` (in offset order) to ``part``, checkpointing as they go, and
        count the time it took (``/metrics``: what a rebuild's replay costs per event
        against live folding, and how busy folding keeps the worker).

        A live partition stops early for a rebalance, and seeks back to what it left.
        """
        mode = "live" if part.mode == "live" else "rebuild"
        started, first = time.perf_counter(), part.next_offset
        try:
            with producing(self._transaction(part)), sending_to(part.outbox):
                await self._fold(part, records, decode)
        except Fenced as exc:  # a handler's publish was refused
            self._drop_fenced(part, exc)
        finally:
            done = bisect.bisect_left(records, part.next_offset, key=_offset) - bisect.bisect_left(
                records, first, key=_offset
            )
            self.count_fold(part.projection.view.name, mode, time.perf_counter() - started, done)

    def count_fold(self, view: str, mode: str, seconds: float, events: int) -> None:
        """Add to ``/metrics``' fold counters (a replay helper's, when it ends)."""
        key = (view, mode)
        self.fold_seconds[key] = self.fold_seconds.get(key, 0.0) + seconds
        self.fold_events[key] = self.fold_events.get(key, 0) + events

    async def _fold(
        self, part: PartitionState, records: Sequence[Any], decode: Decode | None
    ) -> None:
        if part.fenced:
            return
        projection = part.projection
        if decode is None:
            decode = _decoder(part.projection.fold_topic.codec, shared=False)
        txn = part.txn
        origins = part.origins if projection.repartition is not None else None
        reports_bad_input = self._reports_bad_input(projection, part.tp.topic)
        reads = reading_only(projection.allowed_reads, part.tp.partition)
        try:
            await self._fold_records(part, records, decode, txn, origins, reports_bad_input)
        finally:
            stop_reading_only(reads)

    async def _fold_records(
        self,
        part: PartitionState,
        records: Sequence[Any],
        decode: Decode,
        txn: Any,
        origins: dict[tuple[str, int], int] | None,
        reports_bad_input: bool,
    ) -> None:
        live = part.mode == "live"
        projection = part.projection
        handlers, every_event = projection.handlers, projection.every_event
        metas = isinstance(projection.fold_topic, EventTopic)  # else plain values: no envelope
        for i, record in enumerate(records):
            if i & 255 == 255 and part.dirty:
                if live and self.app.rebalancing:
                    # Let the rebalance have the partition: keep what is done, fetch the rest again.
                    await self.checkpoint(part)
                    await self.app.consumer.seek(part.tp, part.next_offset)
                    return
                if self._due(part):
                    await self.checkpoint(part)
                    if part.fenced:
                        return
            offset = record.offset
            if offset < part.next_offset:
                continue
            if origins is not None:
                origin = origin_of(record)
                part.next_offset = offset + 1
                part.dirty += 1
                if origin is None or origin[1] < origins.get(origin[0], 0):
                    continue  # a copy the re-keying stage wrote twice (it is at-least-once)
                origins[origin[0]] = origin[1] + 1
                if record.value is None:
                    continue  # a watermark: nothing from that origin before it is left to come
            try:
                event = decode(record)
            except BadEvent as exc:
                if reports_bad_input:
                    await self.app.dead_letters.send(record, exc.kind, exc.reason)
            else:
                handler = handlers.get(type(event), every_event)
                if handler is not None:
                    txn.savepoint()
                    txn.record = record
                    # what the handler publishes continues it
                    cause = enter_cause(event.meta if metas else None)
                    try:
                        result = handler.fn(txn, event)
                        if result is not None and handler.is_async:  # an agent's: when it awaits
                            await result
                        txn.release()  # encodes its writes: UnencodableState
                    except Fenced:
                        leave_cause(cause)
                        txn.rollback()
                        raise
                    except self.fatal_handler_errors:
                        leave_cause(cause)
                        txn.rollback()
                        raise
                    except Exception as exc:  # a bad event must not stop the partition
                        leave_cause(cause)
                        kind, reason = _failure(exc)
                        reason = f"{handler.name}: {reason}"
                        txn.rollback(reason)
                        if self.app.strict and live and not isinstance(exc, LateEvent):
                            stop = StrictStop(projection.view.name, handler.name, record)
                            logger.critical("%s\n%s", stop, user_traceback(exc))
                            raise stop from None  # its traceback is logged above
                        await self.app.dead_letters.send(
                            record,
                            kind,
                            reason,
                            view=projection.view.name,
                            generation=part.generation,
                            handler=handler.name,
                            # late input is the input's: the framework's frames would say nothing
                            error=None if isinstance(exc, LateEvent) else exc,
                        )
                    except BaseException:
                        # Cancelled while the handler awaited (the worker stopping): undo its
                        # writes. The checkpoint on the way out would otherwise hold this
                        # event with offsets saying it is still to come, and the partition's
                        # next owner would apply it a second time.
                        leave_cause(cause)
                        txn.rollback()
                        raise
                    else:
                        leave_cause(cause)
            part.next_offset = offset + 1
            part.dirty += 1
        if records:
            part.last_event_ms = records[-1].timestamp
        if part.dirty and self._due(part):
            await self.checkpoint(part)

    def _due(self, part: PartitionState) -> bool:
        return (
            part.projection.eager
            or part.hurry
            or part.dirty >= self.checkpoint_events
            or time.monotonic() - part.flushed_at >= self.checkpoint_interval
        )

    async def _rekey(
        self, projection: Projection, tp: TP, records: Sequence[Any], decode: Decode
    ) -> None:
        """Copy a source batch to the repartition topic under each event's view key.

        At-least-once: after a crash the copies are written again, and the folding stage
        skips them by their origin offset. Each batch ends with a watermark in every
        partition (no value, the batch's last origin offset).
        """
        assert projection.by is not None and projection.repartition is not None
        view, by = projection.view, projection.by
        partitions = view.partitions or 1
        target = projection.repartition.get_topic_name()
        send = self.app.producer.send
        reports_bad_input = self._reports_bad_input(projection, tp.topic)
        futures = []
        for record in records:
            try:
                event = decode(record)
                if projection.every_event is None and type(event) not in projection.handlers:
                    continue  # not this view's: its key may not even exist
                key = view.check_key(by(event))
            except BadEvent as exc:
                if reports_bad_input:
                    await self.app.dead_letters.send(record, exc.kind, exc.reason)
                continue
            except Exception as exc:  # the key function failed on this event
                await self.app.dead_letters.send(
                    record,
                    "bad-view-key",
                    f"by(event) for view {view.name!r}: {exc!r}",
                    error=exc,  # the user's key function: its traceback, the first time
                )
                continue
            headers = [
                *(record.headers or ()),
                (HEADER_ORIGIN, b"%s\0%d\0%d" % (tp.topic.encode(), tp.partition, record.offset)),
            ]
            try:
                sent = await send(
                    target,
                    view.wire_key(key),
                    record.value,
                    view.partition_of(key, partitions),
                    None,
                    headers,
                )
            except (KafkaError, ValueError) as exc:  # refused before it left: too large...
                await self.app.dead_letters.send(
                    record,
                    "repartition-failed",
                    f"copy to {target!r} for view {view.name!r}: {exc!r}",
                )
                continue
            futures.append(sent)
        await asyncio.gather(*futures)
        # Tell every partition that nothing before this is left to come from ``tp``: a
        # consistency token on the source then has a position each partition can reach.
        watermark = [
            (HEADER_ORIGIN, b"%s\0%d\0%d" % (tp.topic.encode(), tp.partition, records[-1].offset))
        ]
        futures = [
            await send(target, WATERMARK_KEY, None, partition, None, watermark)
            for partition in range(partitions)
        ]
        await asyncio.gather(*futures)

    async def checkpoint(self, part: PartitionState) -> None:
        """Make what ``part`` applied durable: its store, its changelog and, for a live
        partition, the group's offset (on Kafka, one transaction with its source's other
        views)."""
        if part.fenced:
            return
        producer = self._transaction(part)
        if producer is not None:
            try:
                await self._checkpoint_in_transaction(part, producer)
            except Fenced as exc:
                self._drop_fenced(part, exc)
            return
        await part.projection.before_checkpoint(part)
        store, txn = part.store, part.txn
        rows = txn.encoded()
        offsets = part.projection.stored_offsets(part)
        index_changes, delta = store.plan(rows, part.projection.view.indexer())
        outputs = part.outbox.take() if part.outbox is not None else []
        if outputs:  # the changelog and the outputs first, together; the store after them
            sent = await self._send_with_changelog(part, changelog_records(rows, offsets), outputs)
            store.write(rows, index_changes, delta, offsets, sent[-1] if sent else None)
            txn.clear()
            self._checkpointed(part, offsets)
        else:
            store.write(rows, index_changes, delta, offsets, None, pending=bool(rows))
            txn.clear()
            self._checkpointed(part, offsets)
            if rows:
                await self._write_changelog(part, rows)
        part.projection.after_checkpoint(part)
        if part.mode != "live":
            return  # the live generation's offsets are the group's
        await self._commit(part.tp)

    def _transaction(self, part: PartitionState) -> PartitionProducer | None:
        if self.transactions is None or part.mode != "live":
            return None
        return self.transactions.get(part.tp)

    async def _checkpoint_in_transaction(
        self, part: PartitionState, producer: PartitionProducer
    ) -> None:
        """Checkpoint ``part`` and every other view folded from its source partition in one
        transaction (what their handlers published is in it already); write the stores once
        it is committed. ``Fenced`` if it is not: the stores keep the last committed state."""
        tp = part.tp
        parts = [part] + [
            other
            for projection in self.projections_of(tp.topic)
            if (other := self.partitions.active.get(slot(projection, tp))) not in (None, part)
        ]
        done = []
        with producing(producer):
            try:
                for each in parts:
                    await each.projection.before_checkpoint(each)
                    rows, offsets = each.txn.encoded(), each.projection.stored_offsets(each)
                    sent: list[int] = []
                    outputs = each.outbox.take() if each.outbox is not None else []
                    if outputs:  # every partition's at once, in the transaction begun here
                        await producer.begin()
                        sends = [send_all(producer, *output) for output in outputs]
                        if rows:
                            records = changelog_records(rows, offsets)
                            sends.append(send_all(producer, each.changelog, tp.partition, records))
                        offsets_sent = await asyncio.gather(*sends)
                        sent = offsets_sent[-1] if rows else []
                    elif rows:
                        records = changelog_records(rows, offsets)
                        sent = await send_all(producer, each.changelog, tp.partition, records)
                    done.append((each, rows, offsets, sent))
            except KafkaError as exc:  # refused: fenced (the sends' futures say so)
                raise producer.failed(exc) from exc
            await producer.commit({tp: min(offsets[tp] for _, _, offsets, _ in done)})
        for each, rows, offsets, sent in done:
            store = each.store
            index_changes, delta = store.plan(rows, each.projection.view.indexer())
            store.write(rows, index_changes, delta, offsets, sent[-1] if sent else None)
            each.txn.clear()
            self._checkpointed(each, offsets)
            each.projection.after_checkpoint(each)

    def _checkpointed(self, part: PartitionState, offsets: dict[tuple[str, int], int]) -> None:
        view = part.projection.view
        if part.mode == "live":
            self.events_processed[view.name] = self.events_processed.get(view.name, 0) + part.dirty
        part.status.positions = offsets
        if part.last_event_ms is not None:
            part.status.last_event_ms = part.last_event_ms
        view.advanced()
        part.dirty = 0
        part.hurry = False
        part.flushed_at = time.monotonic()

    def _drop_fenced(self, part: PartitionState, exc: Fenced) -> None:
        """Forget ``part``'s source partition here, in memory, unwritten: another worker has
        it (or will fold it again from the last commit)."""
        tp = part.tp
        dropped = [part] + [
            other
            for projection in self.projections_of(tp.topic)
            if (other := self.partitions.withdraw(slot(projection, tp))) not in (None, part)
        ]
        self.partitions.withdraw(part.slot)
        for each in dropped:
            if each.fenced:
                continue
            each.fenced = True
            each.dirty = 0
            view = each.projection.view
            if view.stores.get(tp.partition) is each.store:
                view.stores.pop(tp.partition, None)
                view.status.pop(tp.partition, None)
            each.store.close()
        logger.warning(
            "%s[%d]: dropped, unwritten since the last checkpoint (%s); its next owner folds it",
            tp.topic, tp.partition, exc,
        )  # fmt: skip

    async def _commit(self, tp: TP) -> None:
        """Commit what every projection reading ``tp`` has done: for folds, only a hint of
        where to fetch from (their stores hold the truth); for re-keying, its progress."""
        done = [
            part.projection.stored_offsets(part)[tp]  # a reactor's is behind what it took
            for projection in self.projections_of(tp.topic)
            if (part := self.partitions.active.get(slot(projection, tp))) is not None
        ]
        if tp in self._rekeyed:
            done.append(self._rekeyed[tp])
        if not done:
            return
        try:
            await commit_offsets(self.app.consumer, {tp: min(done)})
        except Exception as exc:
            logger.warning("committing %s failed: %r", tp, exc)

    async def _send_with_changelog(
        self,
        part: PartitionState,
        changelog: Sequence[OutboxRecord],
        outputs: Sequence[tuple[str, int, Sequence[OutboxRecord]]],
    ) -> list[int]:
        """Write a checkpoint's changelog records with what its fold sent; returns the
        changelog records' offsets. The embedded broker appends them all in one write batch
        (all or nothing); elsewhere (a Kafka partition without its transaction) the outputs
        go first, so a crash repeats outputs (same event ids) and never loses one."""
        producer = self.app.producer if self.changelog_producer is None else self.changelog_producer
        appends = [*outputs, (part.changelog, part.tp.partition, changelog)]
        send_batches = getattr(producer, "send_batches", None)
        if send_batches is not None:
            return [meta.offset for meta in send_batches(appends)[-1]]
        await asyncio.gather(*(send_all(producer, *output) for output in outputs))
        return await send_all(producer, part.changelog, part.tp.partition, changelog)

    async def _write_changelog(
        self, part: PartitionState, rows: Mapping[bytes, bytes | None], *, repair: bool = False
    ) -> None:
        records = changelog_records(rows, part.projection.stored_offsets(part), repair=repair)
        producer = self.app.producer if self.changelog_producer is None else self.changelog_producer
        sent = await send_all(producer, part.changelog, part.tp.partition, records)
        part.store.confirm(sent[-1] if sent else None, rows.keys())
