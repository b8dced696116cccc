"""The embedded broker's producer: appends to the local log and acks at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

from faust.transport.producer import Producer as FaustProducer
from faust.types import TP
from faust.types.tuples import RecordMetadata

from belvedere.streams.embedded.log import Log, LogSource, NewRecord
from belvedere.streams.partitioner import partition_for_key

__all__ = ["Producer"]


def _headers(headers: Mapping[str, Any] | Sequence[tuple[str, Any]] | None) -> tuple:
    if not headers:
        return ()
    items = headers.items() if isinstance(headers, Mapping) else headers
    return tuple((k, v.encode() if isinstance(v, str) else bytes(v)) for k, v in items)


class Producer(FaustProducer):
    """A send is durable (in RocksDB's write-ahead log) when its future resolves."""

    transport: LogSource

    def __init__(self, transport: LogSource, **kwargs: Any) -> None:
        self._log: Log | None = None
        super().__init__(transport, **kwargs)

    @property
    def broker_log(self) -> Log:
        if self._log is None:
            self._log = self.transport.acquire_log()
        return self._log

    async def on_stop(self) -> None:
        await self.flush()
        if self._log is not None:
            self._log.release()
            self._log = None

    def _append(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
    ) -> RecordMetadata:
        log = self.broker_log
        partitions = log.partitions(topic)
        if partitions is None:  # as Kafka's auto.create.topics.enable does
            partitions = log.create_topic(topic, self.app.conf.topic_partitions).partitions
        if partition is None:
            partition = self._partition(key, partitions)
        ts = timestamp if timestamp is not None else time.time()
        offset = log.append(
            topic, partition, [NewRecord(key, value, int(ts * 1000), _headers(headers))]
        )
        return RecordMetadata(topic, partition, TP(topic, partition), offset, ts, 0)

    def _partition(self, key: bytes | None, partitions: int) -> int:
        if self.partitioner is not None:
            every = list(range(partitions))
            return self.partitioner(key, every, every)
        return partition_for_key(key, partitions)

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
        *,
        transactional_id: str | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        fut: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        try:
            fut.set_result(self._append(topic, key, value, partition, timestamp, headers))
        except Exception as exc:
            fut.set_exception(exc)
        return fut

    async def send_and_wait(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
        *,
        transactional_id: str | None = None,
    ) -> RecordMetadata:
        return self._append(topic, key, value, partition, timestamp, headers)

    def send_batch(
        self, topic: str, partition: int, records: Sequence[tuple[bytes | None, bytes | None, Any]]
    ) -> list[RecordMetadata]:
        """Append ``(key, value, headers)`` records to one partition in one write batch."""
        return self.send_batches([(topic, partition, records)])[0]

    def send_batches(
        self,
        batches: Sequence[tuple[str, int, Sequence[tuple[bytes | None, bytes | None, Any]]]],
    ) -> list[list[RecordMetadata]]:
        """Append ``(key, value, headers)`` records to several partitions in one write
        batch: all or nothing (a checkpoint's changelog with its fold's outbox)."""
        ts = time.time()
        ms = int(ts * 1000)
        bases = self.broker_log.append_atomic(
            [
                (topic, partition, [NewRecord(k, v, ms, _headers(h)) for k, v, h in records])
                for topic, partition, records in batches
            ]
        )
        return [
            [
                RecordMetadata(topic, partition, TP(topic, partition), base + i, ts, 0)
                for i in range(len(records))
            ]
            for (topic, partition, records), base in zip(batches, bases, strict=True)
        ]

    async def flush(self) -> None:
        await self.buffer.flush()

    async def create_topic(
        self,
        topic: str,
        partitions: int,
        replication: int,
        *,
        compacting: bool | None = None,
        **kwargs: Any,
    ) -> None:
        self.broker_log.create_topic(topic, partitions, compacting=bool(compacting))

    def key_partition(self, topic: str, key: bytes | None) -> TP:
        partitions = self.broker_log.partitions(topic) or self.app.conf.topic_partitions
        return TP(topic, self._partition(key, partitions))

    def supports_headers(self) -> bool:
        return True
