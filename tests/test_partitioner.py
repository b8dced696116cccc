"""Belvedere's murmur2 must place every key where Kafka's (and aiokafka's) partitioner does."""

import random

from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from belvedere.streams.partitioner import murmur2, partition_for_key


def test_murmur2_equals_aiokafkas_for_keys_of_every_length_and_byte() -> None:
    rng = random.Random(7)
    keys = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 70))) for _ in range(5000)]
    keys += [b"", b"\xff" * 9, b"user-1", "clé-ü".encode()]
    for key in keys:
        assert murmur2(key) == aiokafka_murmur2(key), key


def test_a_key_goes_to_the_partition_javas_default_partitioner_picks() -> None:
    # Values from Kafka's DefaultPartitionerTest / Utils.murmur2 for these keys.
    assert murmur2(b"21") == (-973932308) & 0xFFFFFFFF
    assert murmur2(b"foobar") == (-790332482) & 0xFFFFFFFF
    assert partition_for_key(b"foobar", 6) == ((-790332482) & 0x7FFFFFFF) % 6
