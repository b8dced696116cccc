"""Canaries for belvedere/compat/: each fails when an upstream private name or behaviour a
workaround relies on changes, so an upgrade of faust, mode, aiokafka or aiohttp fails here
first, naming the workaround to revisit. No broker: the Kafka clients are pointed at a
loopback port nothing listens on."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
import time
from typing import Any

import aiokafka
import faust
import mode
import orjson
import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiokafka.cluster import ClusterMetadata
from aiokafka.conn import create_conn
from aiokafka.protocol import fetch as kafka_fetch
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.record.control_record import ABORT_MARKER, COMMIT_MARKER
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from faust.assignor import partition_assignor
from faust.assignor.copartitioned_assignor import CopartitionedAssignor
from faust.tables import TableManager as FaustTableManager
from faust.transport import by_url
from faust.transport.base import Transport
from faust.transport.conductor import Conductor as FaustConductor
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers import aiokafka as faust_kafka
from faust.types import TP
from faust.web.drivers.aiohttp import Web as FaustWeb

import belvedere
from belvedere.compat import aiohttp as compat_aiohttp
from belvedere.compat import aiokafka as compat_kafka
from belvedere.compat import faust as compat_faust
from belvedere.compat import malloc as compat_malloc
from belvedere.compat import mode as compat_mode
from belvedere.compat import orjson as compat_orjson
from belvedere.streams import tap
from belvedere.streams.assignor import BalancedCopartitionedAssignor, BalancedPartitionAssignor
from belvedere.streams.conductor import Conductor
from belvedere.streams.embedded.consumer import Consumer as EmbeddedConsumer
from belvedere.streams.records import Event, _defining_scope
from belvedere.views_api.connections import LimitedServer
from belvedere.worker import Worker
from tests.test_limits import GET, answer, serving

NOBODY = "127.0.0.1:9"  # refused at once


class Placed(Event):
    order_id: str


def params(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


# aiokafka


async def failed_update_seconds(client: Any) -> float:
    started = time.monotonic()
    assert not await client._metadata_update(client.cluster, set())
    return time.monotonic() - started


def test_the_workers_consumer_and_producer_wait_their_backoff_after_a_failed_update() -> None:
    """back_off_failed_metadata: aiokafka retries a failed metadata update at once."""
    app = belvedere.App("backoff", broker=f"kafka://{NOBODY}")

    async def main() -> None:
        consumer = app.consumer._thread._create_consumer(asyncio.get_running_loop())
        producer = compat_kafka.BackoffKafkaProducer(bootstrap_servers=NOBODY)
        try:
            for client in (consumer._client, producer.client):
                assert await failed_update_seconds(client) >= client._retry_backoff * 0.9
        finally:
            await consumer.stop()
            await producer.stop()

    asyncio.run(main())


def test_a_failed_metadata_update_still_returns_at_once_without_the_backoff() -> None:
    """The reason for back_off_failed_metadata: without it, a refused update returns at
    once (if aiokafka waits by itself one day, the workaround can go)."""

    async def main() -> float:
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=NOBODY)
        assert producer.client._retry_backoff > 0
        try:
            return await failed_update_seconds(producer.client)
        finally:
            await producer.stop()

    assert asyncio.run(main()) < 0.1 * 0.9  # the default backoff is 100 ms


async def test_the_aiokafka_consumer_keeps_its_client_and_isolation_level_private() -> None:
    consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=NOBODY)
    assert not hasattr(consumer, "client")
    assert compat_kafka.client_of(consumer) is consumer._client
    assert isinstance(consumer._client, aiokafka.AIOKafkaClient)
    assert consumer._isolation_level == "read_uncommitted"
    compat_kafka.read_committed(consumer)
    assert consumer._isolation_level == "read_committed"


async def test_the_clients_topics_are_a_private_set_that_set_topics_replaces() -> None:
    client = aiokafka.AIOKafkaConsumer(bootstrap_servers=NOBODY)._client
    client.set_topics(["a", "b"])
    assert client._topics == {"a", "b"}
    compat_kafka.forget_topic(client, "a")
    compat_kafka.forget_topic(client, "gone")
    assert client._topics == {"b"}


async def test_the_producers_transaction_state_and_compression_are_private() -> None:
    plain = aiokafka.AIOKafkaProducer(bootstrap_servers=NOBODY)
    assert plain._txn_manager is None and plain._compression_type is None
    assert not compat_kafka.transactional(plain) and not compat_kafka.compresses(plain)
    assert not compat_kafka.in_transaction(plain) and not compat_kafka.transaction_failed(plain)
    txn = aiokafka.AIOKafkaProducer(
        bootstrap_servers=NOBODY, transactional_id="t", compression_type="gzip"
    )
    assert txn._txn_manager.transactional_id == "t" and txn._compression_type == "gzip"
    assert compat_kafka.transactional(txn) and compat_kafka.compresses(txn)
    assert not compat_kafka.in_transaction(txn) and not compat_kafka.transaction_failed(txn)
    await asyncio.gather(plain.stop(), txn.stop())


async def test_a_record_batch_takes_the_size_asked_where_create_batch_takes_the_producers() -> None:
    """record_batch: aiokafka's public create_batch is sized by max_batch_size."""
    producer = aiokafka.AIOKafkaProducer(bootstrap_servers=NOBODY, transactional_id="t")
    assert params(producer.create_batch) == []
    assert params(producer.send_batch) == ["batch", "topic", "partition"]
    small, big = producer.create_batch(), compat_kafka.record_batch(producer, 512 << 10)
    value = b"x" * 1000
    assert (
        sum(small.append(timestamp=None, key=None, value=value) is not None for _ in range(64)) < 20
    )
    assert all(big.append(timestamp=None, key=b"k", value=value, headers=[]) for _ in range(64))
    big.close()
    [batch] = compat_kafka.record_batches(bytes(big._build()))
    assert batch.is_transactional and len(list(batch)) == 64  # as the producer's own are
    assert batch.compression_type == 0
    await producer.stop()


