"""The Kafka reader fetches record batches itself (belvedere.streams.fetcher): what
aiokafka's consumer handled for it, it must handle too, on a real broker."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic, RecordsToDelete
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest
from faust.types import TP

from belvedere.streams.fetcher import LogTruncated, fetch_ranges
from belvedere.streams.readers import KafkaReader, ReaderClosed

Read = list[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes]]]]


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 120))  # type: ignore[arg-type]


async def with_topic(bootstrap: str, partitions: int, body: Callable[[str], Awaitable[Any]]) -> Any:
    topic = f"reader-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
        return await body(topic)
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """One record at a time, into partition 0."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, partition=0)
    finally:
        await producer.stop()


async def produce_many(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """Many records into partition 0, in batches."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(topic, v, partition=0) for v in values])
    finally:
        await producer.stop()


async def read_all(reader: KafkaReader, ranges: dict[TP, tuple[int, int]]) -> dict[TP, Read]:
    found: dict[TP, Read] = {tp: [] for tp in ranges}
    async for tp, batch in reader.read(ranges):
        assert all(r.topic == tp.topic and r.partition == tp.partition for r in batch)
        found[tp] += [(r.offset, r.key, r.value, list(r.headers)) for r in batch]
    return found


def test_reads_exactly_each_range_over_many_fetches(kafka_bootstrap: str) -> None:
    value = b"x" * 1000

    async def body(topic: str) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
        await producer.start()
        try:
            sent = [
                await producer.send(topic, value + b"%d" % i, key=b"k%d" % i, partition=i % 3,
                                    headers=[("h", b"%d" % i)], timestamp_ms=1_000_000 + i)
                for i in range(15_000)
            ]  # fmt: skip
            await asyncio.gather(*sent)
        finally:
            await producer.stop()
        reader = KafkaReader(kafka_bootstrap)
        try:
            tps = [TP(topic, p) for p in range(3)]
            assert await reader.offsets(tps) == dict.fromkeys(tps, (0, 5_000))
            # 5 MB in partition 0: more than one fetch's 4 MiB
            ranges = {tps[0]: (0, 5_000), tps[1]: (1_234, 4_321), tps[2]: (7, 7)}
            found = await read_all(reader, ranges)
            assert [o for o, *_ in found[tps[0]]] == list(range(5_000))
            assert [o for o, *_ in found[tps[1]]] == list(range(1_234, 4_321))
            assert found[tps[2]] == []
            i = 3 * 1_234 + 1  # the 1,234th record of partition 1
            assert found[tps[1]][0] == (1_234, b"k%d" % i, value + b"%d" % i, [("h", b"%d" % i)])
            # timestamps: the 4,000th record of each partition is the first at or after
            later = await reader.offsets_for_time(tps, 1_000_000 + 3 * 4_000)
            assert later == dict.fromkeys(tps, 4_000)
            assert await reader.offsets_for_time(tps, 2_000_000) == dict.fromkeys(tps, 5_000)
        finally:
            await reader.close()

    run(with_topic(kafka_bootstrap, 3, body))


def test_skips_transaction_markers_and_starts_inside_a_compressed_batch(
    kafka_bootstrap: str,
) -> None:
    async def body(topic: str) -> None:
        tp = TP(topic, 0)
        txn = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"{topic}-txn")
        gzip = AIOKafkaProducer(
            bootstrap_servers=kafka_bootstrap, compression_type="gzip", linger_ms=50
        )
        await txn.start()
        await gzip.start()
        try:
            for round_ in range(3):
                async with txn.transaction():  # each commit adds a control record
                    for i in range(10):
                        await txn.send(topic, b"t%d-%d" % (round_, i), partition=0)
            futures = [await gzip.send(topic, b"z%d" % i, partition=0) for i in range(50)]
            zipped = [m.offset for m in await asyncio.gather(*futures)]
        finally:
            await txn.stop()
            await gzip.stop()
        reader = KafkaReader(kafka_bootstrap)
        try:
            start, end = (await reader.offsets([tp]))[tp]
            assert end == 30 + 3 + 50  # 30 records, 3 commit markers, 50 compressed
            found = await read_all(reader, {tp: (start, end)})
            values = [v for _, _, v, _ in found[tp]]
            assert values == [b"t%d-%d" % (r, i) for r in range(3) for i in range(10)] + [
                b"z%d" % i for i in range(50)
            ]
            # from the middle of a compressed batch: nothing before the start
            middle = zipped[25]
            found = await read_all(reader, {tp: (middle, end)})
            assert [v for _, _, v, _ in found[tp]] == [b"z%d" % i for i in range(25, 50)]
        finally:
            await reader.close()

    run(with_topic(kafka_bootstrap, 1, body))


def test_reads_committed_records_only_and_ends_at_the_last_stable_offset(
    kafka_bootstrap: str,
) -> None:
    """A fenced worker's checkpoint is an aborted transaction: restores, standbys and change
    feeds must not see it, nor what an open transaction has written so far."""

    async def body(topic: str) -> None:
        tp = TP(topic, 0)
        txn = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"{topic}-txn")
        plain = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await txn.start()
        await plain.start()
        reader = KafkaReader(kafka_bootstrap)
        try:
            async with txn.transaction():
                await txn.send_and_wait(topic, b"kept-1", partition=0)
            await txn.begin_transaction()
            for i in range(5):
                await txn.send_and_wait(topic, b"aborted-%d" % i, partition=0)
            await plain.send_and_wait(topic, b"plain", partition=0)  # interleaved, committed
            await txn.abort_transaction()
            async with txn.transaction():
                await txn.send_and_wait(topic, b"kept-2", partition=0)
            await txn.begin_transaction()
            await txn.send_and_wait(topic, b"open", partition=0)
            # kept-1, marker, 5 aborted, plain, marker, kept-2, marker | open (not stable)
            start, end = (await reader.offsets([tp]))[tp]
            assert end == 11
            found = await read_all(reader, {tp: (start, end)})
            assert [v for _, _, v, _ in found[tp]] == [b"kept-1", b"plain", b"kept-2"]
            await txn.abort_transaction()  # its marker is written after the coordinator answers
            deadline = time.monotonic() + 30
            while (
                end := (await reader.offsets([tp]))[tp][1]
            ) != 13 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert end == 13  # the open one aborted: its record and marker are stable
            found = await read_all(reader, {tp: (start, end)})
            assert [v for _, _, v, _ in found[tp]] == [b"kept-1", b"plain", b"kept-2"]
        finally:
            await reader.close()
            await txn.stop()
            await plain.stop()

    run(with_topic(kafka_bootstrap, 1, body))


def test_a_start_deleted_by_retention_reads_from_the_new_log_start(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(topic: str) -> None:
        tp = TP(topic, 0)
        await produce(kafka_bootstrap, topic, [b"%d" % i for i in range(100)])
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(60)})
        finally:
            await admin.close()
        reader = KafkaReader(kafka_bootstrap)
        try:
            assert (await reader.offsets([tp]))[tp] == (60, 100)
            found = await read_all(reader, {tp: (0, 100)})  # a range computed before the deletion
            assert [o for o, *_ in found[tp]] == list(range(60, 100))
        finally:
            await reader.close()

    run(with_topic(kafka_bootstrap, 1, body))
    assert "deleted by retention" in caplog.text


def test_a_topic_deleted_and_created_again_before_its_read_raises_instead_of_waiting(
    kafka_bootstrap: str,
) -> None:
    async def body(topic: str) -> None:
        tp = TP(topic, 0)
        await produce(kafka_bootstrap, topic, [b"gone soon"])
        reader = KafkaReader(kafka_bootstrap)
        reader.give_up_after = 1.0
        try:
            ranges = await reader.offsets([tp])
            admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
            await admin.start()
            try:
                await admin.delete_topics([topic])
            finally:
                await admin.close()
            # the broker creates it again, empty, when the reader asks for its leader
            with pytest.raises(LogTruncated, match=r"deleted \(and created again\) or truncated"):
                await read_all(reader, ranges)
        finally:
            await reader.close()

    run(with_topic(kafka_bootstrap, 1, body))


def test_offsets_of_a_topic_new_to_the_reader_need_no_metadata_retry(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A rebuild positions its replay, and a restore sizes its changelog, with the first
    offsets request for those topics; aiokafka answers a partition missing from its
    metadata with a retry after its backoff (100 ms), unless the reader learns the topic
    first."""

    async def body(topic: str) -> None:
        await produce(kafka_bootstrap, topic, [b"a", b"b"])
        reader = KafkaReader(kafka_bootstrap)
        try:
            await reader.connect()
            with caplog.at_level("DEBUG", logger="aiokafka.consumer.fetcher"):
                bounds = await reader.offsets([TP(topic, 0), TP(topic, 1)])
                since = await reader.offsets_for_time([TP(topic, 0)], 0)
        finally:
            await reader.close()
        assert bounds == {TP(topic, 0): (0, 2), TP(topic, 1): (0, 0)}
        assert since == {TP(topic, 0): 0}
        retried = [
            r.getMessage() for r in caplog.records if "unknown for fetching" in r.getMessage()
        ]
        assert not retried, retried

    run(with_topic(kafka_bootstrap, 2, body))


def test_sends_the_next_fetch_before_delivering_a_response(kafka_bootstrap: str) -> None:
    """The broker prepares the next response while the reader unpacks and the caller folds
    the last one: at each delivery but the last, the fetch for what follows is on its way."""

    async def body(topic: str) -> None:
        await produce_many(kafka_bootstrap, topic, [b"x" * 1000] * 5_000)  # 5 MB: 2+ fetches
        client = AIOKafkaClient(bootstrap_servers=kafka_bootstrap)
        await client.bootstrap()
        sent: list[Any] = []
        send = client.send

        def counting_send(node: int, request: Any, **kwargs: Any) -> Any:
            if isinstance(request, FetchRequest):
                sent.append(request)
            return send(node, request, **kwargs)

        client.send = counting_send  # type: ignore[method-assign]
        seen: list[tuple[int, int]] = []  # (fetches sent so far, records delivered)

        async def deliver(tp: TP, records: list[Any]) -> None:
            seen.append((len(sent), len(records)))

        async def log_starts(tps: list[TP]) -> dict[TP, int]:
            raise AssertionError("no record was deleted")

        try:
            await fetch_ranges(client, {TP(topic, 0): (0, 5_000)}, deliver, log_starts)
        finally:
            await client.close()
        assert sum(n for _, n in seen) == 5_000
        assert len(seen) >= 2, seen
        assert all(fetches == i + 2 for i, (fetches, _) in enumerate(seen[:-1])), seen

    run(with_topic(kafka_bootstrap, 1, body))


def test_reads_on_one_reader_go_on_at_once(kafka_bootstrap: str) -> None:
    """HTTP requests share a worker's reader: reads interleave, one left unfinished does not
    stop the others, and a read still going when the reader closes is told so."""

    async def body(topic: str) -> None:
        value = b"x" * 1000
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
        await producer.start()
        try:
            sent = [await producer.send(topic, value, partition=i % 2) for i in range(12_000)]
            await asyncio.gather(*sent)  # 6 MB per partition: several fetches each
        finally:
            await producer.stop()
        reader = KafkaReader(kafka_bootstrap)
        first, second = TP(topic, 0), TP(topic, 1)
        a = reader.read({first: (0, 6_000)})
        b = reader.read({second: (100, 5_900)})
        left = reader.read({first: (0, 6_000)})
        got: dict[str, list[int]] = {"a": [], "b": []}
        try:
            await anext(left)  # begun, then left unfinished
            pending = {"a": a, "b": b}
            while pending:  # take turns
                for name, read in list(pending.items()):
                    try:
                        _, batch = await anext(read)
                    except StopAsyncIteration:
                        del pending[name]
                    else:
                        got[name] += [r.offset for r in batch]
            assert got["a"] == list(range(6_000))
            assert got["b"] == list(range(100, 5_900))
            waiting = reader.read({second: (0, 6_000)})
            await anext(waiting)
            closing = asyncio.ensure_future(reader.close())
            with pytest.raises(ReaderClosed):
                async for _ in waiting:
                    pass
            await closing
        finally:
            await left.aclose()
            await reader.close()

    run(with_topic(kafka_bootstrap, 2, body))
