"""Catching view partitions up with their changelogs: a restore, or a standby's follow.

One pass takes many partitions at once (on Kafka: one offsets request, one assignment). A
local copy that no longer matches its changelog (the changelog was reset or recreated, or
compaction or retention removed what it still needed) is deleted and read again from the
start of the log, so a recovery never crashes or hangs on those shapes (faust issues
158, 176, 597, 651).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from faust.types import TP

from belvedere.streams.readers import PartitionReader
from belvedere.tables.changelog import Restorer, reset_epoch
from belvedere.tables.store import PartitionStore, StoreBudget
from belvedere.tables.view import PartitionStatus, View

__all__ = ["Target", "catch_up"]

logger = logging.getLogger(__name__)


@dataclass
class Target:
    """One view partition to catch up with the changelog partition it is keyed by."""

    view: View
    store: PartitionStore
    status: PartitionStatus | None = None
    restorer: Restorer | None = None
    start: int = 0
    end: int = 0
    #: The log start at which the local copy's reset epoch was last checked: a target
    #: caught up again and again (a standby) reads the log's head only when it moved.
    epoch_checked_at: int | None = None


async def catch_up(reader: PartitionReader, targets: dict[TP, Target], budget: StoreBudget) -> None:
    """Apply each changelog partition's complete checkpoints past the store's offset.

    Afterwards each target's ``restorer`` holds what it applied and the unfinished tail it
    did not (see :meth:`Restorer.finish`); ``store`` may be a new, emptied store.
    """
    bounds = await reader.offsets(list(targets))
    # A local copy is checked against the changelog's reset epoch (its first record); an
    # empty one learns the epoch as it reads from the start.
    epochs: dict[TP, bytes | None] = dict.fromkeys(targets)
    checked = {
        ctp: (low, low + 1)
        for ctp, (low, high) in bounds.items()
        if high > low
        and targets[ctp].store.changelog_offset() is not None
        and targets[ctp].epoch_checked_at != low
    }
    async for ctp, batch in reader.read(checked):
        epochs[ctp] = reset_epoch(batch[0])
    for ctp, target in targets.items():
        if ctp not in checked and target.epoch_checked_at is not None:
            epochs[ctp] = target.store.epoch()  # checked before, at this same log start

    ranges: dict[TP, tuple[int, int]] = {}
    for ctp, target in targets.items():
        (start_of_log, end), store = bounds[ctp], target.store
        local = store.changelog_offset()
        stale = local is not None and (
            local >= end or local + 1 < start_of_log or store.epoch() != epochs[ctp]
        )
        if stale:
            logger.warning(
                "view %s[%d]: local state (changelog offset %s) does not match the changelog [%d, %d); rebuilding it",
                target.view.name, ctp.partition, local, start_of_log, end,
            )  # fmt: skip
            path, old = store.path, store
            store.destroy()
            store = target.store = PartitionStore(path, budget)
            target.view.replace_store(ctp.partition, old, store)
            local = None
        target.start = start_of_log if local is None else local + 1
        target.end = end
        target.epoch_checked_at = start_of_log
        target.restorer = Restorer(target.view, store)
        if target.status is not None:
            target.status.restore_total = max(end - target.start, 0)
            target.view.restoring(ctp.partition, store, target.status)
        ranges[ctp] = (target.start, end)

    async for ctp, batch in reader.read(ranges):
        target = targets[ctp]
        assert target.restorer is not None
        target.restorer.feed(batch)
        if target.status is not None:
            target.status.restore_done = batch[-1].offset + 1 - target.start
    for target in targets.values():
        if target.status is not None:
            # What was read: the range's end may be past a commit marker and nothing more.
            target.status.restore_total = target.status.restore_done
            target.status.restore_finished = time.monotonic()