def test_fetch_requests_and_responses_have_the_layout_the_fetcher_reads() -> None:
    request = compat_kafka.fetch_request(10, 1 << 20, {"t": [(0, 5, 1 << 20)]})
    assert isinstance(request, kafka_fetch.FetchRequest)
    assert request._isolation_level == 1  # read committed
    assert request.topics == [("t", [(0, 5, 1 << 20)])]
    for version in range(4, 12):
        response = getattr(kafka_fetch, f"FetchResponse_v{version}")
        topic = dict(zip(response.SCHEMA.names, response.SCHEMA.fields, strict=True))["topics"]
        partitions = topic.array_of.fields[topic.array_of.names.index("partitions")]
        fields = list(partitions.array_of.names)
        assert fields[:3] == ["partition", "error_code", "highwater_offset"]
        assert compat_kafka.partition_response(fields[3:]) == (
            "last_stable_offset",
            "aborted_transactions",
            "message_set",
        )


def test_record_batches_skip_a_batch_cut_off_and_control_records_parse() -> None:
    builder = DefaultRecordBatchBuilder(2, 0, 1, 7, 0, 0, batch_size=1 << 20)
    builder.append(0, timestamp=None, key=b"k", value=b"v", headers=[])
    data = bytes(builder.build())
    assert [b.producer_id for b in compat_kafka.record_batches(data + data[:20])] == [7]
    assert compat_kafka.is_abort_marker(b"\x00\x00\x00\x00")
    assert ABORT_MARKER.type_ == 0 and COMMIT_MARKER.type_ == 1
    assert not compat_kafka.is_abort_marker(b"\x00\x00\x00\x01")


# faust


def test_faust_commits_chosen_offsets_through_its_private_commit() -> None:
    assert inspect.iscoroutinefunction(FaustConsumer._commit)
    assert params(faust_kafka.Consumer._commit) == ["self", "offsets"]
    assert params(FaustConsumer.commit) == ["self", "topics", "start_new_transaction"]


def test_faust_drivers_fetch_through_getmany() -> None:
    for consumer in (FaustConsumer, faust_kafka.Consumer, EmbeddedConsumer):
        assert params(consumer._getmany) == ["self", "active_partitions", "timeout"]
    source = inspect.getsource(FaustConsumer)
    assert "await self._getmany(" in source


def test_faust_builds_its_kafka_clients_in_private_factories() -> None:
    assert params(faust_kafka.AIOKafkaConsumerThread._create_consumer) == ["self", "loop"]
    assert params(faust_kafka.Consumer._new_consumer_thread) == ["self"]
    assert isinstance(inspect.getattr_static(faust_kafka.Producer, "_producer_type"), property)
    assert "self._producer_type(" in inspect.getsource(faust_kafka.Producer)


