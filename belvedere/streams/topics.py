"""Event topics: one topic, several event types, typed events out, envelopes in.

``app.event_topic("orders", OrderCreated, OrderPaid)`` is a faust Topic whose agents
receive ``OrderCreated``/``OrderPaid`` instances. Bad input goes to the dead letters and
the partition moves on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from faust.exceptions import ValueDecodeError
from faust.types import TP, Message
from faust.types.tuples import RecordMetadata

from belvedere.compat import faust as compat
from belvedere.streams.context import current_cause, side_effects_suppressed
from belvedere.streams.envelope import (
    DEFAULT_MAX_EVENT_BYTES,
    BadEvent,
    EnvelopeCodec,
    EventMeta,
    new_meta,
)
from belvedere.streams.outbox import Outbox, current_outbox
from belvedere.streams.partitioner import PARTITIONERS, crc32_partition, partition_for_key
from belvedere.streams.plain_codec import PlainCodec, decode_failure
from belvedere.streams.records import Event
from belvedere.streams.surface import StreamsApp
from belvedere.streams.transactions import current_producer

__all__ = ["DeadLetteringTopic", "EventTopic", "Published"]


@dataclass(frozen=True, slots=True)
class Published:
    """Where a published event went: its envelope and its partition offset."""

    meta: EventMeta
    topic: str
    partition: int
    offset: int
    #: Not sent: a rebuild replayed the event that caused it (partition and offset are -1).
    suppressed: bool = False


class DeadLetteringTopic(compat.Topic):
    """``app.topic(...)``: a faust Topic whose undecodable messages go to the dead letters.

    faust logs such a message, acks it and throws the error into the agent's stream,
    which stops the agent: one bad message lost, and the agent's partitions with it.
    """

    @cached_property
    def codec(self) -> Any:
        """How the engine decodes its records (an agent on the engine reads it)."""
        return PlainCodec(self)

    def key_of(self, raw: bytes | None) -> Any:
        """A record's key, as an agent's ``stream.items()`` gives it."""
        return self.codec.key(raw)

    async def on_key_decode_error(self, exc: Exception, message: Message) -> None:
        await self.app.dead_letters.send(message, "bad-key", decode_failure(exc))

    async def send(self, **kwargs: Any) -> Any:
        """faust's send; inside a fold that buffers its sends, the record goes to the fold's
        outbox, written with its checkpoint (the future's offset is then -1)."""
        outbox = current_outbox()
        if outbox is None:
            return await super().send(**kwargs)
        if side_effects_suppressed():  # a rebuild replays: sent when first handled
            return self.buffered(None, None, None, kwargs.get("partition"), [])
        schema = kwargs.get("schema")
        headers = self.prepare_headers(kwargs.get("headers"))
        key, headers = self.prepare_key(kwargs.get("key"), kwargs.get("key_serializer"), schema, headers)  # fmt: skip
        value, headers = self.prepare_value(kwargs.get("value"), kwargs.get("value_serializer"), schema, headers)  # fmt: skip
        items = headers.items() if isinstance(headers, Mapping) else headers or ()
        encoded = [(k, v.encode() if isinstance(v, str) else bytes(v)) for k, v in items]
        return self.buffered(outbox, key, value, kwargs.get("partition"), encoded)

    def buffered(
        self,
        outbox: Outbox | None,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        headers: list[tuple[str, bytes]],
    ) -> asyncio.Future[RecordMetadata]:
        """Add a record to ``outbox`` (None: nowhere); a resolved future of where it goes."""
        name = self.get_topic_name()
        if partition is None:
            partition = partition_for_key(key, self.partitions or self.app.conf.topic_partitions)
        if outbox is not None:
            outbox.add(name, partition, key, value, headers)
        fut: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        fut.set_result(RecordMetadata(name, partition, TP(name, partition), -1, None, 0))
        return fut

    async def on_value_decode_error(self, exc: Exception, message: Message) -> None:
        await self.app.dead_letters.send(message, "bad-value", decode_failure(exc))


class EventTopic(DeadLetteringTopic):
    """A faust Topic carrying envelopes of the given event types.

    ``partitioner`` says how its producers hash keys to partitions: ``murmur2`` (Kafka's
    default), ``crc32`` (librdkafka's default), or ``any`` (no telling: projections re-key
    its events through an internal topic). Belvedere's own writes to it hash keys the same
    way (murmur2 for ``any``), so that one key's events stay in one partition, in order.
    """

    def __init__(
        self,
        app: StreamsApp,
        *,
        event_types: Iterable[type[Event]],
        key: str | None = None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        partitioner: str = "murmur2",
        **kwargs: Any,
    ) -> None:
        self.event_types = tuple(event_types)
        if not self.event_types:
            raise TypeError("an event topic needs at least one event type")
        if partitioner not in PARTITIONERS:
            raise ValueError(
                f"partitioner must be one of {', '.join(PARTITIONERS)}, not {partitioner!r}"
            )
        self.partitioner = partitioner
        self.key_field = key
        self.max_event_bytes = max_event_bytes
        self.codec = EnvelopeCodec(self.event_types, max_bytes=max_event_bytes)
        kwargs.update(key_type=str, key_serializer="raw", value_serializer="raw", value_type=None)
        super().__init__(app, **kwargs)

    def clone_kwargs(self) -> Mapping[str, Any]:
        return {
            "event_types": self.event_types,
            "key": self.key_field,
            "max_event_bytes": self.max_event_bytes,
            "partitioner": self.partitioner,
        }

    # -- reading -----------------------------------------------------------------------

    def key_of(self, raw: bytes | None) -> Any:
        if raw is None:
            return None
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise BadEvent("bad-key", "the key is not UTF-8") from None

    def own_decoder(self) -> Callable[..., Awaitable[Any]]:
        return self._decode_event

    async def _decode_event(self, message: Message, *, propagate: bool = False) -> Any:
        try:
            key = None if message.key is None else message.key.decode()
            event = self.codec.decode(
                message.value,
                headers=message.headers,
                timestamp=message.timestamp,
                source=f"{message.topic}-{message.partition}-{message.offset}",
            )
        except BadEvent as exc:
            await self.app.dead_letters.send(message, exc.kind, exc.reason)
            if propagate:
                raise ValueDecodeError(exc.reason) from None
            return None
        except UnicodeDecodeError:
            await self.app.dead_letters.send(message, "bad-key", "the key is not UTF-8")
            if propagate:
                raise ValueDecodeError("the key is not UTF-8") from None
            return None
        return self.app.create_event(key, event, message.headers, message)

    async def on_value_decode_error(self, exc: Exception, message: Message) -> None:
        """Already dead-lettered by the decoder; faust acks the message after this."""

    # -- writing -----------------------------------------------------------------------

    def key_for(self, event: Event, key: str | bytes | None = None) -> bytes:
        if key is None:
            name = type(event).event_key or self.key_field
            if name is None:
                raise ValueError(
                    f"no key for {type(event).__name__} on {self.get_topic_name()!r}: pass key=, "
                    "or declare key= on the event class or the topic"
                )
            key = getattr(event, name)
        return key if isinstance(key, bytes) else str(key).encode()

    def partition_for(self, key: bytes | None) -> int | None:
        """The partition Belvedere writes ``key`` to, where the producer's default
        (murmur2) would not be this topic's partitioner (None: the producer's choice)."""
        if self.partitioner != "crc32" or key is None:
            return None
        return crc32_partition(key, self.partitions or self.app.conf.topic_partitions)

    async def publish(
        self,
        event: Event,
        *,
        key: str | bytes | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        event_id: str | None = None,
        partition: int | None = None,
    ) -> Published:
        """Write ``event`` in its envelope; returns once the broker has it.

        Handled inside an agent (or ``caused_by``), it continues the handled event's
        correlation, and is caused by it. While a rebuild replays history into a new
        generation of a view, a projection's publishes are not sent (``suppressed``).
        ``event_id`` names it (a command's id, for deduplication); ``partition`` overrides
        the key's. Published while a live source partition is folded or checkpointed (on
        Kafka), it is part of that partition's transaction: visible once the checkpoint
        commits, never if the worker was fenced first. Published from a fold that buffers
        its sends (a transform's, an engine agent's), it goes to the fold's outbox and is
        written with the checkpoint (:mod:`belvedere.streams.outbox`): its offset is then -1.
        """
        known = self.codec.types.get(type(event).event_type)
        if known is not type(event):
            raise TypeError(
                f"{type(event).__name__} is not one of {self.get_topic_name()!r}'s event types"
            )
        meta = new_meta(
            event,
            producer=self.app.conf.id,
            cause=current_cause(),
            correlation_id=correlation_id,
            causation_id=causation_id,
            event_id=event_id,
        )
        if side_effects_suppressed():
            return Published(meta, self.get_topic_name(), -1, -1, suppressed=True)
        wire_key = self.key_for(event, key)
        value, headers = self.codec.encode(event, meta), self.codec.headers(event)
        if partition is None:
            partition = self.partition_for(wire_key)
        outbox = current_outbox()
        transaction = current_producer()
        if outbox is not None:  # a fold's: written with its checkpoint
            if len(value) > self.max_event_bytes:  # refused here, not by the checkpoint
                raise ValueError(
                    f"{type(event).__name__} of {len(value)} bytes is over "
                    f"{self.get_topic_name()!r}'s limit ({self.max_event_bytes} bytes)"
                )
            fut = self.buffered(outbox, wire_key, value, partition, headers)
        elif transaction is not None:  # a live source partition's, on Kafka: fenced with it
            fut = await transaction.send(
                self.get_topic_name(), wire_key, value, partition, None, headers
            )
        else:
            fut = await self.send(key=wire_key, value=value, headers=headers, partition=partition)
        sent = await fut
        return Published(meta, sent.topic, sent.partition, sent.offset)
