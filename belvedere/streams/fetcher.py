"""Fetching Kafka partitions a record batch at a time, for readers outside faust's consumer.

aiokafka's consumer makes a ``ConsumerRecord`` per record in Python, and that time holds
the GIL the fold needs. Here fetch requests go through aiokafka's client, batches are
unpacked by aiokafka's C record code, and each record becomes a small :class:`LogRecord`:
1.06 CPU-us per record read against the consumer's 1.56, with the worker's garbage
collector settings (``bench/reader_unpack.py``, docs/benchmarks.md run F).

What aiokafka's consumer did for us is done here: leaders are looked up and refreshed,
control batches skipped, CRCs checked, and records under the fetch offset (inside a
compressed batch) dropped. Reads are committed (``read_committed``): the broker answers up to
the last stable offset, and the records of aborted transactions (a fenced worker's
checkpoint, see :mod:`belvedere.streams.transactions`) are dropped here, by the aborted
transactions each fetch response lists.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiokafka import TopicPartition
from aiokafka import errors as kafka_errors
from faust.types import TP

from belvedere.compat.aiokafka import (
    fetch_request,
    is_abort_marker,
    partition_response,
    record_batches,
)

__all__ = ["LogRecord", "LogTruncated", "fetch_ranges"]

logger = logging.getLogger(__name__)

#: Bytes a fetch asks for in all, and per partition (a larger first batch comes whole).
FETCH_MAX_BYTES = 4 << 20
PARTITION_MAX_BYTES = 4 << 20
FETCH_MAX_WAIT_MS = 10
#: Seconds between two tries after an error, and between two warnings about it.
RETRY_BACKOFF = 0.1
WARN_EVERY = 10.0
#: Seconds a read waits for a topic missing from the cluster, or for a log ending before
#: the range does, before it gives up.
GIVE_UP_AFTER = 30.0


class LogTruncated(kafka_errors.KafkaError):
    """A partition's log ends before records it held when the read began (retried a
    while: a new leader's log end may lag for a moment)."""

    retriable = True


class LogRecord:
    """One record read from a partition, with the fields faust's and aiokafka's records
    share (``timestamp`` in milliseconds)."""

    __slots__ = ("headers", "key", "offset", "partition", "timestamp", "topic", "value")

    def __init__(self, topic: str, partition: int, record: Any) -> None:
        self.topic = topic
        self.partition = partition
        self.offset: int = record.offset
        self.timestamp: int = record.timestamp
        self.key: bytes | None = record.key
        self.value: bytes | None = record.value
        self.headers: list[tuple[str, bytes]] = record.headers

    def __repr__(self) -> str:
        return f"LogRecord({self.topic}[{self.partition}]@{self.offset})"


Ranges = Mapping[TP, tuple[int, int]]
Deliver = Callable[[TP, list[LogRecord]], Awaitable[None]]
LogStarts = Callable[[list[TP]], Awaitable[Mapping[TP, int]]]


async def fetch_ranges(
    client: Any,
    ranges: Ranges,
    deliver: Deliver,
    log_starts: LogStarts,
    give_up_after: float = GIVE_UP_AFTER,
) -> None:
    """Fetch each partition's records with offsets in [start, end) and hand each
    partition's share of a response to ``deliver`` (in offset order per partition).

    ``client`` is a started ``AIOKafkaClient``. Each broker's next fetch is sent as soon as
    a response says where it ends, before its records are unpacked and delivered, so the
    broker's reply overlaps that work. Errors a retry can mend (a moved leader, a broker
    restarting) are retried until they pass; the caller bounds the wait. A start that
    retention deleted meanwhile moves up to the log's new start (``log_starts``): those
    records are gone for every reader. Two states can pass (a topic just created, a new
    leader catching up) but mean, when they last ``give_up_after`` seconds, that the range
    will never be read: a topic missing from the cluster's metadata
    (``UnknownTopicOrPartitionError``), and a log ending before the range does
    (``LogTruncated``).
    """
    position = {tp: start for tp, (start, end) in ranges.items() if end > start}
    ends = {tp: ranges[tp][1] for tp in position}
    for topic in {tp.topic for tp in position}:
        await client.add_topic(topic)
    trouble = _Trouble()
    stuck_since: float | None = None
    ahead: dict[int, _Sent] = {}  # per broker: the fetch sent for where the last one ended
    try:
        while position:
            try:
                for node, tps in _by_leader(client, position).items():
                    await _fetch_once(client, node, tps, position, ends, deliver, ahead)
                stuck_since = None
            except kafka_errors.OffsetOutOfRangeError:
                _drop(ahead)
                starts = await log_starts(list(position))
                moved = {tp: starts[tp] for tp in position if starts[tp] > position[tp]}
                if not moved:
                    raise  # past the log's end: the caller's range is wrong
                logger.warning("records deleted by retention while being read; from %s", moved)
                position.update(moved)
            except (kafka_errors.KafkaError, OSError) as exc:
                _drop(ahead)
                if isinstance(exc, kafka_errors.KafkaError) and not exc.retriable:
                    raise  # not authorized, a corrupt batch, ...: no retry mends it
                gone = {tp.topic for tp in position} - client.cluster.topics()
                if gone:
                    exc = kafka_errors.UnknownTopicOrPartitionError(
                        f"{', '.join(sorted(gone))} no longer exist"
                    )
                if not (gone or isinstance(exc, LogTruncated)):
                    stuck_since = None
                elif stuck_since is None:
                    stuck_since = time.monotonic()
                elif time.monotonic() - stuck_since >= give_up_after:
                    raise exc
                trouble.saw(exc, position)
                client.force_metadata_update()
                await asyncio.sleep(RETRY_BACKOFF)
            for tp in [tp for tp, offset in position.items() if offset >= ends[tp]]:
                del position[tp]
    finally:
        _drop(ahead)


