"""aiokafka clients that wait their retry backoff after a failed metadata update.

aiokafka's producer, holding records for a partition whose leader it does not know (the
broker is down), asks its client for new metadata and waits for that, in a loop: a
failed update ends at once (connection refused), so the loop spins. During a 12 s broker
outage a worker logged about 2,400 "Unable connect to node" lines a second, and the
loop took half its main thread. Java's producer waits ``retry.backoff.ms`` between
metadata attempts; here the client does, after a failure, before it reports it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiokafka
from faust.transport.drivers.aiokafka import Producer as FaustKafkaProducer

__all__ = ["BackoffKafkaProducer", "Producer", "back_off_failed_metadata", "with_backoff"]


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


_WITH_BACKOFF: dict[type, type] = {}


def with_backoff(transport_cls: type) -> type:
    """``transport_cls``, its producer :class:`Producer` if it is faust's Kafka one."""
    if not issubclass(transport_cls.Producer, FaustKafkaProducer):
        return transport_cls  # the embedded broker's
    found = _WITH_BACKOFF.get(transport_cls)
    if found is None:
        producer = type(
            f"Backoff{transport_cls.Producer.__name__}",
            (Producer, transport_cls.Producer),
            {"__module__": __name__},
        )
        found = type(transport_cls.__name__, (transport_cls,), {"Producer": producer})
        found.__module__ = transport_cls.__module__
        _WITH_BACKOFF[transport_cls] = found
    return found
