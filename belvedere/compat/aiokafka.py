"""aiokafka internals Belvedere relies on: a metadata backoff, transaction state, record
batches of its own size, and the fetch protocol spoken by the Kafka reader.

Each function names the aiokafka limit it works around; ``tests/test_compat.py`` checks
the private names and behaviour each one relies on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import aiokafka
from aiokafka.client import AIOKafkaClient
from aiokafka.cluster import ClusterMetadata
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.record.control_record import ABORT_MARKER, ControlRecord
from aiokafka.record.memory_records import MemoryRecords

__all__ = [
    "BackoffKafkaProducer",
    "BatchBuilder",
    "ask_for_metadata",
    "back_off_failed_metadata",
    "client_of",
    "compresses",
    "fetch_request",
    "forget_topic",
    "in_transaction",
    "is_abort_marker",
    "missing_on_a_broker",
    "partition_response",
    "read_committed",
    "record_batch",
    "record_batches",
    "transaction_failed",
    "transactional",
]


def back_off_failed_metadata(client: AIOKafkaClient) -> None:
    """Make ``client`` wait its retry backoff after a metadata update that failed (a
    successful one is reported at once).

    Works around: aiokafka retries a failed metadata update (connection refused) at once,
    in a tight loop, where Java's clients wait ``retry.backoff.ms``; during a 12 s broker
    outage a worker logged about 2,400 "Unable connect to node" lines a second.
    """
    update = client._metadata_update

    async def with_backoff(cluster_metadata: Any, topics: Any) -> bool:
        ok = await update(cluster_metadata, topics)
        if not ok:
            await asyncio.sleep(client._retry_backoff)
        return ok

    client._metadata_update = with_backoff  # type: ignore[method-assign]


class BackoffKafkaProducer(aiokafka.AIOKafkaProducer):
    """aiokafka's producer, its client backing off after a failed metadata update."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        back_off_failed_metadata(self.client)


def client_of(consumer: aiokafka.AIOKafkaConsumer) -> AIOKafkaClient:
    """The client under ``consumer``.

    Works around: ``AIOKafkaConsumer`` has no public accessor for its client (the producer
    has ``.client``), which fetches and metadata requests need.
    """
    return consumer._client


def read_committed(consumer: aiokafka.AIOKafkaConsumer) -> None:
    """Have a consumer not yet started read committed records only.

    Works around: faust builds its ``AIOKafkaConsumer`` read uncommitted unless the app
    runs faust's exactly-once mode (which changes more), and offers no other way in.
    """
    consumer._isolation_level = "read_committed"


def forget_topic(client: AIOKafkaClient, topic: str) -> None:
    """Stop asking for ``topic``'s metadata.

    Works around: aiokafka's client can add topics to its metadata requests
    (``add_topic``) but not remove one; ``set_topics`` needs the current set, kept private.
    """
    if topic in client._topics:
        client.set_topics(client._topics - {topic})


def in_transaction(producer: aiokafka.AIOKafkaProducer) -> bool:
    """Whether ``producer`` has a transaction open.

    Works around: aiokafka keeps its transaction state in a private ``_txn_manager``.
    """
    txn = producer._txn_manager
    return txn is not None and txn.is_in_transaction()


def transaction_failed(producer: aiokafka.AIOKafkaProducer) -> bool:
    """Whether ``producer``'s transactions failed for good (fenced, or refused).

    Works around: aiokafka keeps its transaction state in a private ``_txn_manager``.
    """
    txn = producer._txn_manager
    return txn is not None and txn.is_fatal_error()


def transactional(producer: aiokafka.AIOKafkaProducer) -> bool:
    """Whether ``producer`` was given a transactional id."""
    txn = producer._txn_manager
    return txn is not None and txn.transactional_id is not None


def compresses(producer: aiokafka.AIOKafkaProducer) -> bool:
    """Whether ``producer`` compresses its batches.

    Works around: aiokafka keeps the compression type it was given private.
    """
    return producer._compression_type is not None


def record_batch(producer: aiokafka.AIOKafkaProducer, max_bytes: int) -> BatchBuilder:
    """An empty, uncompressed record batch of up to ``max_bytes`` for ``producer``'s
    ``send_batch`` (transactional if the producer is).

    Works around: aiokafka's public ``create_batch`` sizes batches by the producer's
    ``max_batch_size`` (16 KiB, faust's ``producer_max_batch_size``): a checkpoint's
    changelog would go out in 32 times as many batches and produce requests.
    """
    return BatchBuilder(max_bytes, 0, is_transactional=transactional(producer))


def fetch_request(
    max_wait_ms: int,
    max_bytes: int,
    partitions: Mapping[str, list[tuple[int, int, int]]],
) -> Any:
    """A read-committed fetch request for (partition, offset, max bytes) of each topic.

    Works around: aiokafka's consumer makes a Python ``ConsumerRecord`` per record, and
    has no public way to fetch raw record batches; its protocol classes are not API.
    """
    return FetchRequest(max_wait_ms, 1, max_bytes, 1, list(partitions.items()))


def partition_response(rest: list[Any]) -> tuple[int, Any, bytes]:
    """(last stable offset, aborted transactions, records) of one partition's answer,
    after its partition, error code and high watermark.

    Works around: the fetch response's fields are positional and vary by version (v4+:
    last stable offset, log start from v5, aborted, preferred replica from v11, records).
    """
    return rest[0], rest[2 if len(rest) > 4 else -2], rest[-1]


def record_batches(data: bytes) -> Iterator[Any]:
    """The whole record batches in a fetched partition's bytes (a batch cut off at the end
    of the response is left for the next fetch).

    Works around: aiokafka's record code (C) is used by its consumer only; not API.
    """
    batches = MemoryRecords(data)
    while batches.has_next():
        batch = batches.next_batch()
        if batch is None:
            return
        yield batch


def is_abort_marker(key: bytes) -> bool:
    """Whether a control record's key marks an aborted transaction."""
    return ControlRecord.parse(key) == ABORT_MARKER


async def missing_on_a_broker(
    client: AIOKafkaClient, brokers: Iterable[Any], topics: set[str]
) -> list[str]:
    """The ``topics`` some broker's metadata lacks yet; a broker that does not answer is
    passed over (it is down, and serves no group).

    Works around: aiokafka's client asks one broker for metadata, and has no public way to
    ask a given one; each broker of a cluster learns of a new topic on its own.
    """
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


async def ask_for_metadata(host: str, port: int, timeout_ms: int, **kwargs: Any) -> None:
    """Connect to one broker, log in (``kwargs``: aiokafka's TLS and SASL arguments) and
    ask for the cluster's metadata; the error that stopped it, raised as it came.

    Works around: aiokafka's clients give up with "Unable to bootstrap" whatever the
    reason (a refused login, a TLS mismatch); a single connection keeps the reason.
    """
    conn = await create_conn(host, port, request_timeout_ms=timeout_ms, **kwargs)
    try:
        await conn.send(MetadataRequest([]))
    finally:
        conn.close()
