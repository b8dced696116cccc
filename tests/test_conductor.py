"""The conductor waits for the topics it declared to show in the broker's metadata."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from belvedere.streams import conductor
from belvedere.streams.conductor import Conductor


class Metadata:
    """Answers metadata without ``topic`` for the first ``late`` requests, as a Kafka
    broker does for a moment after a create returns."""

    def __init__(self, topic: str, late: int) -> None:
        self.topic, self.late, self.requests = topic, late, 0

    async def fetch_all_metadata(self) -> Any:
        self.requests += 1
        known = {"source": {0, 1}} | ({} if self.requests <= self.late else {self.topic: {0, 1}})
        return SimpleNamespace(partitions_for_topic=known.get, brokers=list)  # no others to ask


def until_in_metadata(client: Metadata, topics: set[str]) -> None:
    app = SimpleNamespace(producer=SimpleNamespace(_producer=SimpleNamespace(client=client)))
    asyncio.run(Conductor._until_in_metadata(SimpleNamespace(app=app), topics))  # type: ignore[arg-type]


def test_a_topic_created_a_moment_ago_is_waited_for_before_subscribing() -> None:
    client = Metadata("app-view-owners-repartition", late=3)
    until_in_metadata(client, {"source", "app-view-owners-repartition"})
    assert client.requests == 4  # three without it, then the one that has it


def test_a_topic_that_never_shows_is_given_up_on_after_the_timeout(monkeypatch: Any) -> None:
    monkeypatch.setattr(conductor, "METADATA_TIMEOUT", 0.3)
    client = Metadata("app-never", late=1 << 30)
    until_in_metadata(client, {"app-never"})  # returns (a warning is logged): subscribes anyway
    assert client.requests > 1


def test_the_embedded_broker_is_not_asked() -> None:
    app = SimpleNamespace(producer=SimpleNamespace())  # no aiokafka producer
    asyncio.run(Conductor._until_in_metadata(SimpleNamespace(app=app), {"t"}))  # type: ignore[arg-type]
