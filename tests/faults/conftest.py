"""Fixtures for fault-injection tests: real brokers, real worker processes, real RocksDB."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from belvedere.streams.clients import KafkaClient
from tests.support.brokers import Broker
from tests.support.worker import Worker


@pytest.fixture
def kafka(kafka_bootstrap: str) -> Broker:
    """The session's shared Kafka broker (never stopped by a test: others use it)."""
    return Broker("kafka", KafkaClient(kafka_bootstrap))


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Make (not start) workers of any app on any broker URL; all are killed at the end."""
    made: list[Worker] = []

    def make(app: str, broker_url: str, env: dict[str, str], data_dir: str = "data") -> Worker:
        worker = Worker(app, broker_url=broker_url, data_dir=tmp_path / data_dir, env=env)
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.kill()
