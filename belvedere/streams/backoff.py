"""aiokafka clients that wait their retry backoff after a failed metadata update.

aiokafka's producer, holding records for a partition whose leader it does not know (the
broker is down), asks its client for new metadata and waits for that, in a loop: a
failed update ends at once (connection refused), so the loop spins. During a 12 s broker
outage a worker logged about 2,400 "Unable connect to node" lines a second, and the
loop took half its main thread. faust's consumer does the same when its fetcher finds a
partition without a known leader. Java's clients wait ``retry.backoff.ms`` between
metadata attempts; here the client does, after a failure, before it reports it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiokafka
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as FaustKafkaConsumer
from faust.transport.drivers.aiokafka import Producer as FaustKafkaProducer

__all__ = [
    "BackoffKafkaProducer",
    "Consumer",
    "Producer",
    "back_off_failed_metadata",
    "with_backoff",
]


def back_off_failed_metadata(client: Any) -> None:
    """Make ``client`` (an ``AIOKafkaClient``) wait its retry backoff after a metadata
    update that failed (a successful one is reported at once)."""
    update = client._metadata_update

    async def with_backoff(cluster_metadata: Any, topics: Any) -> bool:
        ok = await update(cluster_metadata, topics)
        if not ok:
            await asyncio.sleep(client._retry_backoff)
        return ok

    client._metadata_update = with_backoff


class BackoffKafkaProducer(aiokafka.AIOKafkaProducer):
    """aiokafka's producer, its client backing off after a failed metadata update."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        back_off_failed_metadata(self.client)


class Producer(FaustKafkaProducer):
    """faust's Kafka producer, on :class:`BackoffKafkaProducer`."""

    @property
    def _producer_type(self) -> type[aiokafka.AIOKafkaProducer]:
        return BackoffKafkaProducer


class BackoffConsumerThread(AIOKafkaConsumerThread):
    """faust's consumer thread, its aiokafka consumer's client backing off likewise: its
    fetcher, finding a partition without a known leader, asks for metadata and waits for
    the update, in a loop (41,276 refused connections logged in a 12 s outage)."""

    def _create_consumer(self, loop: asyncio.AbstractEventLoop) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_consumer(loop)
        back_off_failed_metadata(consumer._client)
        # Source topics are read committed, without faust's exactly-once mode (which sets
        # this too, and more): a fenced worker's aborted output must not be folded.
        consumer._isolation_level = "read_committed"
        return consumer


class Consumer(FaustKafkaConsumer):
    """faust's Kafka consumer, on :class:`BackoffConsumerThread`."""

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return BackoffConsumerThread(self, loop=self.loop, beacon=self.beacon)


_WITH_BACKOFF: dict[type, type] = {}


def with_backoff(transport_cls: type) -> type:
    """``transport_cls``, its producer :class:`Producer` and its consumer :class:`Consumer`
    if they are faust's Kafka ones."""
    if not issubclass(transport_cls.Producer, FaustKafkaProducer):
        return transport_cls  # the embedded broker's
    found = _WITH_BACKOFF.get(transport_cls)
    if found is None:
        producer = type(
            f"Backoff{transport_cls.Producer.__name__}",
            (Producer, transport_cls.Producer),
            {"__module__": __name__},
        )
        consumer = transport_cls.Consumer
        if issubclass(consumer, FaustKafkaConsumer):
            consumer = type(
                f"Backoff{consumer.__name__}", (Consumer, consumer), {"__module__": __name__}
            )
        found = type(
            transport_cls.__name__,
            (transport_cls,),
            {"Producer": producer, "Consumer": consumer},
        )
        found.__module__ = transport_cls.__module__
        _WITH_BACKOFF[transport_cls] = found
    return found
