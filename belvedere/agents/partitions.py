"""The partition runtime: which view partitions this worker folds, and in which generation.

For each (view, source partition), a :data:`~belvedere.agents.projection.Slot`, a worker
has the generation it serves (*active*) and, while the view is rebuilt, the one being built
next to it. Live batches, a rebuild's replay and control loop, the checkpoint timer and
rebalances all change them: one at a time, under ``lock``. Serving a partition is what
makes its store the one the view's reads see; switching hands a slot from the old
generation to the new one once the new one holds all the old one served.

Checkpointing stays the engine's (it writes stores, changelogs and Kafka transactions): it
hands its ``checkpoint`` to the runtime, which calls it when a switch needs one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from belvedere.agents.projection import PartitionState, Slot
from belvedere.streams.transactions import Transactions

__all__ = ["Checkpoint", "Partitions"]

#: Writes a partition's checkpoint (the engine's).
Checkpoint = Callable[[PartitionState], Awaitable[None]]


class Partitions:
    """This worker's view partitions: per slot, the generation served and the one being
    built."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        #: Held by whatever changes a partition or its slot: folds, checkpoints, switches.
        self.lock = asyncio.Lock()
        self.checkpoint = checkpoint
        #: Live source partitions' transactional producers (Kafka only).
        self.transactions: Transactions | None = None
        self._active: dict[Slot, PartitionState] = {}
        self._building: dict[Slot, PartitionState] = {}

    @property
    def active(self) -> Mapping[Slot, PartitionState]:
        """The partition served for each slot."""
        return self._active

    @property
    def building(self) -> Mapping[Slot, PartitionState]:
        """The partition of a generation being built, for each slot of a rebuilt view."""
        return self._building

    def all(self) -> list[PartitionState]:
        return [*self._active.values(), *self._building.values()]

    def serve(self, part: PartitionState) -> None:
        """Have ``part``'s view read from ``part`` for its partition, from now on."""
        view, partition = part.projection.view, part.tp.partition
        view.stores[partition] = part.store
        view.status[partition] = part.status
        part.status.state = "serving"
        old = self._active.get(part.slot)
        self._active[part.slot] = part
        if old is not None and old.changelog != part.changelog and self.transactions:
            producer = self.transactions.get(part.tp)  # a rebuild's switch: the old retires
            if producer is not None:
                producer.forget(old.changelog)

    def build(self, part: PartitionState) -> None:
        """Fold ``part``, of a generation being built, next to its slot's served one."""
        self._building[part.slot] = part

    async def switch(self, new: PartitionState) -> PartitionState:
        """Serve ``new``, being built, instead of its slot's served partition (lock held,
        both at one offset); returns the one it replaced, for its files to be deleted."""
        old = self._active[new.slot]
        if old.dirty:  # what it sends at a checkpoint (final results, outbox) goes out once
            await self.checkpoint(old)
        if new.dirty:  # reads see the store: it must hold all the old one served, first
            await self.checkpoint(new)
        del self._building[new.slot]
        new.mode = "live"
        new.sought = True
        self.serve(new)
        return old

    def abandon(self, slot: Slot) -> PartitionState | None:
        """Stop building ``slot``'s new generation; the partition it was, if any."""
        return self._building.pop(slot, None)

    def withdraw(self, slot: Slot) -> PartitionState | None:
        """Stop serving ``slot`` (its source partition was revoked or fenced); the
        partition it was, if any, its store still open."""
        return self._active.pop(slot, None)

    def close(self) -> None:
        """Close every partition's store (the worker is stopping)."""
        for part in self.all():
            part.store.close()
        self._active.clear()
        self._building.clear()
