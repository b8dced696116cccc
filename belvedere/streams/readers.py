"""Reading a topic partition from an offset to its end, outside faust's consumer.

Views restore their partitions from their changelogs with these, while faust's own
consumer stays on the source topics.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from faust.types import TP

__all__ = ["PartitionReader", "reader_for"]


class PartitionReader:
    async def end_offset(self, tp: TP) -> int:
        raise NotImplementedError

    async def start_offset(self, tp: TP) -> int:
        raise NotImplementedError

    def read(self, tp: TP, start: int, end: int) -> AsyncIterator[Sequence[Any]]:
        """Batches of records with offsets in [start, end)."""
        raise NotImplementedError

    async def close(self) -> None:
        pass


class EmbeddedReader(PartitionReader):
    def __init__(self, log: Any) -> None:
        self.log = log

    async def end_offset(self, tp: TP) -> int:
        return self.log.end_offset(tp.topic, tp.partition)

    async def start_offset(self, tp: TP) -> int:
        return self.log.start_offset(tp.topic, tp.partition)

    async def read(self, tp: TP, start: int, end: int) -> AsyncIterator[Sequence[Any]]:
        offset = start
        while offset < end:
            batch = [
                r for r in self.log.read(tp.topic, tp.partition, offset, 2000) if r.offset < end
            ]
            if not batch:
                return
            yield batch
            offset = batch[-1].offset + 1

    async def close(self) -> None:
        self.log.release()


class KafkaReader(PartitionReader):
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._consumer: Any = None

    async def _client(self) -> Any:
        if self._consumer is None:
            from aiokafka import AIOKafkaConsumer

            self._consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                enable_auto_commit=False,
                max_partition_fetch_bytes=8 << 20,
            )
            await self._consumer.start()
        return self._consumer

    async def end_offset(self, tp: TP) -> int:
        from aiokafka import TopicPartition

        consumer = await self._client()
        found = await consumer.end_offsets([TopicPartition(tp.topic, tp.partition)])
        return next(iter(found.values()))

    async def start_offset(self, tp: TP) -> int:
        from aiokafka import TopicPartition

        consumer = await self._client()
        found = await consumer.beginning_offsets([TopicPartition(tp.topic, tp.partition)])
        return next(iter(found.values()))

    async def read(self, tp: TP, start: int, end: int) -> AsyncIterator[Sequence[Any]]:
        from aiokafka import TopicPartition

        consumer = await self._client()
        ktp = TopicPartition(tp.topic, tp.partition)
        consumer.assign([ktp])
        consumer.seek(ktp, start)
        while await consumer.position(ktp) < end:
            found = await consumer.getmany(ktp, timeout_ms=1000, max_records=5000)
            batch = [r for r in found.get(ktp, ()) if r.offset < end]
            if batch:
                yield batch

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


def reader_for(app: Any) -> PartitionReader:
    url = app.conf.broker[0]
    if url.scheme == "embedded":
        return EmbeddedReader(app.transport.acquire_log())
    bootstrap = ",".join(f"{u.host}:{u.port or 9092}" for u in app.conf.broker)
    return KafkaReader(bootstrap)