async def test_faust_s_kafka_consumer_reads_uncommitted_outside_exactly_once() -> None:
    """read_committed: faust offers no other way to a read-committed consumer."""
    for app, level in (
        (faust.App("plain", broker=f"kafka://{NOBODY}"), "read_uncommitted"),
        (belvedere.App("ours", broker=f"kafka://{NOBODY}"), "read_committed"),
    ):
        consumer = app.consumer._thread._create_consumer(asyncio.get_running_loop())
        try:
            assert consumer._isolation_level == level
        finally:
            await consumer.stop()


def test_the_apps_transports_are_belvedere_classes_on_faust_s_drivers() -> None:
    kafka = belvedere.App("compat", broker=f"kafka://{NOBODY}")
    assert type(kafka.transport) is tap.TappedKafkaTransport
    assert issubclass(tap.TappedKafkaTransport, by_url("kafka://"))
    assert type(kafka.producer) is compat_faust.KafkaProducer
    assert type(kafka.consumer) is tap.TappedKafkaConsumer
    assert type(kafka.consumer._thread) is compat_faust.KafkaConsumerThread
    embedded = belvedere.App("compat")
    assert type(embedded.transport) is tap.TappedEmbeddedTransport
    for cls in (tap.TappedKafkaTransport, tap.TappedKafkaConsumer, tap.TappedEmbeddedConsumer):
        assert cls.__module__ == "belvedere.streams.tap"


def test_faust_names_its_group_assignor_as_a_module_global() -> None:
    assert partition_assignor.CopartitionedAssignor is CopartitionedAssignor
    source = inspect.getsource(partition_assignor.PartitionAssignor._perform_assignment)
    assert "CopartitionedAssignor(" in source
    assert "_client_assignments" in inspect.getsource(CopartitionedAssignor.__init__)
    assert BalancedPartitionAssignor.group_assignor is BalancedCopartitionedAssignor


def test_the_group_assignor_is_swapped_for_one_assignment_only(monkeypatch) -> None:
    seen: list[type] = []

    def spy(self: Any, cluster: Any, member_metadata: Any) -> None:
        seen.append(partition_assignor.CopartitionedAssignor)

    monkeypatch.setattr(partition_assignor.PartitionAssignor, "_perform_assignment", spy)
    assignor = BalancedPartitionAssignor.__new__(BalancedPartitionAssignor)
    assignor._perform_assignment(None, None)
    assert seen == [BalancedCopartitionedAssignor]
    assert partition_assignor.CopartitionedAssignor is CopartitionedAssignor


def test_faust_s_table_manager_start_is_still_the_one_copied_less_its_sleep() -> None:
    """compat.faust.TableManager.on_start is faust's without ``sleep(1.0)``: if faust's
    changes, the copy must be looked at again."""
    body = inspect.getsource(FaustTableManager.on_start).split('"""')[-1].split()
    assert body == [
        "await", "self.sleep(1.0)",
        "if", "not", "self.should_stop:",
        "await", "self._update_channels()",
        "await", "self.recovery.start()",
    ]  # fmt: skip


def test_faust_s_web_driver_keeps_its_runner_private() -> None:
    assert "self._runner: AppRunner = AppRunner(" in inspect.getsource(FaustWeb.__init__)
    assert "self._runner.setup()" in inspect.getsource(FaustWeb)


def test_faust_builds_transport_and_web_driver_in_private_factories() -> None:
    plain = faust.App("plain")
    assert "by_url(self.conf.broker_consumer[0])" in inspect.getsource(faust.App._new_transport)
    assert "by_url(self.conf.web)(self)" in inspect.getsource(faust.App._new_web)
    assert "self._new_transport()" in inspect.getsource(faust.App)
    assert "self._new_web()" in inspect.getsource(faust.App)
    assert "self.transport.create_conductor(" in inspect.getsource(faust.App._new_conductor)
    assert "self.Conductor(" in inspect.getsource(Transport.create_conductor)
    assert plain._rebalancing_sensor_state is None
    ours = belvedere.App("ours")
    assert type(ours.web).__module__ == "belvedere.views_api.server"
    assert type(ours.transport.create_conductor()) is Conductor


