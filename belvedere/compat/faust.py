"""faust internals Belvedere relies on: committing chosen offsets, the Kafka driver's
clients, the group assignor the partition assignor uses, the table manager's start, a
hook on each fetched batch, and the web driver's runner.

Each names the faust limit it works around; ``tests/test_compat.py`` checks the private
names and behaviour each one relies on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any, ClassVar

import aiokafka
import faust
from aiohttp import web
from aiokafka.client import AIOKafkaClient
from faust.assignor import partition_assignor
from faust.assignor.client_assignment import CopartitionedAssignment
from faust.assignor.copartitioned_assignor import CopartitionedAssignor as FaustGroupAssignor
from faust.assignor.partition_assignor import PartitionAssignor as FaustPartitionAssignor
from faust.tables import TableManager as FaustTableManager
from faust.topics import Topic as FaustTopic
from faust.transport import by_url
from faust.transport.base import Transport
from faust.transport.conductor import Conductor as FaustConductor
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers import aiokafka as faust_kafka
from faust.types import TP
from faust.web import drivers as web_drivers
from faust.web.base import Web

from belvedere.compat.aiokafka import BackoffKafkaProducer, back_off_failed_metadata, client_of
from belvedere.compat.aiokafka import read_committed as set_read_committed

__all__ = [
    "App",
    "Conductor",
    "FetchHook",
    "GroupAssignor",
    "KafkaTransport",
    "PartitionAssignor",
    "TableManager",
    "Topic",
    "clients",
    "commit_offsets",
    "kafka_client",
    "kafka_producer",
    "note_seek",
    "replace_web_runner",
    "set_clients",
    "web_runner",
]


class App(faust.App):
    """faust's App, its transport and web driver chosen by public methods, and its
    rebalance sensors told of a first assignment.

    Works around: faust builds its transport and web driver in the private
    ``_new_transport`` and ``_new_web``; and a worker's first assignment on Kafka revokes
    nothing, so faust's sensors never heard the rebalance start (its private
    ``_rebalancing_sensor_state``), and faust warned "Missing sensor state" on every start.
    """

    def transport_class(self) -> type[Transport]:
        """The transport for the app's broker URL."""
        return by_url(self.conf.broker_consumer[0])

    def web_class(self) -> type[Web]:
        """The web driver for the app's ``web`` URL."""
        return web_drivers.by_url(self.conf.web)

    def _new_transport(self) -> Transport:
        return self.transport_class()(self.conf.broker_consumer, self)

    def _new_web(self) -> Web:
        return self.web_class()(self)

    def on_rebalance_return(self) -> None:
        self._rebalance_started()
        super().on_rebalance_return()

    def on_rebalance_end(self) -> None:
        self._rebalance_started()
        super().on_rebalance_end()

    def _rebalance_started(self) -> None:
        if not self._rebalancing_sensor_state:
            self._rebalancing_sensor_state = self.sensors.on_rebalance_start(self)


async def commit_offsets(consumer: FaustConsumer, offsets: Mapping[TP, int]) -> bool:
    """Commit these offsets for the consumer's group, whatever was acked.

    Works around: faust's public ``commit()`` commits the offsets of acked messages only;
    a batch taken off the consumer by the tap is never acked message by message.
    """
    return await consumer._commit(offsets)


#: What :func:`clients` returns: an app's transport, producer transport, producer, consumer.
Clients = tuple[Any, Any, Any, Any]


def clients(app: faust.App) -> Clients:
    """The transport, producer transport, producer and consumer ``app`` has built so far
    (None for each not built yet), without building any; set them back with
    :func:`set_clients`.

    Works around: faust builds each lazily behind a public property whose getter builds one
    when there is none (``_transport``, ``_producer_transport``, ``_producer``,
    ``_consumer``); nothing public tells whether one was built, to put it back after a
    test driver lent the app clients of its own.
    """
    return app._transport, app._producer_transport, app._producer, app._consumer


