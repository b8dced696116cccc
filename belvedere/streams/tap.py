"""Taking fetched batches off faust's consumer before its per-event path.

faust delivers each fetched record through the Conductor to a stream, with several
event-loop passes and new tasks per event; that is most of its cost. A consumer with
:class:`BatchTap` hands the records of the partitions a tap claims to the tap, a whole
fetched batch at a time, and gives faust only the rest. Both brokers get it: the App builds
its transport with :func:`tapped`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from faust.types import TP

__all__ = ["BatchTap", "Tap", "tapped"]


class Tap(Protocol):
    def claims(self, tp: TP) -> bool: ...

    async def on_batch(self, batches: Mapping[TP, Sequence[Any]]) -> None: ...

    async def flush(self) -> None: ...


class BatchTap:
    """Consumer mixin; the app's ``batch_tap`` (if any) gets its partitions' records."""

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:
        records = await super()._getmany(active_partitions, timeout)  # type: ignore[misc]
        tap: Tap | None = getattr(self.app, "batch_tap", None)  # type: ignore[attr-defined]
        if tap is None or not records:
            return records
        claimed = {tp: batch for tp, batch in records.items() if tap.claims(tp)}
        if not claimed:
            return records
        # A worker stopping cancels the fetch; the batch is finished first (on_stop's flush
        # waits for it), or the flush would write a batch half done: an aggregate's row
        # without the events it decided, sent or not.
        await asyncio.shield(tap.on_batch(claimed))
        return {tp: batch for tp, batch in records.items() if tp not in claimed}

    async def on_stop(self) -> None:
        """Let the tap write what it holds while the consumer can still commit."""
        tap: Tap | None = getattr(self.app, "batch_tap", None)  # type: ignore[attr-defined]
        if tap is not None:
            await tap.flush()
        await super().on_stop()  # type: ignore[misc]


_TAPPED: dict[type, type] = {}


def tapped(transport_cls: type) -> type:
    """A subclass of a faust Transport whose consumer has :class:`BatchTap`."""
    found = _TAPPED.get(transport_cls)
    if found is None:
        consumer = type(
            f"Tapped{transport_cls.Consumer.__name__}", (BatchTap, transport_cls.Consumer), {}
        )
        found = type(f"Tapped{transport_cls.__name__}", (transport_cls,), {"Consumer": consumer})
        found.__module__ = transport_cls.__module__
        _TAPPED[transport_cls] = found
    return found
