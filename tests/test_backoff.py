"""aiokafka clients wait their retry backoff after a failed metadata update.

Without it, faust's producer and consumer spin while the broker is down: each asks for
metadata, the update fails at once (connection refused), and they ask again. The broker
restart test (tests/faults/test_worker_faults.py) bounds the effect on a real outage;
here each client is checked on its own, against a loopback port nothing listens on.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import belvedere
from belvedere.streams.backoff import BackoffKafkaProducer

NOBODY = "127.0.0.1:9"  # refused at once


async def failed_update_seconds(client: Any) -> float:
    started = time.monotonic()
    assert not await client._metadata_update(client.cluster, set())
    return time.monotonic() - started


def test_the_workers_consumer_and_producer_wait_their_backoff_after_a_failed_update() -> None:
    app = belvedere.App("backoff", broker=f"kafka://{NOBODY}")

    async def main() -> None:
        consumer = app.consumer._thread._create_consumer(asyncio.get_running_loop())
        producer = BackoffKafkaProducer(bootstrap_servers=NOBODY)
        try:
            for client in (consumer._client, producer.client):
                assert await failed_update_seconds(client) >= client._retry_backoff * 0.9
        finally:
            await consumer.stop()
            await producer.stop()

    asyncio.run(main())