def _by_leader(client: Any, position: Mapping[TP, int]) -> dict[int, list[TP]]:
    found: dict[int, list[TP]] = {}
    for tp in position:
        leader = client.cluster.leader_for_partition(TopicPartition(tp.topic, tp.partition))
        if leader is None or leader == -1:
            raise kafka_errors.StaleMetadata(f"no leader known for {tp}")
        found.setdefault(leader, []).append(tp)
    return found


class _Sent:
    """A fetch request on its way to a broker, for these offsets."""

    def __init__(self, client: Any, node: int, offsets: dict[TP, int]) -> None:
        self.offsets = offsets
        topics: dict[str, list[tuple[int, int, int]]] = {}
        for tp, offset in offsets.items():
            topics.setdefault(tp.topic, []).append((tp.partition, offset, PARTITION_MAX_BYTES))
        request = fetch_request(FETCH_MAX_WAIT_MS, FETCH_MAX_BYTES, topics)
        self.response: asyncio.Future[Any] = asyncio.ensure_future(client.send(node, request))


def _drop(ahead: dict[int, _Sent]) -> None:
    for sent in ahead.values():
        sent.response.cancel()
    ahead.clear()


async def _fetch_once(
    client: Any,
    node: int,
    tps: list[TP],
    position: dict[TP, int],
    ends: Mapping[TP, int],
    deliver: Deliver,
    ahead: dict[int, _Sent],
) -> None:
    offsets = {tp: position[tp] for tp in tps}
    sent = ahead.pop(node, None)
    if sent is None or sent.offsets != offsets:
        if sent is not None:
            sent.response.cancel()
        sent = _Sent(client, node, offsets)
    response = await sent.response
    fetched = []  # (tp, records' bytes, the offset after them, the stable end, aborted)
    for topic, partitions in response.topics:
        for partition, error_code, _highwater, *rest in partitions:
            tp = TP(topic, partition)
            error = kafka_errors.for_code(error_code)
            if error is not kafka_errors.NoError:
                raise error(f"fetching {topic}[{partition}] at offset {offsets[tp]}")
            stable, aborted, data = partition_response(rest)
            fetched.append((tp, data, _next_offset(data, offsets[tp]), stable, aborted))
    reached = {tp: after for tp, _, after, _, _ in fetched}
    following = {
        tp: reached.get(tp, o) for tp, o in offsets.items() if reached.get(tp, o) < ends[tp]
    }
    if following:
        ahead[node] = _Sent(client, node, following)
    for tp, data, after, stable, aborted in fetched:
        records = _unpack(tp, data, position[tp], ends[tp], aborted)
        if records:
            await deliver(tp, records)
        position[tp] = after
        if after >= stable and stable < ends[tp]:
            raise LogTruncated(
                f"{tp.topic}[{tp.partition}] now ends at offset {stable}, before the "
                f"{ends[tp]} being read to: the topic was deleted (and created again) "
                "or truncated while it was read"
            )


def _next_offset(data: bytes, offset: int) -> int:
    """The offset after the whole batches in ``data`` (compaction leaves gaps in offsets,
    and empty batches), read from the batch headers alone."""
    for batch in record_batches(data):
        offset = max(offset, batch.next_offset)
    return offset


def _unpack(tp: TP, data: bytes, start: int, end: int, aborted: Any = None) -> list[LogRecord]:
    """The committed records of ``data`` with offsets in [start, end), CRCs checked.

    ``aborted`` lists (producer id, first offset) of the transactions aborted in the range:
    a producer's transactional batches from its first offset up to its abort marker are
    dropped.
    """
    topic, partition = tp.topic, tp.partition
    out: list[LogRecord] = []
    pending = sorted(aborted or (), key=lambda found: found[1])
    dropping: set[int] = set()
    for batch in record_batches(data):
        if not batch.validate_crc():
            raise kafka_errors.CorruptRecordException(f"invalid CRC in {topic}[{partition}]")
        while pending and pending[0][1] <= batch.base_offset:
            dropping.add(pending.pop(0)[0])
        if batch.is_control_batch:
            if batch.producer_id in dropping and _is_abort(batch):
                dropping.discard(batch.producer_id)
        elif not (batch.is_transactional and batch.producer_id in dropping):
            out.extend(LogRecord(topic, partition, r) for r in batch if start <= r.offset < end)
    return out


def _is_abort(batch: Any) -> bool:
    for record in batch:
        return is_abort_marker(record.key)
    return False


class _Trouble:
    """Warns about retried errors, once per WARN_EVERY seconds, not per retry."""

    def __init__(self) -> None:
        self._warned = 0.0

    def saw(self, exc: BaseException, position: Mapping[TP, int]) -> None:
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            logger.warning(
                "reading %s: %r; retrying",
                ", ".join(f"{tp.topic}[{tp.partition}]" for tp in position),
                exc,
            )
