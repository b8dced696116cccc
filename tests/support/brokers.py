"""The two brokers the suite runs on, behind one small interface.

Tests create topics, produce and inspect through a :class:`Broker`, and run workers with
its ``url``; the same test body then runs on the embedded broker and on real Kafka.
Producing uses Kafka's default partitioner on both, so a key lands in the same partition.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from belvedere.streams.embedded import Log, Record
from belvedere.streams.partitioner import partition_for_key

KeyValue = tuple[bytes | None, bytes | None]


class Broker:
    name: str
    url: str

    def create_topic(self, topic: str, partitions: int) -> None:
        raise NotImplementedError

    def produce(self, topic: str, messages: Iterable[KeyValue]) -> None:
        raise NotImplementedError

    def partitions(self, topic: str) -> int | None:
        raise NotImplementedError


class EmbeddedBroker(Broker):
    """The embedded log, written directly while no worker holds it."""

    name = "embedded"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"embedded://{path}"

    def create_topic(self, topic: str, partitions: int) -> None:
        log = Log.acquire(self.path)
        try:
            log.create_topic(topic, partitions)
        finally:
            log.release()

    def produce(self, topic: str, messages: Iterable[KeyValue]) -> None:
        log = Log.acquire(self.path)
        try:
            n = log.partitions(topic)
            assert n is not None, f"create {topic!r} first"
            for key, value in messages:
                log.append(topic, partition_for_key(key, n), [Record(key, value, 0)])
        finally:
            log.release()

    def partitions(self, topic: str) -> int | None:
        log = Log.acquire(self.path)
        try:
            return log.partitions(topic)
        finally:
            log.release()


class KafkaBroker(Broker):
    name = "kafka"

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.url = f"kafka://{bootstrap}"

    def _run(self, coro):
        return asyncio.run(coro)

    def create_topic(self, topic: str, partitions: int) -> None:
        async def create() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await admin.start()
            try:
                await admin.create_topics([NewTopic(topic, partitions, 1)])
            except TopicAlreadyExistsError:
                pass
            finally:
                await admin.close()

        self._run(create())

    def produce(self, topic: str, messages: Iterable[KeyValue]) -> None:
        async def produce() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
            await producer.start()
            try:
                futures = [await producer.send(topic, value, key=key) for key, value in messages]
                await producer.flush()
                for fut in futures:
                    await fut
            finally:
                await producer.stop()

        self._run(produce())

    def partitions(self, topic: str) -> int | None:
        async def describe() -> int | None:
            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
            await producer.start()
            try:
                found = await producer.partitions_for(topic)
                return len(found) if found else None
            finally:
                await producer.stop()

        return self._run(describe())
