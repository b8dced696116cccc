"""The two brokers the suite runs on, behind one small interface.

Tests create topics, produce and read through a :class:`Broker`, and run workers with its
``url``; the same test body then runs on the embedded broker and on real Kafka. Producing
uses Kafka's default partitioner on both, so a key lands in the same partition.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
import pytest

from belvedere.streams.clients import BrokerClient, NewRecord, StoredRecord

KeyValue = tuple[bytes | None, bytes | None]
#: For a test that needs several workers in one consumer group: the Kafka broker only (the
#: embedded broker's group has one member).
KAFKA_ONLY = pytest.mark.parametrize(
    "broker", [pytest.param("kafka", marks=pytest.mark.kafka)], indirect=True
)
#: The source topics of tests/apps/ledger.py (each under the app's name), 4 partitions each.
LEDGER_TOPICS = ("movements", "notes", "orders", "tallies")


class Broker:
    def __init__(self, name: str, client: BrokerClient) -> None:
        self.name = name
        self.client = client
        self.url = client.url

    def create_ledger_topics(self, name: str) -> None:
        for topic in LEDGER_TOPICS:
            self.create_topic(f"{name}-{topic}", 4)

    def create_topic(self, topic: str, partitions: int) -> None:
        self.client.create_topic(topic, partitions)

    def produce(self, topic: str, messages: Iterable[KeyValue | NewRecord]) -> None:
        records = [m if isinstance(m, NewRecord) else NewRecord(m[0], m[1], 0) for m in messages]
        self.client.produce(topic, records)

    def partitions(self, topic: str) -> int | None:
        return self.client.partitions(topic)

    def read(self, topic: str) -> list[StoredRecord]:
        return self.client.read(topic)

    def final_windows(self, topic: str) -> list[list[Any]]:
        """What a windowed view sent to its ``final_to`` topic: ``[key, start, end,
        value]`` per record, each under its key."""
        out = []
        for record in self.read(topic):
            body = orjson.loads(record.value)
            assert record.key == str(body["key"]).encode()
            out.append([body["key"], body["start"], body["end"], body["value"]])
        return out
