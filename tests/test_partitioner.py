"""Belvedere's murmur2 must place every key where Kafka's (and aiokafka's) partitioner does."""

import random
import zlib

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from belvedere.streams.partitioner import (
    crc32_partition,
    explain_partition,
    murmur2,
    partition_for_key,
    partitioner_named,
)


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


def test_crc32_is_librdkafkas_default_unsigned_modulo_the_partitions() -> None:
    # CRC-32 (IEEE, zlib's) check value; librdkafka's consistent_random takes it unsigned.
    assert zlib.crc32(b"123456789") == 0xCBF43926
    assert crc32_partition(b"123456789", 7) == 0xCBF43926 % 7
    assert partitioner_named("crc32") is crc32_partition
    assert partitioner_named("any") is partitioner_named("murmur2") is partition_for_key
    with pytest.raises(ValueError, match="partitioner must be one of murmur2, crc32, any"):
        partitioner_named("random")


def test_a_wrong_partition_is_explained_by_the_partitioner_that_put_the_key_there() -> None:
    key, n = b"order-1", 4
    by_murmur, by_crc = partition_for_key(key, n), crc32_partition(key, n)
    assert by_murmur != by_crc
    said = explain_partition(key, by_crc, n, "murmur2")
    assert "partitioner crc32 (librdkafka's default" in said
    assert "partitioner='crc32'" in said and "partitioner=murmur2_random" in said
    said = explain_partition(key, by_murmur, n, "crc32")
    assert "partitioner murmur2" in said and "partitioner='murmur2'" in said
    said = explain_partition(key, by_murmur, n, "murmur2")
    assert "the handler wrote a key other than the record's" in said
    (other,) = set(range(n)) - {by_murmur, by_crc} - {0}
    said = explain_partition(key, other, n, "murmur2")
    assert f"murmur2: {by_murmur}, crc32: {by_crc}" in said and "partitioner='any'" in said
    assert "no key" in explain_partition(None, 0, n, "murmur2")
