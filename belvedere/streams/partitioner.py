"""Which partition a key goes to: the same answer as Kafka's and faust's default producer.

The embedded broker, the HTTP router and tests all hash keys here, so that a key lands in
the same partition whichever broker carries it (murmur2 of the serialized key bytes).
"""

import random
from collections.abc import Callable, Sequence

from aiokafka.partitioner import murmur2

__all__ = ["Partitioner", "partition_for_key"]

#: faust's ``producer_partitioner`` setting: ``(key, all_partitions, available) -> partition``.
Partitioner = Callable[[bytes | None, Sequence[int], Sequence[int]], int]


def partition_for_key(key: bytes | None, partitions: int) -> int:
    """Kafka's default partitioner; a record without a key goes to a random partition."""
    if key is None:
        return random.randrange(partitions)
    return (murmur2(key) & 0x7FFFFFFF) % partitions
