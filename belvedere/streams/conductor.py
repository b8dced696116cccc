"""faust's Conductor, made to create topics with their declared partition counts first.

faust declares only its internal topics before subscribing, so a source topic declared with
``partitions=4`` is auto-created by the broker with its default count instead, and a table
on it then fails with PartitionsMismatch. This declares every topic that names
its partition count, on any broker, before the consumer subscribes.

On Kafka it then waits until the broker's metadata shows every topic it declared. A topic
just created (a view's repartition topic, on a first start) can be missing from the
metadata for a moment after the create returns. A group leader assigning in that moment
leaves the topic out ("Ignoring missing topic"), and nothing assigns it until the
consumer's next metadata refresh, five minutes later: the view it feeds is not served
until then. On a cluster each broker learns of a new topic on its own, a moment apart, and
the group leader's consumer may ask another broker than the one that answered here: every
live broker is asked.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from belvedere.compat import faust as compat
from belvedere.compat.aiokafka import missing_on_a_broker

__all__ = ["Conductor"]

logger = logging.getLogger(__name__)

#: Seconds to wait for declared topics to show in the broker's metadata, and between looks.
METADATA_TIMEOUT = 30.0
METADATA_POLL = 0.1


class Conductor(compat.Conductor):
    async def update_indices(
        self, channels: list[Any], update: Callable[[], Awaitable[Iterable[str]]]
    ) -> Iterable[str]:
        sized = [c for c in channels if getattr(c, "partitions", None)]
        # all at once: one by one, each create and its metadata refresh took ~25 ms on Kafka
        await asyncio.gather(*(c.maybe_declare() for c in sized if not c.internal))
        declared: set[str] = set()
        for channel in channels:
            if channel.internal or getattr(channel, "partitions", None):
                declared.update(channel.topics)
        names = await update()
        await self._until_in_metadata(declared)
        return names

    async def _until_in_metadata(self, topics: set[str]) -> None:
        """Wait until the broker's metadata lists each of ``topics`` (Kafka only)."""
        client = compat.kafka_client(self.app.producer)
        if client is None or not topics:
            return  # the embedded broker: its metadata is its log
        deadline = time.monotonic() + METADATA_TIMEOUT
        while True:
            try:
                cluster = await client.fetch_all_metadata()
                missing = sorted(t for t in topics if not cluster.partitions_for_topic(t))
                if not missing:
                    missing = await missing_on_a_broker(client, cluster.brokers(), topics)
            except Exception as exc:  # the broker restarting: look again
                missing = [repr(exc)]
            if not missing:
                return
            if time.monotonic() > deadline:
                logger.warning(
                    "not in the broker's metadata after %.0f s, subscribing anyway: %s",
                    METADATA_TIMEOUT,
                    ", ".join(missing),
                )
                return
            await asyncio.sleep(METADATA_POLL)