def test_faust_keeps_the_clients_it_built_where_clients_reads_them() -> None:
    """For the test driver, which lends an app clients of its own and puts its own back."""
    app = belvedere.App("clients")
    assert compat_faust.clients(app) == (None, None, None, None)  # none built yet
    transport = app.transport
    assert compat_faust.clients(app)[0] is transport
    compat_faust.set_clients(app, (None, None, None, None))
    assert compat_faust.clients(app) == (None, None, None, None)
    assert app.transport is not transport  # built again when asked for
    compat_faust.set_clients(app, (transport, None, None, None))
    assert app.transport is transport


def test_faust_warns_of_a_rebalance_its_sensors_never_saw_start(caplog) -> None:
    """The reason for App._rebalance_started: a first assignment revokes nothing."""
    for app, warned in ((faust.App("plain"), True), (belvedere.App("ours"), False)):
        caplog.clear()
        app.sensors.add(app.monitor)  # as a worker does
        app.on_rebalance_return()
        app.on_rebalance_end()
        assert ("Missing sensor state" in caplog.text) is warned


def test_faust_s_conductor_updates_its_private_indices_before_subscribing() -> None:
    source = inspect.getsource(FaustConductor)
    assert "await self._update_indices()" in source
    assert "self._topics" in inspect.getsource(FaustConductor._update_indices)
    assert isinstance(FaustConductor(app=faust.App("plain"))._topics, set)


def test_faust_s_topic_clones_and_compiles_its_decoder_privately() -> None:
    assert "self._compile_decode()" in inspect.getsource(faust.topics.Topic.__init__)
    assert "self._clone_args()" in inspect.getsource(faust.channels.Channel)
    app = belvedere.App("ours")
    topic = app.event_topic("orders", Placed, partitions=2)
    clone = type(topic)(**topic._clone_args())  # what Channel.clone builds
    assert (clone.event_types, clone.partitions) == ((Placed,), 2)
    assert topic.decode == topic._decode_event


def test_faust_keeps_its_consumers_read_offsets_and_kafka_producer_private() -> None:
    app = belvedere.App("ours", broker=f"kafka://{NOBODY}")
    assert "self.consumer._read_offset[tp] = offset" in inspect.getsource(
        faust_kafka.AIOKafkaConsumerThread._seek_wait
    )
    tp = TP("t", 0)
    compat_faust.note_seek(app.consumer, tp, 5)
    assert app.consumer._read_offset[tp] == 5
    compat_faust.note_seek(app.consumer, tp, 0)
    assert tp not in app.consumer._read_offset
    assert "_producer" in vars(faust_kafka.Producer).get("__annotations__", {})
    assert compat_faust.kafka_client(app.producer) is None  # not started
    assert compat_faust.kafka_producer(app.producer) is None
    assert compat_faust.kafka_client(belvedere.App("embedded").producer) is None

    async def made() -> list[str]:  # a replay helper's own producer, on the app's broker
        producer = compat_faust.new_kafka_producer(app.producer)
        assert isinstance(producer, compat_kafka.BackoffKafkaProducer)
        await producer.stop()
        return producer.client._bootstrap_servers

    assert asyncio.run(made()) == [NOBODY]


def test_aiokafka_s_connection_and_metadata_request_take_what_the_checks_pass() -> None:
    assert {"request_timeout_ms", "ssl_context", "sasl_mechanism"} <= set(params(create_conn))
    assert params(MetadataRequest) == ["topics", "allow_auto_topic_creation"]
    assert "need_all_topic_metadata" in inspect.getsource(ClusterMetadata)
    assert asyncio.run(compat_kafka.missing_on_a_broker(None, [], {"t"})) == []  # type: ignore[arg-type]


# mode (faust's Worker)


def test_mode_s_worker_exit_and_signal_and_output_are_the_private_ones_replaced() -> None:
    assert inspect.getsource(mode.Worker._sentinel_task).split()[-1] == "asyncio.sleep(1.0)"
    assert "self._sentinel_task()" in inspect.getsource(mode.Worker)
    assert "-INT-" in inspect.getsource(mode.Worker._on_sigint)
    assert "self._flag_as_shutdown_by_signal()" in inspect.getsource(faust.Worker._on_sigint)
    assert "self._shutdown_immediately = True" in inspect.getsource(
        faust.Worker._flag_as_shutdown_by_signal
    )
    assert params(mode.Worker._say) == ["self", "msg", "file", "end", "kwargs"]
    assert params(mode.Worker._schedule_shutdown) == ["self", "signal"]
    assert issubclass(Worker, compat_mode.Worker)


