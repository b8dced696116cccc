"""Taking fetched batches off faust's consumer before its per-event path.

faust delivers each fetched record through the Conductor to a stream, with several
event-loop passes and new tasks per event; that is most of its cost. A consumer with
:class:`BatchTap` hands the records of the partitions a tap claims to the tap, a whole
fetched batch at a time, and gives faust only the rest. Both brokers get it: the App builds
its transport with :func:`transport_for`: static subclasses of both transports, so
tracebacks name these classes and this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from faust.transport import by_url
from faust.transport.base import Transport
from faust.transport.drivers import aiokafka as faust_kafka
from faust.types import TP
from yarl import URL

from belvedere.compat.faust import FetchHook, KafkaConsumer, KafkaTransport
from belvedere.streams.conductor import Conductor
from belvedere.streams.embedded.consumer import Consumer as EmbeddedConsumer
from belvedere.streams.embedded.transport import Transport as EmbeddedTransport
from belvedere.streams.errors import BrokerError

__all__ = [
    "BatchTap",
    "Tap",
    "TappedEmbeddedTransport",
    "TappedKafkaTransport",
    "transport_for",
]


class Tap(Protocol):
    def claims(self, tp: TP) -> bool: ...

    async def on_batch(self, batches: Mapping[TP, Sequence[Any]]) -> None: ...

    async def flush(self) -> None: ...


class BatchTap(FetchHook):
    """Consumer mixin; the app's ``batch_tap`` (if any) gets its partitions' records."""

    async def on_fetched(self, records: Mapping[TP, Sequence[Any]]) -> Mapping[TP, Any]:
        tap: Tap | None = getattr(self.app, "batch_tap", None)  # type: ignore[attr-defined]
        if tap is None:
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


class TappedKafkaConsumer(BatchTap, KafkaConsumer):
    pass


class TappedKafkaTransport(KafkaTransport):
    Conductor = Conductor
    Consumer = TappedKafkaConsumer


class TappedEmbeddedConsumer(BatchTap, EmbeddedConsumer):
    pass


class TappedEmbeddedTransport(EmbeddedTransport):
    Conductor = Conductor
    Consumer = TappedEmbeddedConsumer


def transport_for(url: URL) -> type[Transport]:
    """The transport an App uses for a broker URL: its consumer with :class:`BatchTap`, its
    conductor Belvedere's (:mod:`belvedere.streams.conductor`)."""
    found = by_url(url)
    if issubclass(found, EmbeddedTransport):
        return TappedEmbeddedTransport
    if issubclass(found, faust_kafka.Transport):
        return TappedKafkaTransport
    raise BrokerError(f"{url.scheme}://: Belvedere runs on embedded:// or kafka:// brokers")
