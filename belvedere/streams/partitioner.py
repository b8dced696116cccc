"""Which partition a key goes to: the same answer as Kafka's and faust's default producer.

The embedded broker, the HTTP router and tests all hash keys here, so that a key lands in
the same partition whichever broker carries it (murmur2 of the serialized key bytes).

Producers built on librdkafka (kcat, confluent-kafka, most non-Java clients) hash keys with
CRC32 by default instead (its ``consistent_random``): a topic they write declares
``partitioner="crc32"`` so that its events are found in the partition they are in.
"""

import random
import struct
import zlib
from collections.abc import Callable, Sequence

__all__ = [
    "PARTITIONERS",
    "Partitioner",
    "crc32_partition",
    "explain_partition",
    "murmur2",
    "partition_for_key",
    "partitioner_named",
]

#: How a topic's producers may hash keys: Kafka's murmur2 (Java clients, faust, Belvedere),
#: librdkafka's CRC32, or any way at all (Belvedere re-keys such a topic before folding it).
PARTITIONERS = ("murmur2", "crc32", "any")

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF

#: faust's ``producer_partitioner`` setting: ``(key, all_partitions, available) -> partition``.
Partitioner = Callable[[bytes | None, Sequence[int], Sequence[int]], int]


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``Utils.murmur2``), as aiokafka's, 1.5x faster: every write to a
    view checks its key's partition with it (tests/test_partitioner.py compares the two)."""
    length = len(data)
    h = 0x9747B28C ^ length
    words = length >> 2
    if words:
        for k in struct.unpack_from(f"<{words}I", data):
            k = (k * _M) & _MASK
            k ^= k >> 24
            h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    tail = length & 3
    if tail:
        base = length & ~3
        if tail >= 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h = ((h ^ data[base]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for_key(key: bytes | None, partitions: int) -> int:
    """Kafka's default partitioner; a record without a key goes to a random partition."""
    if key is None:
        return random.randrange(partitions)
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def crc32_partition(key: bytes | None, partitions: int) -> int:
    """librdkafka's default partitioner (``consistent_random``): the CRC32 of the key
    (unsigned, as zlib's) modulo the partition count; a record without a key goes to a
    random partition."""
    if key is None:
        return random.randrange(partitions)
    return zlib.crc32(key) % partitions


def partitioner_named(name: str) -> Callable[[bytes | None, int], int]:
    """The key hash a topic declared: ``murmur2`` and ``any`` (Belvedere's own writes) use
    Kafka's; ``crc32`` librdkafka's."""
    if name not in PARTITIONERS:
        raise ValueError(f"partitioner must be one of {', '.join(PARTITIONERS)}, not {name!r}")
    return crc32_partition if name == "crc32" else partition_for_key


#: librdkafka's name for each (its ``partitioner`` setting).
_LIBRDKAFKA = {"murmur2": "murmur2_random", "crc32": "consistent_random"}
_KNOWN = {
    "murmur2": "murmur2 (Kafka's Java clients, faust; librdkafka's partitioner=murmur2_random)",
    "crc32": "crc32 (librdkafka's default: kcat, confluent-kafka)",
}


def explain_partition(key: bytes | None, partition: int, partitions: int, declared: str) -> str:
    """Which partitioner would put a record with ``key`` in ``partition``, in words, with
    what to do: said by a ``wrong-partition`` dead letter, where the producer's partitioner
    and the topic's declared one (``declared``) may differ."""
    if key is None:
        return (
            "the record has no key, so its producer chose the partition at random; key the "
            "records, or declare the topic with partitioner='any'"
        )
    fits = [name for name in _KNOWN if partitioner_named(name)(key, partitions) == partition]
    shown = bytes(key).decode(errors="replace")
    if declared in fits:
        return (
            f"partitioner {declared} explains the record's key {shown!r} in partition {partition}, "
            "so the handler wrote a key other than the record's: project with by= to re-key"
        )
    if fits:
        return (
            f"partitioner {_KNOWN[fits[0]]} explains the record's key {shown!r} in partition "
            f"{partition}, not the topic's {declared}: declare the topic with "
            f"partitioner={fits[0]!r}, or give its producers (librdkafka) "
            f"partitioner={_LIBRDKAFKA.get(declared, declared)}"
        )
    where = ", ".join(f"{name}: {partitioner_named(name)(key, partitions)}" for name in _KNOWN)
    return (
        f"no known partitioner explains the record's key {shown!r} in partition {partition} "
        f"({where}): declare the topic with partitioner='any' (Belvedere re-keys it)"
    )