# aiohttp


async def test_aiohttp_internals_the_server_relies_on_are_still_there() -> None:
    """Canary: these are aiohttp's private names the server subclasses or reads."""
    assert inspect.iscoroutinefunction(web.AppRunner._make_server)
    assert not hasattr(web.AppRunner, "make_server")  # compat's hook name is free
    plain = web.Server(lambda request: None, keepalive_timeout=5, max_line_size=100)
    assert plain._kwargs == {"keepalive_timeout": 5, "max_line_size": 100}
    assert compat_aiohttp.server_kwargs(plain) is plain._kwargs
    assert list(inspect.signature(RequestHandler.handle_error).parameters) == [
        "self",
        "request",
        "status",
        "exc",
        "message",
    ]
    async with serving() as served:  # and the server those build is the one that serves
        assert type(served.server) is LimitedServer
        reader, writer = await served.connect()
        writer.write(GET)
        assert (await answer(reader))[0] == 200
        assert len(served.server.open) == 1
        writer.close()


# the standard library


def test_the_defining_scope_of_a_class_in_a_function_is_found_through_inspect() -> None:
    marker = object()

    def define() -> dict[str, Any] | None:
        local = marker  # noqa: F841
        return _defining_scope()

    scope = define()
    assert scope is not None and scope["local"] is marker
    assert _defining_scope() is not None  # here too: a test function's locals
    assert inspect.currentframe() is not None  # CPython: frames are there to walk


_KEPT_RESULTS = """
import os, sys
import orjson
from belvedere.compat.orjson import dumps
encode = orjson.dumps if sys.argv[1] == "upstream" else dumps
def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = resident()
kept = [encode(i) for i in range(50_000)]
print(resident() - before)
"""


def _rss_growth_keeping_results(encoder: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _KEPT_RESULTS, encoder], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def test_orjson_results_kept_alive_still_pin_a_4_kib_buffer_each() -> None:
    """The canary: 50,000 kept results of ``orjson.dumps`` (1-5 bytes each) grow the process
    by ~200 MB. Under 100 MB, orjson sizes its results and the copy can go."""
    assert _rss_growth_keeping_results("upstream") > 100 << 20


def test_belvedere_s_dumps_keeps_a_result_in_a_block_of_its_size() -> None:
    assert _rss_growth_keeping_results("compat") < 20 << 20
    assert compat_orjson.dumps({"a": [1, None]}) == orjson.dumps({"a": [1, None]})


_MAPPED_AFTER_A_FREE = """
import ctypes, sys
from belvedere.compat.malloc import fix_mmap_threshold
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "fixed":
    assert fix_mmap_threshold()
libc.free(libc.malloc(4 << 20))  # a mapped block freed, as RocksDB frees a flushed memtable's
mapped = libc.mallinfo2().hblks
block = libc.malloc(1 << 20)  # then a block as large as a memtable's (2 MiB) or a table reader's
print(libc.mallinfo2().hblks - mapped)  # 1: mapped, unmapped when freed; 0: from the heap
libc.free(block)
"""


def _mapped_after_a_free(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _MAPPED_AFTER_A_FREE, mode], capture_output=True, text=True
    )
    if "mallinfo2" in done.stderr:
        pytest.skip("not glibc 2.33 or later")
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_glibc_still_raises_its_mmap_threshold_when_a_mapped_block_is_freed() -> None:
    """The canary: after a 4 MiB block is freed, glibc serves 1 MiB from the heap, where
    it stays when freed. When it maps it, glibc no longer moves the threshold and
    compat/malloc.py can go."""
    assert _mapped_after_a_free("upstream") == 0


def test_a_fixed_mmap_threshold_maps_large_blocks_after_a_free() -> None:
    """What keeps a RocksDB worker's resident set from growing with its freed memtables."""
    assert _mapped_after_a_free("fixed") == 1
    assert compat_malloc.MMAP_THRESHOLD == 128 * 1024
