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
from collections.abc import Iterable
from typing import Any

from faust.transport.conductor import Conductor as FaustConductor

__all__ = ["Conductor"]

logger = logging.getLogger(__name__)

#: Seconds to wait for declared topics to show in the broker's metadata, and between looks.
METADATA_TIMEOUT = 30.0
METADATA_POLL = 0.1


class Conductor(FaustConductor):
    async def _update_indices(self) -> Iterable[str]:
        declared: set[str] = set()
        sized = [c for c in list(self._topics) if getattr(c, "partitions", None)]
        # all at once: one by one, each create and its metadata refresh took ~25 ms on Kafka
        await asyncio.gather(*(c.maybe_declare() for c in sized if not c.internal))
        for channel in list(self._topics):
            if channel.internal or getattr(channel, "partitions", None):
                declared.update(channel.topics)
        names = await super()._update_indices()
        await self._until_in_metadata(declared)
        return names

    async def _until_in_metadata(self, topics: set[str]) -> None:
        """Wait until the broker's metadata lists each of ``topics`` (Kafka only)."""
        kafka = getattr(self.app.producer, "_producer", None)  # faust's AIOKafkaProducer
        client: Any = getattr(kafka, "client", None)
        if client is None or not topics:
            return  # the embedded broker: its metadata is its log
        deadline = time.monotonic() + METADATA_TIMEOUT
        while True:
            try:
                cluster = await client.fetch_all_metadata()
                missing = sorted(t for t in topics if not cluster.partitions_for_topic(t))
                if not missing:
                    missing = await _missing_on_a_broker(client, cluster.brokers(), topics)
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


async def _missing_on_a_broker(client: Any, brokers: Iterable[Any], topics: set[str]) -> list[str]:
    """The ``topics`` some broker's metadata lacks yet; a broker that does not answer is
    passed over (it is down, and serves no group)."""
    from aiokafka.cluster import ClusterMetadata
    from aiokafka.errors import KafkaError
    from aiokafka.protocol.metadata import MetadataRequest

    # never auto-created by the asking: a missing topic would come back with the default size
    request = MetadataRequest(sorted(topics), allow_auto_topic_creation=False)
    missing: set[str] = set()
    for broker in brokers:
        try:
            response = await client.send(broker.nodeId, request)
        except (TimeoutError, KafkaError):
            continue  # down: the group's coordinator and leaders are elsewhere
        seen = ClusterMetadata()
        seen.need_all_topic_metadata = True  # a topic still unknown is no error to log
        seen.update_metadata(response)
        missing.update(t for t in topics if not seen.partitions_for_topic(t))
    return sorted(missing)
