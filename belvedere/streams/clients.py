"""Small synchronous broker clients for tools: create topics, produce, read a whole topic.

The CLI (dead-letter listing and replay) and the test suite use these, so they work the
same on both brokers. The embedded log can be opened by one process at a time, so on
``embedded://`` these work while no worker runs on that data directory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Protocol

from yarl import URL

from belvedere.streams.embedded import Log, NewRecord, StoredRecord, log_path
from belvedere.streams.errors import BrokerError
from belvedere.streams.partitioner import partition_for_key
from belvedere.streams.security import BrokerSecurity

__all__ = [
    "BrokerClient",
    "EmbeddedClient",
    "KafkaClient",
    "NewRecord",
    "StoredRecord",
    "client_for",
]

Offsets = Mapping[tuple[str, int], int]


class BrokerClient(Protocol):
    url: str

    def create_topic(
        self,
        topic: str,
        partitions: int,
        *,
        compacted: bool = False,
        config: Mapping[str, str] | None = None,
        replication: int = 1,
    ) -> None: ...

    def delete_topic(self, topic: str) -> None: ...

    def partitions(self, topic: str) -> int | None: ...

    def produce(
        self, topic: str, records: Iterable[NewRecord], partition: int | None = None
    ) -> None: ...

    def read(self, topic: str, start: Offsets | None = None) -> list[StoredRecord]: ...

    def committed(self, group: str, topic: str) -> dict[tuple[str, int], int]: ...

    def commit(self, group: str, offsets: Offsets) -> None: ...


def client_for(
    brokers: Sequence[URL | str] | URL | str,
    datadir: Path | str,
    security: BrokerSecurity | None = None,
) -> BrokerClient:
    """The client for an app's broker URLs (``app.conf.broker``) and data directory, with
    its TLS and SASL settings (``app.broker_security``) on Kafka."""
    given = brokers if isinstance(brokers, (list, tuple)) else [brokers]
    urls = [URL(str(u)) for u in given]
    scheme = urls[0].scheme
    if scheme == "embedded":
        return EmbeddedClient(log_path(urls[0], Path(datadir)))
    if scheme in ("kafka", "aiokafka"):
        return KafkaClient(",".join(f"{u.host}:{u.port or 9092}" for u in urls), security)
    raise BrokerError(f"no client for broker URL {str(urls[0])!r}")


class EmbeddedClient:
    """The embedded log, opened for each call."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.url = f"embedded://{self.path.resolve()}"

    @contextmanager
    def _log(self) -> Iterator[Log]:
        log = Log.acquire(self.path)
        try:
            yield log
        finally:
            log.release()

    def create_topic(
        self,
        topic: str,
        partitions: int,
        *,
        compacted: bool = False,
        config: Mapping[str, str] | None = None,
        replication: int = 1,
    ) -> None:
        with self._log() as log:  # one copy: ``replication`` is for Kafka
            log.create_topic(topic, partitions, compacting=compacted, config=config)

    def delete_topic(self, topic: str) -> None:
        with self._log() as log:
            if log.partitions(topic) is not None:
                log.delete_topic(topic)

    def partitions(self, topic: str) -> int | None:
        with self._log() as log:
            return log.partitions(topic)

    def produce(
        self, topic: str, records: Iterable[NewRecord], partition: int | None = None
    ) -> None:
        with self._log() as log:
            n = log.partitions(topic)
            if n is None:
                raise BrokerError(f"unknown topic {topic!r}")
            for record in records:
                p = partition if partition is not None else partition_for_key(record.key, n)
                log.append(topic, p, [record])

    def read(self, topic: str, start: Offsets | None = None) -> list[StoredRecord]:
        with self._log() as log:
            out: list[StoredRecord] = []
            for p in range(log.partitions(topic) or 0):
                offset = (start or {}).get((topic, p), 0)
                while batch := log.read(topic, p, offset, 1000):
                    out += batch
                    offset = batch[-1].offset + 1
            return out

    def committed(self, group: str, topic: str) -> dict[tuple[str, int], int]:
        with self._log() as log:
            found = {
                (topic, p): log.committed(group, topic, p)
                for p in range(log.partitions(topic) or 0)
            }
            return {tp: off for tp, off in found.items() if off is not None}

    def commit(self, group: str, offsets: Offsets) -> None:
        with self._log() as log:
            log.commit(group, offsets)