def set_clients(app: faust.App, saved: Clients) -> None:
    """Give ``app`` these clients (None: built again when next asked for)."""
    app.transport, app.producer_transport, app.producer, app.consumer = saved


def note_seek(consumer: FaustConsumer, tp: TP, offset: int) -> None:
    """Tell faust's consumer that ``tp`` is read from ``offset`` on (a driver's
    ``seek_wait``), so that it delivers the records before its last read offset again.

    Works around: faust's consumer keeps the offset it read last in the private
    ``_read_offset``, which its aiokafka driver updates on a seek; a driver of its own must
    too, or a backward seek drops records.
    """
    if offset > 0:
        consumer._read_offset[tp] = offset
    else:
        consumer._read_offset.pop(tp, None)


def kafka_producer(producer: Any) -> aiokafka.AIOKafkaProducer | None:
    """The ``AIOKafkaProducer`` under faust's Kafka producer (None on another transport,
    or before it started).

    Works around: faust's Kafka producer keeps its ``AIOKafkaProducer`` private.
    """
    return getattr(producer, "_producer", None)


def new_kafka_producer(producer: Any) -> aiokafka.AIOKafkaProducer:
    """A new ``AIOKafkaProducer`` made as faust's Kafka producer makes its own (the app's
    settings, Belvedere's backoff client), for a process that sends on its own.

    Works around: faust builds its ``AIOKafkaProducer`` only in the private
    ``_new_producer``.
    """
    return producer._new_producer()


def kafka_client(producer: Any) -> AIOKafkaClient | None:
    """The aiokafka client under faust's Kafka producer (None as for
    :func:`kafka_producer`)."""
    return getattr(kafka_producer(producer), "client", None)


class FetchHook:
    """Consumer mixin: each fetched batch (records by partition) passes through
    :meth:`on_fetched` before faust's per-event path gets what it returns.

    Works around: faust has no hook between its fetch and its per-event delivery; its
    drivers' ``_getmany`` is where a fetched batch is whole.
    """

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:
        records = await super()._getmany(active_partitions, timeout)  # type: ignore[misc]
        if not records:
            return records
        return await self.on_fetched(records)

    async def on_fetched(self, records: Mapping[TP, Any]) -> Mapping[TP, Any]:
        return records


class KafkaConsumerThread(faust_kafka.AIOKafkaConsumerThread):
    """faust's consumer thread, its aiokafka consumer read committed and backing off after
    a failed metadata update.

    Works around: faust builds the aiokafka consumer itself (``_create_consumer``), read
    uncommitted outside its exactly-once mode, and aiokafka's fetcher, finding a partition
    without a known leader, retries metadata in a tight loop (41,276 refused connections
    logged in a 12 s outage).
    """

    def _create_consumer(self, loop: asyncio.AbstractEventLoop) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_consumer(loop)
        back_off_failed_metadata(client_of(consumer))
        # A fenced worker's aborted output must not be folded.
        set_read_committed(consumer)
        return consumer


class KafkaConsumer(faust_kafka.Consumer):
    """faust's Kafka consumer, on :class:`KafkaConsumerThread`.

    Works around: faust picks its consumer thread in the private ``_new_consumer_thread``.
    """

    def _new_consumer_thread(self) -> faust_kafka.AIOKafkaConsumerThread:
        return KafkaConsumerThread(self, loop=self.loop, beacon=self.beacon)


class KafkaProducer(faust_kafka.Producer):
    """faust's Kafka producer, on :class:`BackoffKafkaProducer`.

    Works around: faust picks the aiokafka producer class in the private
    ``_producer_type``; aiokafka's producer retries a failed metadata update in a tight loop
    (about 2,400 log lines a second while the broker was down).
    """

    @property
    def _producer_type(self) -> type[aiokafka.AIOKafkaProducer]:
        return BackoffKafkaProducer


