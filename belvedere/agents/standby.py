"""Standby replicas of views: warm copies of partitions that another worker serves.

faust's assignor already chooses standbys (``table_standby_replicas``, 1 by default) for
every partition of the topics a worker subscribes to, and prefers a partition's standby
when it moves its active. Views are not faust tables, so faust would not fill those
standbys; this keeps, for each standby partition of a projection's source, the view
partition's store caught up with its changelog (never serving it, never writing the
changelog). When the partition is assigned here, its restore reads only what the
standby had not yet applied.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from faust.types import TP

from belvedere.agents.engine_surface import EngineSurface
from belvedere.agents.projection import slot
from belvedere.console import DETAIL
from belvedere.streams.readers import PartitionReader, reader_for
from belvedere.tables.recovery import Target, catch_up
from belvedere.tables.store import PartitionStore

__all__ = ["Standbys"]

logger = logging.getLogger(__name__)

#: Seconds between two reads of the standbys' changelogs.
POLL = 0.5


class Standbys:
    """This worker's standby view partitions, keyed by changelog partition."""

    def __init__(self, engine: EngineSurface) -> None:
        self.engine = engine
        self.app = engine.app
        self.targets: dict[TP, Target] = {}
        self._reader: PartitionReader | None = None
        self._lock = asyncio.Lock()

    def _wanted(self) -> dict[TP, tuple[Any, int, Path]]:
        engine = self.engine
        try:
            standbys = self.app.assignor.assigned_standbys()
            actives = self.app.assignor.assigned_actives()
        except Exception:  # no assignment yet
            return {}
        wanted = {}
        for tp in {*standbys, *actives}:
            for projection in engine.projections_of(tp.topic):
                if slot(projection, tp) in engine.partitions.active:
                    continue
                view = projection.view
                ctp = TP(view.changelog_topic_for(view.generation), tp.partition)
                # A standby becoming active stays one until the engine's restore takes its
                # store over (``release``): dropped before, max_lag reads found no copy.
                if tp in standbys or ctp in self.targets:
                    wanted[ctp] = (view, view.generation, engine.store_dir(view, view.generation))
        return wanted

    def _reassign(self) -> None:
        wanted = self._wanted()
        for ctp in [c for c in self.targets if c not in wanted]:
            target = self.targets.pop(ctp)
            if target.view.changelog_topic_for(target.view.generation) == ctp.topic:
                target.store.close()  # kept: it may be wanted again
            else:
                target.store.destroy()  # a retired generation's copy
            self._forget(target, ctp.partition)
        budget = self.engine.budget
        assert budget is not None
        for ctp, (view, _, directory) in wanted.items():
            if ctp not in self.targets:
                store = PartitionStore(directory / f"{ctp.partition}.db", budget)
                self.targets[ctp] = Target(view, store)
                view.standby_stores[ctp.partition] = store
                logger.info("view %s[%d]: standby here", view.name, ctp.partition, extra=DETAIL)

    @staticmethod
    def _forget(target: Target, partition: int) -> None:
        target.view.standby_lag.pop(partition, None)
        if target.view.standby_stores.get(partition) is target.store:
            del target.view.standby_stores[partition]

    async def release(self, path: Path) -> tuple[PartitionStore, int] | None:
        """Hand over the standby store at ``path``, still open: the partition is becoming
        active here, and its restore goes on from this copy (not reopening it saves a
        RocksDB open, tens of ms each on a busy machine, in the middle of a takeover).

        Returns the store and the changelog records it lagged at its last catch-up; None
        if there is no caught-up standby there.
        """
        async with self._lock:
            for ctp, target in list(self.targets.items()):
                if target.store.path == path:
                    lag = target.view.standby_lag.get(ctp.partition)
                    del self.targets[ctp]
                    self._forget(target, ctp.partition)
                    if lag is None:  # never caught up: nothing to read from it yet
                        target.store.close()
                        return None
                    return target.store, lag
        return None

    async def follow(self) -> None:
        """Keep every standby caught up, for as long as the worker runs."""
        engine = self.engine
        while not engine.should_stop:
            await engine.sleep(POLL)
            if engine.app.rebalancing:
                continue
            try:
                async with self._lock:
                    self._reassign()
                    if self.targets:
                        await self._catch_up()
            except Exception:  # the next poll tries again
                logger.exception("standby views: catching up failed")

    async def _catch_up(self) -> None:
        if self._reader is None:
            self._reader = reader_for(self.app)
        budget = self.engine.budget
        assert budget is not None
        targets = dict(self.targets)
        await catch_up(self._reader, targets, budget)
        for ctp, target in targets.items():
            assert target.restorer is not None
            unfinished = target.restorer.finish()  # read again next time
            target.view.standby_stores[ctp.partition] = target.store  # a stale copy is replaced
            local = target.store.changelog_offset()
            # Read to the end, all applied: caught up, though a transaction's commit marker
            # (or an aborted one) may follow the last record applied.
            target.view.standby_lag[ctp.partition] = (
                target.end - (target.start if local is None else local + 1) if unfinished else 0
            )

    async def close(self) -> None:
        async with self._lock:
            for ctp, target in self.targets.items():
                self._forget(target, ctp.partition)
                target.store.close()
            self.targets.clear()
            if self._reader is not None:
                await self._reader.close()
                self._reader = None
