"""faust internals Belvedere relies on: committing chosen offsets, the Kafka driver's
clients, the group assignor the partition assignor uses, the table manager's start, a
hook on each fetched batch, and the web driver's runner.

Each names the faust limit it works around; ``tests/test_compat.py`` checks the private
names and behaviour each one relies on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, ClassVar

import aiokafka
from aiohttp import web
from faust.assignor import partition_assignor
from faust.assignor.client_assignment import CopartitionedAssignment
from faust.assignor.copartitioned_assignor import CopartitionedAssignor as FaustGroupAssignor
from faust.assignor.partition_assignor import PartitionAssignor as FaustPartitionAssignor
from faust.tables import TableManager as FaustTableManager
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers import aiokafka as faust_kafka
from faust.types import TP

from belvedere.compat.aiokafka import BackoffKafkaProducer, back_off_failed_metadata, client_of
from belvedere.compat.aiokafka import read_committed as set_read_committed

__all__ = [
    "FetchHook",
    "GroupAssignor",
    "KafkaTransport",
    "PartitionAssignor",
    "TableManager",
    "commit_offsets",
    "replace_web_runner",
    "web_runner",
]


async def commit_offsets(consumer: FaustConsumer, offsets: Mapping[TP, int]) -> bool:
    """Commit these offsets for the consumer's group, whatever was acked.

    Works around: faust's public ``commit()`` commits the offsets of acked messages only;
    a batch taken off the consumer by the tap is never acked message by message.
    """
    return await consumer._commit(offsets)


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


def web_runner(web_driver: Any) -> web.AppRunner:
    """The aiohttp runner of faust's aiohttp web driver.

    Works around: faust's ``Web`` keeps its runner private and builds it itself.
    """
    return web_driver._runner


def replace_web_runner(web_driver: Any, runner: web.AppRunner) -> None:
    """Have faust's aiohttp web driver serve through ``runner`` (set before it starts)."""
    web_driver._runner = runner