class KafkaTransport(faust_kafka.Transport):
    """faust's Kafka transport on :class:`KafkaConsumer` and :class:`KafkaProducer`."""

    Consumer = KafkaConsumer
    Producer = KafkaProducer


class GroupAssignor(FaustGroupAssignor):
    """faust's assignor of one copartitioned group, with its clients' assignments public."""

    @property
    def clients(self) -> MutableMapping[str, CopartitionedAssignment]:
        """Each member's actives and standbys of this group, being assigned."""
        return self._client_assignments


@contextlib.contextmanager
def _group_assignor(assignor: type[FaustGroupAssignor]) -> Iterator[None]:
    original = partition_assignor.CopartitionedAssignor
    partition_assignor.CopartitionedAssignor = assignor  # type: ignore[misc]
    try:
        yield
    finally:
        partition_assignor.CopartitionedAssignor = original  # type: ignore[misc]


class PartitionAssignor(FaustPartitionAssignor):
    """faust's partition assignor, assigning each copartitioned group with
    :attr:`group_assignor`.

    Works around: faust names its group assignor as a module global of
    ``faust.assignor.partition_assignor``, with no setting; for one assignment (synchronous,
    on the group leader) that name is :attr:`group_assignor`.
    """

    group_assignor: ClassVar[type[FaustGroupAssignor]] = FaustGroupAssignor

    def _perform_assignment(self, cluster: Any, member_metadata: Any) -> Any:
        with _group_assignor(self.group_assignor):
            return super()._perform_assignment(cluster, member_metadata)


class TableManager(FaustTableManager):
    """faust's table manager, registering the tables at once on start.

    Works around: faust's ``TableManager.on_start`` sleeps a second before it registers
    the tables, on every start; the conductor already subscribes only once they are
    registered (``wait_until_tables_registered``), so the sleep only delays readiness.
    This is faust's ``on_start`` without that sleep (its ``_update_channels`` is private).
    """

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


class Conductor(FaustConductor):
    """faust's conductor, with a public hook around its index update (which precedes each
    subscription).

    Works around: faust's conductor has no hook before the consumer subscribes; its topic
    set (``_topics``) and its ``_update_indices`` are private.
    """

    async def _update_indices(self) -> Iterable[str]:
        return await self.update_indices(list(self._topics), super()._update_indices)

    async def update_indices(
        self, channels: list[Any], update: Callable[[], Awaitable[Iterable[str]]]
    ) -> Iterable[str]:
        """Run ``update`` (faust's index update) for these ``channels``; the topic names
        to subscribe to."""
        return await update()


class Topic(FaustTopic):
    """faust's Topic, with public hooks for what a subclass adds to its clones' arguments
    and for a decoder of its own.

    Works around: faust clones topics (``clone``: an agent's channel) through the private
    ``_clone_args``, and builds each topic's decoder in the private ``_compile_decode``.
    """

    def clone_kwargs(self) -> Mapping[str, Any]:
        """What a subclass's ``__init__`` takes beyond faust's, for a clone."""
        return {}

    def own_decoder(self) -> Callable[..., Awaitable[Any]] | None:
        """A decoder replacing faust's (same signature as faust's ``decode``), or None."""
        return None

    def _clone_args(self) -> Mapping:
        return {**super()._clone_args(), **self.clone_kwargs()}

    def _compile_decode(self) -> None:
        decode = self.own_decoder()
        if decode is None:
            super()._compile_decode()
        else:
            self.decode = decode  # type: ignore[method-assign]


def web_runner(web_driver: Any) -> web.AppRunner:
    """The aiohttp runner of faust's aiohttp web driver.

    Works around: faust's ``Web`` keeps its runner private and builds it itself.
    """
    return web_driver._runner


def replace_web_runner(web_driver: Any, runner: web.AppRunner) -> None:
    """Have faust's aiohttp web driver serve through ``runner`` (set before it starts)."""
    web_driver._runner = runner
