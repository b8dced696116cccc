"""The embedded broker's consumer: faust's Consumer over the local log, as a one-member group.

faust's partition assignor is written against aiokafka's group protocol. With one member
there is no coordinator to talk to, so this consumer runs the group protocol's steps itself,
in the order aiokafka's rebalance listener does:
rebalance start, revoke, assign with faust's own assignor as the leader, bump the generation,
then the assignment callbacks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from belvedere.compat.faust import note_seek
from belvedere.streams.embedded.log import Log, LogSource, StoredRecord
from belvedere.streams.partitioner import partition_for_key

__all__ = ["Consumer"]

#: The member id this process has in its one-member group.
MEMBER_ID = "belvedere-embedded"


class _Cluster:
    """The slice of aiokafka's ClusterMetadata that faust's assignor reads."""

    def __init__(self, log: Log) -> None:
        self._log = log

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        n = self._log.partitions(topic)
        return None if n is None else set(range(n))


class Consumer(FaustConsumer):
    """Reads assigned partitions from the embedded log and keeps the group's offsets there."""

    transport: LogSource
    consumer_stopped_errors = ()

    def __init__(self, transport: LogSource, **kwargs: Any) -> None:
        self._log: Log | None = None
        self._subscription: set[str] = set()
        self._assignment: set[TP] = set()
        self._positions: dict[TP, int] = {}
        self._generation = 0
        self._rebalancing: asyncio.Future[None] | None = None
        self._rebalance_again = False
        super().__init__(transport, **kwargs)

    @property
    def broker_log(self) -> Log:
        if self._log is None:
            self._log = self.transport.acquire_log()
        return self._log

    @property
    def group(self) -> str:
        return self.app.conf.id

    async def on_stop(self) -> None:
        await super().on_stop()
        if self._log is not None:
            self._log.release()
            self._log = None

    # -- group membership ----------------------------------------------------------------

    async def subscribe(self, topics: Iterable[str]) -> None:
        """Start a rebalance in the background, as Kafka does on a subscription change.

        Running it here would deadlock: faust's assignment callback waits for the
        conductor, which waits for this call to return.
        """
        topics = set(topics)
        default_partitions = self.app.conf.topic_partitions
        for topic in topics:
            if self.broker_log.partitions(topic) is None:
                self.broker_log.create_topic(topic, default_partitions)
        self._subscription = topics
        if self._rebalancing is None or self._rebalancing.done():
            self._rebalancing = self.add_future(self._rebalance_until_settled())
        else:
            self._rebalance_again = True

    async def _rebalance_until_settled(self) -> None:
        while True:
            self._rebalance_again = False
            await self._rebalance()
            if not self._rebalance_again or self.should_stop:
                return

    async def _rebalance(self) -> None:
        app = self.app
        previous = set(self._assignment)
        app.on_rebalance_start()
        if previous:
            # faust forgets acked-but-uncommitted offsets of revoked partitions before it
            # commits; drain and commit them first so nothing is processed twice.
            self.stop_flow()
            await self.wait_empty()
        await self.on_partitions_revoked(previous)
        assigned = self._assign()
        self._generation += 1
        app.consumer_generation_id = self._generation
        self._assignment = assigned
        self._positions = {tp: self._starting_offset(tp) for tp in assigned}
        await self.on_partitions_assigned(assigned, self._generation)

    def _assign(self) -> set[TP]:
        assignor = self.app.assignor
        metadata = assignor.metadata(self._subscription)
        result = assignor.assign(_Cluster(self.broker_log), {MEMBER_ID: metadata})
        mine = result[MEMBER_ID]
        assignor.on_assignment(mine)
        return {TP(topic, p) for topic, partitions in mine.assignment for p in partitions}

    def _starting_offset(self, tp: TP) -> int:
        committed = self.broker_log.committed(self.group, tp.topic, tp.partition)
        if committed is not None:
            return committed
        if self.app.conf.consumer_auto_offset_reset == "latest":
            return self.broker_log.end_offset(tp.topic, tp.partition)
        return self.broker_log.start_offset(tp.topic, tp.partition)

    def assignment(self) -> set[TP]:
        return set(self._assignment)

    # -- positions and offsets -------------------------------------------------------------

    async def seek_to_committed(self) -> Mapping[TP, int | None]:
        committed = {}
        for tp in self._assignment:
            committed[tp] = self.broker_log.committed(self.group, tp.topic, tp.partition)
            self._positions[tp] = self._starting_offset(tp)
        return committed

    async def _seek(self, partition: TP, offset: int) -> None:
        self._positions[partition] = max(offset, 0)

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        for tp, offset in partitions.items():
            self._positions[tp] = max(offset, 0)
            note_seek(self, tp, offset)

    async def position(self, tp: TP) -> int | None:
        return self._positions.get(tp)

    def highwater(self, tp: TP) -> int:
        return self.broker_log.end_offset(tp.topic, tp.partition)

    async def highwaters(self, *partitions: TP) -> Mapping[TP, int]:
        return {tp: self.broker_log.end_offset(tp.topic, tp.partition) for tp in partitions}

    async def earliest_offsets(self, *partitions: TP) -> Mapping[TP, int]:
        return {tp: self.broker_log.start_offset(tp.topic, tp.partition) for tp in partitions}

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        mine = {
            (tp.topic, tp.partition): off for tp, off in offsets.items() if tp in self._assignment
        }
        if not mine:
            return False
        self.broker_log.commit(self.group, mine)
        return True

    # -- fetching ----------------------------------------------------------------------------

    async def _getmany(
        self, active_partitions: set[TP] | None, timeout: float
    ) -> Mapping[TP, list[StoredRecord]]:
        # While flow is stopped faust would drop the rest of a batch.
        if not self.flow_active:
            return {}
        tps = self._assignment if active_partitions is None else active_partitions
        records = self._fetch(tps)
        if not records:
            await self.broker_log.wait_for_append(timeout)
            if not self.flow_active or self.should_stop:
                return {}
            records = self._fetch(tps)
        return records

    def _fetch(self, tps: Iterable[TP]) -> dict[TP, list[StoredRecord]]:
        max_records = self.app.conf.broker_max_poll_records or 500
        out = {}
        for tp in tps:
            position = self._positions.get(tp)
            if position is None or tp not in self._assignment:
                continue
            records = self.broker_log.read(tp.topic, tp.partition, position, max_records)
            if records:
                out[tp] = records
                self._positions[tp] = records[-1].offset + 1
        return out

    def _to_message(self, tp: TP, record: StoredRecord) -> ConsumerMessage:
        key, value = record.key, record.value
        return ConsumerMessage(
            record.topic,
            record.partition,
            record.offset,
            record.timestamp_ms / 1000.0,
            0,
            list(record.headers),
            key,
            value,
            None,
            len(key) if key is not None else 0,
            len(value) if value is not None else 0,
            tp,
            generation_id=self.app.consumer_generation_id,
        )

    # -- topics --------------------------------------------------------------------------

    def _new_topicpartition(self, topic: str, partition: int) -> TP:
        return TP(topic, partition)

    def topic_partitions(self, topic: str) -> int | None:
        return self.broker_log.partitions(topic)

    def key_partition(
        self, topic: str, key: bytes | None, partition: int | None = None
    ) -> int | None:
        if partition is not None:
            return partition
        n = self.broker_log.partitions(topic)
        return None if n is None else partition_for_key(key, n)

    async def create_topic(
        self,
        topic: str,
        partitions: int,
        replication: int,
        *,
        compacting: bool | None = None,
        **kwargs: Any,
    ) -> None:
        self.broker_log.create_topic(topic, partitions, compacting=bool(compacting))
