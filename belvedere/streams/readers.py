"""Reading topic partitions from an offset to an end, outside faust's consumer.

Views restore their partitions from their changelogs with these, while faust's own
consumer stays on the source topics. Every call takes all the partitions of a restore at
once: on Kafka, one offsets request and one fetch per broker, not one per partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from faust.types import TP

from belvedere.compat.aiokafka import back_off_failed_metadata, client_of
from belvedere.streams.fetcher import GIVE_UP_AFTER, LogRecord, fetch_ranges
from belvedere.streams.surface import StreamsApp

__all__ = ["PartitionReader", "ReaderClosed", "reader_for"]

Ranges = Mapping[TP, tuple[int, int]]
T = TypeVar("T")


class ReaderClosed(Exception):
    """The reader was closed while a read went on."""


class PartitionReader:
    async def connect(self) -> None:
        """Be ready to read (connected), ahead of the first call."""

    async def offsets(self, tps: Sequence[TP]) -> dict[TP, tuple[int, int]]:
        """(log start, log end) of each partition."""
        raise NotImplementedError

    async def offsets_for_time(self, tps: Sequence[TP], timestamp_ms: int) -> dict[TP, int]:
        """The first offset of each partition whose record is at ``timestamp_ms`` or later
        (the log end if none is)."""
        raise NotImplementedError

    def read(self, ranges: Ranges) -> AsyncIterator[tuple[TP, Sequence[Any]]]:
        """Batches of each partition's records with offsets in [start, end). Reads may
        go on at once (HTTP requests share a worker's reader)."""
        raise NotImplementedError

    async def close(self) -> None:
        pass


class EmbeddedReader(PartitionReader):
    def __init__(self, log: Any) -> None:
        self.log = log

    async def offsets(self, tps: Sequence[TP]) -> dict[TP, tuple[int, int]]:
        return {
            tp: (
                self.log.start_offset(tp.topic, tp.partition),
                self.log.end_offset(tp.topic, tp.partition),
            )
            for tp in tps
        }

    async def offsets_for_time(self, tps: Sequence[TP], timestamp_ms: int) -> dict[TP, int]:
        # Like Kafka's time index: a binary search that takes timestamps to rise with offsets.
        out = {}
        for tp in tps:
            low = self.log.start_offset(tp.topic, tp.partition)
            high = self.log.end_offset(tp.topic, tp.partition)
            while low < high:
                middle = (low + high) // 2
                found = self.log.read(tp.topic, tp.partition, middle, 1)
                if not found:
                    break
                if found[0].timestamp_ms < timestamp_ms:
                    low = min(found[0].offset + 1, high)
                else:
                    high = middle
            out[tp] = low
        return out

    async def read(self, ranges: Ranges) -> AsyncIterator[tuple[TP, Sequence[Any]]]:
        for tp, (start, end) in ranges.items():
            offset = start
            while offset < end:
                batch = [
                    r
                    for r in self.log.read(tp.topic, tp.partition, offset, 10_000)
                    if r.offset < end
                ]
                if not batch:
                    break
                yield tp, batch
                offset = batch[-1].offset + 1

    async def close(self) -> None:
        self.log.release()


class KafkaReader(PartitionReader):
    """Reads on a thread of its own, with its own event loop, as faust's consumer does.

    On the worker's loop, every wait for the broker would take turns with folding. On its
    own thread, the next batches are fetched while one is folded. Records are unpacked by
    :mod:`belvedere.streams.fetcher`, not the consumer's fetcher: the consumer's
    per-record Python shares the GIL with the fold (docs/benchmarks.md, run D). The
    consumer serves the offset lookups, and its client the fetches. Reads are committed
    only: "log end" is the last stable offset, and aborted transactions are left out.
    """

    #: Batches read ahead of the one being folded.
    READ_AHEAD = 4
    #: Seconds a read waits for a deleted topic or a truncated log to come back.
    give_up_after = GIVE_UP_AFTER

    def __init__(self, bootstrap: str, auth: Mapping[str, Any] | None = None) -> None:
        self.bootstrap = bootstrap
        #: aiokafka's TLS and SASL arguments (``BrokerSecurity.aiokafka_kwargs()``).
        self.auth = dict(auth or {})
        self._consumer: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        #: The reads going on: each one's queue and the task filling it (on the reader's
        #: thread). Reads may overlap: they share the consumer's connections.
        self._reads: dict[asyncio.Queue[Any], asyncio.Future[None]] = {}
        self._starting: asyncio.Future[Any] | None = None
        self._closing = False

    def _start_thread(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=loop.run_forever, name="belvedere-reader", daemon=True
            )
            self._thread.start()
            self._loop = loop
        return self._loop

    def _call(self, coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        """Run ``coro`` on the reader's thread; awaitable from the caller's loop."""
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._start_thread()))

    async def _client(self) -> Any:
        if self._consumer is None:
            if self._starting is None:  # reads that begin together wait for one start
                self._starting = asyncio.ensure_future(self._start_consumer())
            try:
                self._consumer = await asyncio.shield(self._starting)
            finally:
                if self._starting.done():
                    self._starting = None
        return self._consumer

    async def _start_consumer(self) -> Any:
        from aiokafka import AIOKafkaConsumer

        # read_committed: a log's end is its last stable offset, past which a transaction
        # may still be aborted (a fenced worker's checkpoint).
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            **self.auth,
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await consumer.start()
        back_off_failed_metadata(client_of(consumer))
        return consumer

    async def connect(self) -> None:
        await self._call(self._client())

    async def offsets(self, tps: Sequence[TP]) -> dict[TP, tuple[int, int]]:
        return await self._call(self._offsets(tps))

    async def _offsets(self, tps: Sequence[TP]) -> dict[TP, tuple[int, int]]:
        from aiokafka import TopicPartition

        consumer = await self._client()
        ktps = {TopicPartition(tp.topic, tp.partition): tp for tp in tps}
        await _learn_topics(consumer, ktps)
        starts = await consumer.beginning_offsets(list(ktps))
        ends = await consumer.end_offsets(list(ktps))
        return {tp: (starts[k], ends[k]) for k, tp in ktps.items()}

    async def offsets_for_time(self, tps: Sequence[TP], timestamp_ms: int) -> dict[TP, int]:
        return await self._call(self._offsets_for_time(tps, timestamp_ms))

    async def _offsets_for_time(self, tps: Sequence[TP], timestamp_ms: int) -> dict[TP, int]:
        from aiokafka import TopicPartition

        consumer = await self._client()
        ktps = {TopicPartition(tp.topic, tp.partition): tp for tp in tps}
        await _learn_topics(consumer, ktps)
        found = await consumer.offsets_for_times(dict.fromkeys(ktps, timestamp_ms))
        ends = await consumer.end_offsets(list(ktps))
        return {tp: ends[k] if found.get(k) is None else found[k].offset for k, tp in ktps.items()}

    async def read(self, ranges: Ranges) -> AsyncIterator[tuple[TP, Sequence[Any]]]:
        if not any(end > start for start, end in ranges.values()):
            return
        batches: asyncio.Queue[Any] = await self._call(self._start_fetching(ranges))
        loop = self._loop
        try:
            while True:
                if self._closing or self._loop is not loop:
                    raise ReaderClosed("the reader was closed during the read")
                item = await self._call(batches.get())
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not self._closing and loop is self._loop:  # else closing stopped it
                loop.call_soon_threadsafe(self._forget, batches)

    def _forget(self, batches: asyncio.Queue[Any]) -> None:
        """On the reader's thread: stop fetching for a read that ended or was left."""
        fetching = self._reads.pop(batches, None)
        if fetching is not None:
            fetching.cancel()

    async def _start_fetching(self, ranges: Ranges) -> asyncio.Queue[Any]:
        """On the reader's thread: a task that fetches the ranges into a bounded queue of
        batches, then _END (or the error that stopped it)."""
        batches: asyncio.Queue[Any] = asyncio.Queue(self.READ_AHEAD)
        self._reads[batches] = asyncio.ensure_future(self._fetch(ranges, batches))
        return batches

    async def _stop(self) -> None:
        """On the reader's thread: stop the reads left unfinished, then the consumer. A read
        still waiting for a batch (another task's) gets ``ReaderClosed``."""
        for batches, fetching in list(self._reads.items()):
            del self._reads[batches]
            fetching.cancel()
            await asyncio.wait([fetching])
            while not batches.empty():
                batches.get_nowait()
            batches.put_nowait(ReaderClosed("the reader was closed during the read"))
        if self._starting is not None:  # a start under way: let it end, to stop what it made
            with contextlib.suppress(Exception):
                self._consumer = await self._starting
            self._starting = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def _fetch(self, ranges: Ranges, batches: asyncio.Queue[Any]) -> None:
        async def deliver(tp: TP, records: list[LogRecord]) -> None:
            await batches.put((tp, records))

        async def log_starts(tps: list[TP]) -> dict[TP, int]:
            return {tp: start for tp, (start, _) in (await self._offsets(tps)).items()}

        try:
            consumer = await self._client()
            await fetch_ranges(client_of(consumer), ranges, deliver, log_starts, self.give_up_after)
        except Exception as exc:
            await batches.put(exc)
        else:
            await batches.put(_END)

    async def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or self._closing:
            return
        self._closing = True  # reads call the thread no more: it stops
        try:
            await self._call(self._stop())
            loop.call_soon_threadsafe(loop.stop)
            await asyncio.to_thread(thread.join)
            loop.close()
            self._loop = self._thread = None
        finally:
            self._closing = False


async def _learn_topics(consumer: Any, tps: Iterable[Any]) -> None:
    """Have the client's metadata cover these partitions before an offsets request: an
    unknown one fails the request, and aiokafka tries again only after its retry backoff
    (100 ms, most of a rebuild's positioning)."""
    client = client_of(consumer)
    unknown = {tp.topic for tp in tps if client.cluster.leader_for_partition(tp) is None}
    await asyncio.gather(*(client.add_topic(topic) for topic in unknown))  # one update
    if any(client.cluster.leader_for_partition(tp) is None for tp in tps):
        await client.force_metadata_update()  # tracked already, but not in the metadata yet


#: What a reader's thread hands over after the last batch.
_END = object()


def reader_for(app: StreamsApp) -> PartitionReader:
    url = app.conf.broker[0]
    if url.scheme == "embedded":
        return EmbeddedReader(app.transport.acquire_log())
    bootstrap = ",".join(f"{u.host}:{u.port or 9092}" for u in app.conf.broker)
    return KafkaReader(bootstrap, app.broker_security.aiokafka_kwargs())