class KafkaClient:
    """aiokafka, run to completion for each call."""

    def __init__(self, bootstrap: str, security: BrokerSecurity | None = None) -> None:
        self.bootstrap = bootstrap
        self.url = f"kafka://{bootstrap}"
        self.security = security or BrokerSecurity()
        self._auth = self.security.aiokafka_kwargs()

    def _run(self, coro: Any) -> Any:
        return asyncio.run(coro)

    def create_topic(
        self,
        topic: str,
        partitions: int,
        *,
        compacted: bool = False,
        config: Mapping[str, str] | None = None,
        replication: int = 1,
    ) -> None:
        from aiokafka.admin import NewTopic
        from aiokafka.errors import TopicAlreadyExistsError

        configs = dict(config or {})
        if compacted:
            configs["cleanup.policy"] = "compact"

        async def create() -> None:
            async with self._admin() as admin:
                deadline = time.monotonic() + 30
                while True:  # a topic being deleted refuses a create for a moment
                    try:
                        await admin.create_topics(
                            [NewTopic(topic, partitions, replication, topic_configs=configs)]
                        )
                        return
                    except TopicAlreadyExistsError:
                        if time.monotonic() > deadline:
                            return
                        if await self._partitions(topic, admin) is not None:
                            return
                        await asyncio.sleep(0.2)

        self._run(create())

    def delete_topic(self, topic: str) -> None:
        async def delete() -> None:
            async with self._admin() as admin:  # one connection for the check, delete, wait
                if await self._partitions(topic, admin) is None:
                    return
                await admin.delete_topics([topic])
                deadline = time.monotonic() + 30
                while await self._partitions(topic, admin) is not None:
                    if time.monotonic() > deadline:
                        raise BrokerError(f"topic {topic!r} was not deleted within 30 s")
                    await asyncio.sleep(0.05)

        self._run(delete())

    @asynccontextmanager
    async def _admin(self) -> AsyncIterator[Any]:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, **self._auth)
        await admin.start()
        try:
            yield admin
        finally:
            await admin.close()

    async def _partitions(self, topic: str, admin: Any = None) -> int | None:
        if admin is None:
            async with self._admin() as started:
                return await self._partitions(topic, started)
        # Describing a missing topic would auto-create it, on brokers that allow that.
        if topic not in await admin.list_topics():
            return None
        (found,) = await admin.describe_topics([topic])
        return len(found["partitions"]) if found["error_code"] == 0 else None

    def partitions(self, topic: str) -> int | None:
        return self._run(self._partitions(topic))

    def produce(
        self, topic: str, records: Iterable[NewRecord], partition: int | None = None
    ) -> None:
        from aiokafka import AIOKafkaProducer

        async def produce() -> None:
            # acks from every in-sync replica, and retries that cannot write a record twice:
            # a send acked before its partition's leader dies is kept, and kept once
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                **self._auth,
                linger_ms=5,
                acks="all",
                enable_idempotence=True,
            )
            await producer.start()
            try:
                if partition is not None:
                    await _wait_for_partition(producer, topic, partition)
                futures = [
                    await producer.send(
                        topic,
                        r.value,
                        key=r.key,
                        partition=partition,
                        headers=list(r.headers) or None,
                        timestamp_ms=r.timestamp_ms or None,
                    )
                    for r in records
                ]
                await producer.flush()
                for fut in futures:
                    await fut
            finally:
                await producer.stop()

        self._run(produce())

    def read(self, topic: str, start: Offsets | None = None) -> list[StoredRecord]:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        async def read_all() -> list[StoredRecord]:
            n = await self._partitions(topic)
            if n is None:
                return []
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                **self._auth,
                enable_auto_commit=False,
                isolation_level="read_committed",
            )
            await consumer.start()
            try:
                tps = [TopicPartition(topic, p) for p in range(n)]
                consumer.assign(tps)
                ends = await consumer.end_offsets(tps)
                for tp in tps:
                    consumer.seek(tp, (start or {}).get((topic, tp.partition), 0))
                out: list[StoredRecord] = []
                while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                    batches = await consumer.getmany(timeout_ms=1000)
                    for tp, messages in batches.items():
                        out += [
                            StoredRecord(
                                m.topic,
                                m.partition,
                                m.offset,
                                m.timestamp,
                                m.key,
                                m.value,
                                tuple(m.headers),
                            )
                            for m in messages
                            if m.offset < ends[tp]
                        ]
                return out
            finally:
                await consumer.stop()

        return self._run(read_all())

    def committed(self, group: str, topic: str) -> dict[tuple[str, int], int]:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        async def committed() -> dict[tuple[str, int], int]:
            n = await self._partitions(topic) or 0
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                **self._auth,
                group_id=group,
                enable_auto_commit=False,
            )
            await consumer.start()
            try:
                out = {}
                for p in range(n):
                    off = await consumer.committed(TopicPartition(topic, p))
                    if off is not None:
                        out[(topic, p)] = off
                return out
            finally:
                await consumer.stop()

        return self._run(committed())

    def commit(self, group: str, offsets: Offsets) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        async def commit() -> None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                **self._auth,
                group_id=group,
                enable_auto_commit=False,
            )
            await consumer.start()
            try:
                tps = {TopicPartition(t, p): off for (t, p), off in offsets.items()}
                consumer.assign(list(tps))
                await consumer.commit(tps)
            finally:
                await consumer.stop()

        self._run(commit())


async def _wait_for_partition(
    producer: Any, topic: str, partition: int, timeout: float = 30
) -> None:
    """Until the producer's metadata has ``partition``: a topic just created (a reset's
    changelog) may first be known with none of its partitions, and aiokafka then refuses
    the send ("Unrecognized partition")."""
    deadline = time.monotonic() + timeout
    while partition not in (await producer.partitions_for(topic) or ()):
        if time.monotonic() > deadline:
            raise BrokerError(f"{topic!r} has no partition {partition} after {timeout:.0f} s")
        await producer.client.force_metadata_update()
        await asyncio.sleep(0.1)
