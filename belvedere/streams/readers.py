"""Reading topic partitions from an offset to an end, outside faust's consumer.

Views restore their partitions from their changelogs with these, while faust's own
consumer stays on the source topics. Every call takes all the partitions of a restore at
once: on Kafka, one assignment and one offsets request, not one per partition.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from faust.types import TP

__all__ = ["PartitionReader", "reader_for"]

Ranges = Mapping[TP, tuple[int, int]]


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
        """Batches of each partition's records with offsets in [start, end)."""
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
    def __init__(self, bootstrap: str, auth: Mapping[str, Any] | None = None) -> None:
        self.bootstrap = bootstrap
        #: aiokafka's TLS and SASL arguments (``BrokerSecurity.aiokafka_kwargs()``).
        self.auth = dict(auth or {})
        self._consumer: Any = None

    async def _client(self) -> Any:
        if self._consumer is None:
            from aiokafka import AIOKafkaConsumer

            self._consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                **self.auth,
                enable_auto_commit=False,
                fetch_max_wait_ms=10,
                max_partition_fetch_bytes=8 << 20,
            )
            await self._consumer.start()
        return self._consumer

    async def connect(self) -> None:
        await self._client()

    async def offsets(self, tps: Sequence[TP]) -> dict[TP, tuple[int, int]]:
        from aiokafka import TopicPartition

        consumer = await self._client()
        ktps = {TopicPartition(tp.topic, tp.partition): tp for tp in tps}
        starts = await consumer.beginning_offsets(list(ktps))
        ends = await consumer.end_offsets(list(ktps))
        return {tp: (starts[k], ends[k]) for k, tp in ktps.items()}

    async def offsets_for_time(self, tps: Sequence[TP], timestamp_ms: int) -> dict[TP, int]:
        from aiokafka import TopicPartition

        consumer = await self._client()
        ktps = {TopicPartition(tp.topic, tp.partition): tp for tp in tps}
        found = await consumer.offsets_for_times(dict.fromkeys(ktps, timestamp_ms))
        ends = await consumer.end_offsets(list(ktps))
        return {tp: ends[k] if found.get(k) is None else found[k].offset for k, tp in ktps.items()}

    async def read(self, ranges: Ranges) -> AsyncIterator[tuple[TP, Sequence[Any]]]:
        from aiokafka import TopicPartition

        wanted = {
            TopicPartition(tp.topic, tp.partition): (tp, start, end)
            for tp, (start, end) in ranges.items()
            if end > start
        }
        if not wanted:
            return
        consumer = await self._client()
        consumer.assign(list(wanted))
        for ktp, (_, start, _) in wanted.items():
            consumer.seek(ktp, start)
        left = dict(wanted)
        try:
            while left:
                found = await consumer.getmany(*left, timeout_ms=1000, max_records=10_000)
                for ktp, records in found.items():
                    tp, _, end = wanted[ktp]
                    batch = [r for r in records if r.offset < end]
                    if batch:
                        yield tp, batch
                for ktp in list(left):
                    if await consumer.position(ktp) >= left[ktp][2]:
                        del left[ktp]
                        consumer.pause(ktp)
        finally:
            consumer.assign([])

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


def reader_for(app: Any) -> PartitionReader:
    url = app.conf.broker[0]
    if url.scheme == "embedded":
        return EmbeddedReader(app.transport.acquire_log())
    bootstrap = ",".join(f"{u.host}:{u.port or 9092}" for u in app.conf.broker)
    return KafkaReader(bootstrap, app.broker_security.aiokafka_kwargs())
