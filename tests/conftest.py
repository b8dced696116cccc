"""Fixtures shared by the suite: the two brokers, and worker processes on them.

Kafka: ``BELVEDERE_KAFKA=host:port`` uses a running broker; otherwise, where Java and Maven
are installed, a single-node KRaft broker is started for the session from ``ci/kafka``.
Without either, the Kafka variants are skipped with the reason, except under ``CI=true``,
where that is an error. The same holds for Chromium (the status page's test), which is
installed with apt-get when missing and the suite runs as root.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from belvedere.streams.clients import EmbeddedClient, KafkaClient
from tests.support.brokers import Broker
from tests.support.chromium import find_chromium
from tests.support.kafka import (
    IN_CI,
    KafkaStartFailed,
    kafka_unavailable,
    missing_tools,
    private_kafka,
)
from tests.support.worker import Worker


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    given = os.environ.get("BELVEDERE_KAFKA")
    if given:
        yield given
        return
    missing = missing_tools()
    if missing:
        kafka_unavailable(f"{missing}, and BELVEDERE_KAFKA is not set")
    try:
        with private_kafka() as bootstrap:
            yield bootstrap
    except KafkaStartFailed as exc:
        kafka_unavailable(f"starting it failed: {exc}")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Headless Chromium for the status page (installed with apt-get if missing, as root)."""
    found, why = find_chromium()
    if found is None:
        if IN_CI:
            pytest.fail(f"Chromium is required when CI=true: {why}", pytrace=False)
        pytest.skip(f"no Chromium: {why}")
    return found


@pytest.fixture(scope="session")
def test_output() -> Path:
    """Where tests leave what a person may want to look at (screenshots):
    ``BELVEDERE_TEST_OUTPUT``, else ``test-output/`` in the repository."""
    path = Path(
        os.environ.get("BELVEDERE_TEST_OUTPUT") or Path(__file__).parent.parent / "test-output"
    )
    path.mkdir(parents=True, exist_ok=True)
    return path


BROKERS = ["embedded", pytest.param("kafka", marks=pytest.mark.kafka)]


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Broker:
    if request.param == "kafka":
        return Broker("kafka", KafkaClient(request.getfixturevalue("kafka_bootstrap")))
    return Broker("embedded", EmbeddedClient(tmp_path / "broker"))


@pytest.fixture
def unique_name() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def workers(broker: Broker, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Make (not start) workers on the broker under test; all are killed at the end."""
    made: list[Worker] = []

    def make(app: str, env: dict[str, str], data_dir: str = "data") -> Worker:
        worker = Worker(app, broker_url=broker.url, data_dir=tmp_path / data_dir, env=env)
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.kill()


@pytest.fixture
def counter(workers: Callable[..., Worker], unique_name: str) -> Worker:
    """A worker of tests/apps/counter.py on the broker under test (not started)."""
    return workers("tests.apps.counter:app", {"COUNTER_NAME": unique_name})


@pytest.fixture
def ledger(broker: Broker, workers: Callable[..., Worker], unique_name: str) -> Worker:
    """The projection tests' app (tests/apps/ledger.py), its source topics created."""
    broker.create_ledger_topics(unique_name)
    return workers("tests.apps.ledger:app", {"LEDGER_NAME": unique_name})
