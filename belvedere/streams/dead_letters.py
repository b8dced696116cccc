"""Dead letters: bad input set aside with its reason, never dropped and never in the way.

A message that cannot become an event is copied, with its original key, bytes and headers,
to ``<app id>-<topic>-dead-letters``, with headers saying why, from where and when. The
copy is written (and acknowledged by the broker) before faust may commit past the
original, so a crash in between gives a duplicate dead letter, never a lost one.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from faust.types import Message

from belvedere.streams.context import side_effects_suppressed
from belvedere.streams.types import format_timestamp

__all__ = ["DeadLetter", "DeadLetters", "ReplayReport", "dead_letter_topic", "replay"]

logger = logging.getLogger(__name__)

PREFIX = "belvedere-dlq-"
Headers = Sequence[tuple[str, bytes]]


def dead_letter_topic(app_id: str, topic: str) -> str:
    return f"{app_id}-{topic}-dead-letters"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter: the original record, and why and where it failed."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    kind: str
    reason: str
    topic: str
    partition: int
    offset: int
    time: str

    def record_headers(self) -> list[tuple[str, bytes]]:
        return [
            *self.headers,
            (PREFIX + "kind", self.kind.encode()),
            (PREFIX + "reason", self.reason.encode()),
            (PREFIX + "topic", self.topic.encode()),
            (PREFIX + "partition", b"%d" % self.partition),
            (PREFIX + "offset", b"%d" % self.offset),
            (PREFIX + "time", self.time.encode()),
        ]

    @classmethod
    def from_record(cls, key: bytes | None, value: bytes | None, headers: Headers) -> DeadLetter:
        ours = {k[len(PREFIX) :]: v.decode() for k, v in headers if k.startswith(PREFIX)}
        original = tuple((k, bytes(v)) for k, v in headers if not k.startswith(PREFIX))
        return cls(
            key,
            value,
            original,
            ours.get("kind", "?"),
            ours.get("reason", "?"),
            ours.get("topic", "?"),
            int(ours.get("partition", -1)),
            int(ours.get("offset", -1)),
            ours.get("time", ""),
        )


class DeadLetters:
    """Sends an app's dead letters and counts them by source topic and kind."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.counts: Counter[tuple[str, str]] = Counter()
        #: Dead letters not sent because a rebuild replayed events already dead-lettered.
        self.suppressed: Counter[tuple[str, str]] = Counter()
        self._declared: set[str] = set()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    async def send(self, message: Message, kind: str, reason: str) -> None:
        if side_effects_suppressed():
            self.suppressed[(message.topic, kind)] += 1
            logger.info(
                "replay: not dead-lettering %s[%d]@%d again: %s",
                message.topic, message.partition, message.offset, reason,
            )  # fmt: skip
            return
        letter = DeadLetter(
            message.key,
            message.value,
            tuple((k, bytes(v)) for k, v in message.headers or ()),
            kind,
            reason,
            message.topic,
            message.partition,
            message.offset,
            format_timestamp(dt.datetime.now(dt.UTC)),
        )
        name = dead_letter_topic(self.app.conf.id, message.topic)
        if name not in self._declared:
            await self.app.topic(name, partitions=1, internal=True).maybe_declare()
            self._declared.add(name)
        await self.app.producer.send_and_wait(
            name, letter.key, letter.value, None, None, letter.record_headers()
        )
        self.counts[(message.topic, kind)] += 1
        logger.warning(
            "dead letter: %s[%d]@%d -> %s: %s",
            message.topic,
            message.partition,
            message.offset,
            name,
            reason,
        )


@dataclass
class ReplayReport:
    replayed: int = 0
    still_bad: list[str] = field(default_factory=list)


def replay(app: Any, topic: Any, client: Any, *, from_start: bool = False) -> ReplayReport:
    """Publish ``topic``'s dead letters to it again, decoded (and so upcast) by today's code
    (a plain ``app.topic``'s: their original bytes and headers).

    Each is re-encoded at its type's current version, keeping its eventId, correlation and
    causation, and its producer's form of ``eventVersion`` (a string stays a string), in the
    partition the topic's partitioner gives its key. Progress is kept as the offsets of the group ``<app id>-dlq-replay``, so a
    second replay only takes what is new; ones that still fail are reported and passed.
    """
    from belvedere.streams.clients import Record
    from belvedere.streams.envelope import BadEvent

    source = topic.get_topic_name()
    name = dead_letter_topic(app.conf.id, source)
    group = f"{app.conf.id}-dlq-replay"
    start = None if from_start else client.committed(group, name)
    report = ReplayReport()
    done: dict[tuple[str, int], int] = {}
    out: dict[int | None, list[Record]] = {}
    for record in client.read(name, start=start):
        done[(name, record.partition)] = record.offset + 1
        letter = DeadLetter.from_record(record.key, record.value, record.headers)
        if not hasattr(topic, "codec"):  # a plain topic: its bytes again, for today's code
            out.append(Record(letter.key, letter.value, 0, letter.headers))
            continue
        try:
            event = topic.codec.decode(
                letter.value,
                headers=letter.headers,
                timestamp=record.timestamp_ms / 1000,
                source=f"{letter.topic}-{letter.partition}-{letter.offset}",
            )
        except BadEvent as exc:
            report.still_bad.append(
                f"{record.partition}@{record.offset} ({letter.kind}): {exc.reason}"
            )
            continue
        current = event.meta.at_version(event.event_version)
        out.setdefault(topic.partition_for(letter.key), []).append(
            Record(
                letter.key,
                topic.codec.encode(event, current),
                0,
                tuple(topic.codec.headers(event, current)),
            )
        )
    for partition, records in out.items():
        client.produce(source, records, partition)
        report.replayed += len(records)
    if done:
        client.commit(group, done)
    return report
