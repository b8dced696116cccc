"""Global views: a view every worker holds in full, kept up to date from its topic.

Reference data (products, prices) is looked up by handlers of other topics under any key,
so it cannot be partitioned like them. Each worker reads every partition of a global
view's topic itself, outside the consumer group (as restores and standbys read
changelogs), into one RocksDB database of its own. The rows and the source offsets they
reflect go in one write batch, so a worker killed at any point resumes where its copy
stands: a fold handler sees each event once per worker. There is no changelog: the topic
is the log, so it should keep what the view needs (compacted, or kept forever).

A worker is not ready until each global view has read its topic up to the end it found
on starting; later, the view trails its topic by what the worker has not fetched yet
(``lag``, on ``GET /views`` and the status page).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from faust.types import TP
from mode import Service

from belvedere.agents.projection import Projection
from belvedere.agents.surface import AgentsApp
from belvedere.streams.envelope import BadEvent
from belvedere.streams.readers import PartitionReader, reader_for
from belvedere.streams.records import Event
from belvedere.streams.topics import EventTopic
from belvedere.tables.store import PartitionStore, StoreBudget
from belvedere.tables.transaction import PartitionTransaction, UnencodableState
from belvedere.tables.view import PartitionStatus, View

__all__ = ["GlobalView", "GlobalViews"]

logger = logging.getLogger(__name__)

#: Seconds between two looks at a global view's topic once it has read to the end.
POLL = 0.2


class GlobalView(View):
    """A view replicated to every worker: ``get``, ``scan``, ``lookup`` and ``count`` answer
    from this worker's copy, whatever the key, in any handler or HTTP request.

    Its rows are the latest event per key of ``topic`` (keyed by ``key_of``), unless
    ``app.projection(topic, view=...)`` gives fold handlers ``(view, event)``."""

    replicated = True

    topic: EventTopic
    key_of: Callable[[Any], Any]
    #: The fold handlers (empty: the latest event per key is the row).
    folds: Projection
    #: Records of the topic this worker has not applied, as of its last look (None: not
    #: looked yet).
    lag: int | None

    def __init__(
        self,
        app_id: str,
        name: str,
        value_type: Any,
        key_type: type,
        topic: EventTopic,
        key_of: Callable[[Any], Any],
    ) -> None:
        super().__init__(app_id, name, value_type, key_type, (), partitions=1)
        define = object.__setattr__
        define(self, "topic", topic)
        define(self, "key_of", key_of)
        define(self, "folds", Projection(topic, self))
        define(self, "lag", None)

    def fold_with(self, source: EventTopic, events: Sequence[type[Event]] | None) -> Any:
        """The decorator ``app.projection(source, view=self)`` returns."""
        if source is not self.topic:
            raise ValueError(
                f"global view {self.name!r} is kept from {self.topic.get_topic_name()!r}, "
                f"not {source.get_topic_name()!r}"
            )
        return lambda target: self.folds.register(target, events)

    async def row_of(self, txn: PartitionTransaction, event: Any) -> None:
        """Apply one event: its fold handler's writes, or the event as its key's row."""
        handlers = self.folds.handlers
        if handlers:
            handler = handlers.get(type(event))
            if handler is not None:
                result = handler.fn(txn, event)
                if handler.is_async:
                    await result
            return
        txn[self.key_of(event)] = event


class GlobalViews(Service):
    """Every global view of an app, each followed from its topic on this worker."""

    def __init__(self, app: AgentsApp, **kwargs: Any) -> None:
        self.app = app
        self.views: dict[str, GlobalView] = {}
        self._caught_up: set[str] = set()
        self._budget: StoreBudget | None = None
        self._reader: PartitionReader | None = None
        super().__init__(**kwargs)

    def add(self, view: GlobalView) -> None:
        self.views[view.name] = view

    def caught_up(self) -> bool:
        """Each global view has read its topic to the end it found on starting."""
        return self._caught_up >= self.views.keys()

    def store_path(self, view: GlobalView) -> Path:
        return Path(self.app.conf.datadir) / "global-views" / f"{view.name}.db"

    async def on_start(self) -> None:
        self._budget = StoreBudget()
        for view in self.views.values():
            view.partitions = 1
            view.stores[0] = PartitionStore(self.store_path(view), self._budget)
            view.status[0] = PartitionStatus(restore_started=time.monotonic())
            await view.topic.maybe_declare()

    async def on_shutdown(self) -> None:
        # After the follow task has ended (mode cancels it after on_stop): never a write
        # to a closed store.
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        for view in self.views.values():
            store = view.stores.pop(0, None)
            view.status.pop(0, None)
            if store is not None:
                store.close()

    @Service.task
    async def _follow(self) -> None:
        if not self.views:
            return
        self._reader = reader_for(self.app)
        await self._reader.connect()
        while not self.should_stop:
            read = 0
            for view in self.views.values():
                try:
                    read += await self._read(view, self._reader)
                except Exception:  # the next look tries again
                    logger.exception("global view %s: reading %s failed", view.name, view.topic)
            if not read:
                await self.sleep(POLL)

    async def catch_up(self, reader: PartitionReader) -> int:
        """Read every global view to its topic's end now (the test driver's step, before
        the projections fold); returns the records read."""
        return sum([await self._read(view, reader) for view in self.views.values()])

    async def _read(self, view: GlobalView, reader: PartitionReader) -> int:
        """Apply what the topic has past the copy's offsets, up to its end now; returns
        the records read."""
        name = view.topic.get_topic_name()
        count = view.topic.partitions or self.app.conf.topic_partitions
        store, status = view.stores[0], view.status[0]
        applied = store.source_offsets()
        ranges = {}
        for tp, (start, end) in (await reader.offsets([TP(name, p) for p in range(count)])).items():
            position = max(applied.get((name, tp.partition), 0), start)
            status.positions[(name, tp.partition)] = position
            if position < end:
                ranges[tp] = (position, end)
        lag = sum(end - start for start, end in ranges.values())
        object.__setattr__(view, "lag", lag)
        if status.state != "serving":
            status.restore_total = max(status.restore_total, status.restore_done + lag)
        read = 0
        txn = PartitionTransaction(view, store, 0, 1)
        async for tp, records in reader.read(ranges):
            for record in records:
                await self._apply(view, txn, record)
            read += len(records)
            last = records[-1]
            self._write(view, txn, {(name, tp.partition): last.offset + 1})
            status.last_event_ms = last.timestamp
            object.__setattr__(view, "lag", max((view.lag or 0) - len(records), 0))
            if status.state != "serving":
                status.restore_done += len(records)
        # Read to each range's end: what follows its last record (a transaction's commit
        # marker, an aborted one) is done with too.
        if ranges:
            self._write(view, txn, {(name, tp.partition): end for tp, (_, end) in ranges.items()})
        if view.name not in self._caught_up:
            status.state = "serving"
            status.restore_finished = time.monotonic()
            self._caught_up.add(view.name)
            logger.info("global view %s: caught up with %s", view.name, name)
        object.__setattr__(view, "lag", 0)
        return read

    @staticmethod
    def _write(
        view: GlobalView, txn: PartitionTransaction, offsets: dict[tuple[str, int], int]
    ) -> None:
        """The rows applied since the last write, and the offsets they reach, at once."""
        store = view.stores[0]
        rows = txn.encoded()
        changes, delta = store.plan(rows, view.indexer())
        store.write(rows, changes, delta, offsets, None)
        txn.clear()
        view.status[0].positions.update(offsets)
        view.advanced()

    async def _apply(self, view: GlobalView, txn: PartitionTransaction, record: Any) -> None:
        try:
            event = view.topic.codec.decode(
                record.value,
                headers=record.headers,
                timestamp=record.timestamp / 1000.0,
                source=f"{record.topic}-{record.partition}-{record.offset}",
            )
        except BadEvent as exc:
            await self.app.dead_letters.send(record, exc.kind, exc.reason, view=view.name)
            return
        txn.savepoint()
        txn.record = record
        try:
            await view.row_of(txn, event)
            txn.release()
        except Exception as exc:  # a bad event must not stop the view
            txn.rollback()
            kind = "unencodable-state" if isinstance(exc, UnencodableState) else "handler-error"
            await self.app.dead_letters.send(
                record, kind, repr(exc), view=view.name, handler="global view", error=exc
            )
