"""Kafka transactions that fence a zombie worker: one transactional producer per source
partition.

A worker paused past its session timeout (SIGSTOP, a long GC, a frozen VM) loses its
partitions to another worker, and when it resumes it still holds their state in memory.
Asking the group "am I still a member?" before a write proves nothing: the pause can land
between the question and the write. The broker has to refuse the write instead.

So every checkpoint of a source partition is one Kafka transaction: the changelog records
of every view folded from it, the events a command handler appends, the commands a saga
sends, what handlers publish, and the partition's source offset. Its transactional id is
derived from the app, the topic and the partition, the same on every worker, so the worker
given the partition next starts a producer with that id: the coordinator bumps the epoch,
aborts the old owner's open transaction, and refuses every later write or commit of the
old owner's producer (``ProducerFenced``). Readers read committed, so nobody sees what the
zombie wrote. (aiokafka's ``send_offsets_to_transaction`` carries no group generation, so
the group cannot do the fencing: the per-partition transactional id is what does.)

The embedded broker has one group member, so no zombie, and no transactions: it has no
:class:`Transactions`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from faust.types import TP

from belvedere.compat.aiokafka import (
    BackoffKafkaProducer,
    forget_topic,
    in_transaction,
    transaction_failed,
)
from belvedere.streams.surface import StreamsApp

__all__ = [
    "Fenced",
    "PartitionProducer",
    "Transactions",
    "current_producer",
    "producing",
    "transactional_id",
]

logger = logging.getLogger(__name__)

#: Seconds a fenced (or failed) producer is given to stop.
CLOSE_TIMEOUT = 5.0


class Fenced(Exception):
    """A source partition's transaction failed: this worker lost the partition (another
    worker's producer took its transactional id), or the broker refused the transaction.
    Nothing of it is visible to readers; the partition's state in memory must be dropped."""


def transactional_id(app_id: str, tp: TP) -> str:
    """The same on every worker of the app, so the partition's next owner fences its last."""
    return f"{app_id}-{tp.topic}-{tp.partition}"


class PartitionProducer:
    """One source partition's transactional producer. A transaction begins with the first
    write after a commit and ends with :meth:`commit`."""

    def __init__(self, tp: TP, producer: AIOKafkaProducer, group_id: str) -> None:
        self.tp = tp
        self.kafka = producer
        self.group_id = group_id
        #: Set once a transaction failed: nothing more is written with this producer.
        self.fenced = False

    async def begin(self) -> AIOKafkaProducer:
        """The producer, in a transaction."""
        if self.fenced or transaction_failed(self.kafka):
            raise self.failed(Fenced("fenced"))
        if not in_transaction(self.kafka):
            try:
                await self.kafka.begin_transaction()
            except Exception as exc:
                raise self.failed(exc) from exc
        return self.kafka

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
    ) -> asyncio.Future[Any]:
        """Like faust's ``Producer.send``: a future of the record's metadata."""
        kafka = await self.begin()
        try:
            sent = await kafka.send(
                topic, value, key=key, partition=partition, headers=list(headers or ()) or None
            )
        except Exception as exc:
            raise self.failed(exc) from exc
        return asyncio.ensure_future(self.delivered(sent))

    async def delivered(self, sent: Any) -> Any:
        """What ``sent`` resolves to; ``Fenced`` if the broker refused it."""
        try:
            return await sent
        except Exception as exc:
            raise self.failed(exc) from exc

    async def commit(self, offsets: Mapping[TP, int]) -> None:
        """Commit the open transaction (if any) with the source ``offsets``; ``Fenced`` if
        the broker refuses it."""
        try:
            if not in_transaction(self.kafka):
                if not offsets:
                    return
                await self.begin()
            if offsets:
                await self.kafka.send_offsets_to_transaction(
                    {
                        TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(offset, "")
                        for tp, offset in offsets.items()
                    },
                    self.group_id,
                )
            await self.kafka.commit_transaction()
        except Fenced:
            raise
        except Exception as exc:
            raise self.failed(exc) from exc

    def failed(self, exc: BaseException) -> Fenced:
        """``exc`` as ``Fenced``; the producer writes no more."""
        self.fenced = True
        if isinstance(exc, Fenced):
            return exc
        return Fenced(f"{self.tp.topic}[{self.tp.partition}]: the transaction failed: {exc!r}")

    def forget(self, topic: str) -> None:
        """Stop asking for ``topic``'s metadata (a retired changelog, about to be deleted):
        a broker that creates topics on request would create it again."""
        forget_topic(self.kafka.client, topic)

    async def close(self) -> None:
        """Stop the producer; an open transaction is left to the broker, which aborts it
        when the partition's next owner starts its producer (or at its timeout)."""
        try:
            await asyncio.wait_for(self.kafka.stop(), CLOSE_TIMEOUT)
        except Exception as exc:  # fenced, or the broker gone: nothing left to keep
            logger.debug("closing the producer of %s: %r", self.tp, exc)


_current: ContextVar[PartitionProducer | None] = ContextVar(
    "belvedere_partition_producer", default=None
)


def current_producer() -> PartitionProducer | None:
    """The transactional producer of the source partition being folded or checkpointed
    (None outside, and on the embedded broker): what a handler publishes goes into that
    partition's transaction."""
    return _current.get()


@contextlib.contextmanager
def producing(producer: PartitionProducer | None) -> Iterator[None]:
    token = _current.set(producer)
    try:
        yield
    finally:
        _current.reset(token)


class Transactions:
    """A worker's transactional producers, one per live source partition it folds."""

    def __init__(self, app: StreamsApp) -> None:
        self.app = app
        self._producers: dict[TP, PartitionProducer] = {}

    def get(self, tp: TP) -> PartitionProducer | None:
        return self._producers.get(tp)

    async def open(self, tps: Iterable[TP]) -> None:
        """Start a producer for each partition (at once), fencing its last owner: that
        owner's open transaction is aborted before this returns, so a restore that starts
        after it reads everything the last owner committed, and nothing it will write."""
        new = [tp for tp in tps if tp not in self._producers]
        if new:
            opened = await asyncio.gather(*(self._start(tp) for tp in new))
            self._producers.update(zip(new, opened, strict=True))

    async def _start(self, tp: TP) -> PartitionProducer:
        conf = self.app.conf
        producer = BackoffKafkaProducer(
            bootstrap_servers=[f"{u.host}:{u.port or 9092}" for u in conf.broker],
            client_id=f"{conf.broker_client_id}-{tp.topic}-{tp.partition}",
            transactional_id=transactional_id(conf.id, tp),
            max_request_size=conf.producer_max_request_size,
            request_timeout_ms=int(conf.producer_request_timeout * 1000),
            **self.app.broker_security.aiokafka_kwargs(),
        )
        await producer.start()  # InitProducerId: the fencing
        return PartitionProducer(tp, producer, conf.id)

    async def close(self, tps: Iterable[TP]) -> None:
        closing = [p for tp in tps if (p := self._producers.pop(tp, None)) is not None]
        await asyncio.gather(*(p.close() for p in closing))

    async def close_all(self) -> None:
        await self.close(list(self._producers))
