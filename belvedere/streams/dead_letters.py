"""Dead letters: bad input set aside with its reason, never dropped and never in the way.

A message that cannot become an event is copied, with its original key, bytes and headers,
to ``<app id>-<topic>-dead-letters``, with headers saying why, from where and when. The
copy is written (and acknowledged by the broker) before faust may commit past the
original, so a crash in between gives a duplicate dead letter, never a lost one.

A projection handler's dead letter also names its view and generation. A rebuild replays
history into a new generation: a record the replay fails on that already has a dead letter
from a generation of the view that served (or one naming no view) is only counted
(``suppressed``); any other failure is new under the new code and is dead-lettered with
the new generation's number. Those are the rebuild's failures (:meth:`DeadLetters.failures`),
read back from the dead-letter topic itself, so that every process and restart counts
each one once.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from faust.types import TP, Message, TopicT

from belvedere.streams.clients import BrokerClient, NewRecord
from belvedere.streams.context import rebuild_target, side_effects_suppressed
from belvedere.streams.converters import format_timestamp
from belvedere.streams.envelope import BadEvent, EnvelopeCodec
from belvedere.streams.failure_log import FailureLog
from belvedere.streams.readers import reader_for
from belvedere.streams.surface import StreamsApp

__all__ = [
    "DeadLetter",
    "DeadLetters",
    "ReplayReport",
    "dead_letter_topic",
    "replay",
]

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
    #: The view whose handler failed and the generation it folded into (None: not a
    #: projection's handler, or a dead letter older than these headers).
    view: str | None = None
    generation: int | None = None

    def record_headers(self) -> list[tuple[str, bytes]]:
        where = [] if self.view is None else [(PREFIX + "view", self.view.encode())]
        if self.generation is not None:
            where.append((PREFIX + "generation", b"%d" % self.generation))
        return [
            *self.headers,
            (PREFIX + "kind", self.kind.encode()),
            (PREFIX + "reason", self.reason.encode()),
            (PREFIX + "topic", self.topic.encode()),
            (PREFIX + "partition", b"%d" % self.partition),
            (PREFIX + "offset", b"%d" % self.offset),
            (PREFIX + "time", self.time.encode()),
            *where,
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
            ours.get("view"),
            int(ours["generation"]) if "generation" in ours else None,
        )

    def matches(
        self, *, view: str | None = None, generation: int | None = None, kind: str | None = None
    ) -> bool:
        """Whether it is of ``view``'s handlers, ``generation`` and ``kind`` (each when
        given): ``belvedere dlq list`` and ``GET /dead-letters`` choose alike."""
        return (
            (view is None or self.view == view)
            and (generation is None or self.generation == generation)
            and (kind is None or self.kind == kind)
        )

    def describe(self) -> dict[str, Any]:
        """What ``GET /dead-letters`` shows of it (the original bytes stay in the topic)."""
        headers = dict(self.headers)
        event_id, event_type = None, headers.get("eventType")
        try:  # the envelope carries them (a header may name the type)
            body = orjson.loads(self.value) if self.value else None
        except orjson.JSONDecodeError:
            body = None
        if isinstance(body, dict):
            event_id = body.get("eventId")
            event_type = event_type or body.get("eventType")
        return {
            "kind": self.kind,
            "reason": self.reason,
            "time": self.time,
            "view": self.view,
            "generation": self.generation,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "key": self.key.decode(errors="replace") if self.key is not None else None,
            "eventId": _text(event_id),
            "eventType": _text(event_type),
        }


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


#: Who a dead letter says failed on a record: (view, generation, kind).
_Failure = tuple[str | None, int | None, str]


#: How far back ``DeadLetters.rate`` looks, in seconds.
RATE_WINDOW = 60.0
#: How long ``DeadLetters.by_view`` answers from what it read last, in seconds.
BY_VIEW_TTL = 2.0


class DeadLetters:
    """Sends an app's dead letters and counts them by source topic and kind."""

    def __init__(self, app: StreamsApp) -> None:
        self.app = app
        self.counts: Counter[tuple[str, str]] = Counter()
        #: By (view, topic, kind), view "" for none: ``/metrics``' labels.
        self.labelled: Counter[tuple[str, str, str]] = Counter()
        #: When the dead letters of the last ``RATE_WINDOW`` seconds were sent (monotonic).
        self._recent: deque[float] = deque()
        self.log = FailureLog(logger)
        self._by_view: tuple[float, dict[str, Counter[str]]] | None = None
        #: Dead letters not sent because a rebuild replayed events already dead-lettered.
        self.suppressed: Counter[tuple[str, str]] = Counter()
        #: Where to send instead of the app's producer (a replay helper's aiokafka producer).
        self.producer: Any = None
        self._declared: set[str] = set()
        #: Per dead-letter topic: how far it was read, and the failures each source record
        #: (partition, offset) has dead letters for.
        self._read: dict[str, int] = {}
        self._failures: dict[str, dict[tuple[int, int], set[_Failure]]] = {}
        self._reader: Any = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def rate(self) -> int:
        """Dead letters sent in the last ``RATE_WINDOW`` seconds (a degraded ``/ready``)."""
        since = time.monotonic() - RATE_WINDOW
        while self._recent and self._recent[0] < since:
            self._recent.popleft()
        return len(self._recent)

    def count(self, view: str | None, topic: str, kind: str, n: int = 1) -> None:
        self.counts[(topic, kind)] += n
        self.labelled[(view or "", topic, kind)] += n

    async def send(
        self,
        message: Message,
        kind: str,
        reason: str,
        *,
        view: str | None = None,
        generation: int | None = None,
        handler: str | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Dead-letter ``message``; ``view``/``generation``: the projection whose handler
        failed, ``handler`` its name and ``error`` what it raised (logged with its traceback
        the first time). While a rebuild replays, only what the old code did not
        dead-letter is sent."""
        if side_effects_suppressed():
            target = rebuild_target()
            if target is None:
                self._suppress(message, kind, reason)
                return
            view, generation = view or target[0], generation or target[1]
            prior = await self._prior(message, view, generation, target[2])
            if prior == "old":
                self._suppress(message, kind, reason)
                return
            if prior == "this":  # a replay again after a crash: sent and counted already
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
            view,
            generation,
        )
        name = dead_letter_topic(self.app.conf.id, message.topic)
        await self.declare(message.topic)
        if self.producer is not None:
            await self.producer.send_and_wait(
                name, letter.value, key=letter.key, headers=letter.record_headers()
            )
        else:
            await self.app.producer.send_and_wait(
                name, letter.key, letter.value, None, None, letter.record_headers()
            )
        self.count(view, message.topic, kind)
        if not side_effects_suppressed():  # a rebuild's failures do not touch what is served
            self._recent.append(time.monotonic())
        where = f"{message.topic}[{message.partition}]@{message.offset}"
        who = f"view {view}: handler {handler}" if handler else (f"view {view}" if view else "")
        replaying = f" (new in {view} g{generation})" if side_effects_suppressed() else ""
        self.log.failed(
            (who or message.topic, kind),
            f"dead letter{replaying}: {who + ' failed on ' if who else ''}{where} ({kind}): "
            f"{reason}; set aside in {name}. Later failures like it are counted in /metrics "
            f"and listed by GET /dead-letters{f'?view={view}' if view else ''}",
            f"dead letters ({kind}) from {who or message.topic}, the last {where}: {reason}",
            error,
        )

    def _suppress(self, message: Message, kind: str, reason: str) -> None:
        self.suppressed[(message.topic, kind)] += 1
        logger.info(
            "replay: not dead-lettering %s[%d]@%d again: %s",
            message.topic, message.partition, message.offset, reason,
        )  # fmt: skip

    async def declare(self, topic: str) -> None:
        """Create ``topic``'s dead-letter topic if it does not exist yet."""
        name = dead_letter_topic(self.app.conf.id, topic)
        if name not in self._declared:
            if self.producer is None:  # a helper's was declared by its worker
                await self.app.topic(name, partitions=1, internal=True).maybe_declare()
            self._declared.add(name)

    def sources(self) -> list[str]:
        """Every topic of the app that may have dead letters: its event topics, the
        re-keyed copies its projections fold, and plain ``app.topic`` ones."""
        app = self.app
        names = set(app.event_topics)
        names.update(p.fold_topic.get_topic_name() for p in app.engine.projections.values())
        channels = [*app.topics, *(agent.channel for agent in app.agents.values())]
        names.update(
            name
            for channel in channels
            if not getattr(channel, "internal", False)  # faust's own (the leader topic)
            for name in getattr(channel, "topics", ())
        )
        return sorted(names)

    async def by_view(self) -> dict[str, Counter[str]]:
        """Records each view's handlers failed on, by kind, read from the dead-letter
        topics (so every worker's and every earlier run's count): of the generation each
        view serves, or naming none. Read again at most every ``BY_VIEW_TTL`` seconds (the
        status page asks every second)."""
        now = time.monotonic()
        if self._by_view is not None and now - self._by_view[0] < BY_VIEW_TTL:
            return self._by_view[1]
        counts: dict[str, Counter[str]] = {name: Counter() for name in self.app.views}
        for topic in self.sources():
            await self.declare(topic)
            name = dead_letter_topic(self.app.conf.id, topic)
            await self._catch_up(name)
            for found in self._failures.get(name, {}).values():
                for view, kind in {
                    (v, k)
                    for v, g, k in found
                    if v in counts and (g is None or g == self.app.views[v].generation)
                }:
                    counts[view][kind] += 1
        self._by_view = (now, counts)
        return counts

    async def _prior(self, message: Message, view: str, generation: int, active: int) -> str | None:
        """Whether a dead letter for this record and view exists: "old" (from a generation
        up to the ``active`` one, or naming no view), "this" (this generation's) or None
        (an abandoned generation's letters are not the old code's)."""
        name = dead_letter_topic(self.app.conf.id, message.topic)
        where = (message.partition, message.offset)
        for catch_up in (False, True):
            if catch_up or name not in self._read:
                await self._catch_up(name)
            found = self._failures.get(name, {}).get(where, ())
            if any(v == view and g == generation for v, g, _ in found):
                return "this"
            if any(v in (None, view) and (g is None or g <= active) for v, g, _ in found):
                return "old"
        return None

    async def failures(self, topic: str, view: str, generation: int) -> dict[str, int]:
        """Records of ``topic`` that the rebuild of ``view`` into ``generation`` failed
        on, counted by kind (each record once, whichever process sent it and how often)."""
        name = dead_letter_topic(self.app.conf.id, topic)
        await self.declare(topic)
        await self._catch_up(name)
        counts: Counter[str] = Counter()
        for found in self._failures.get(name, {}).values():
            kinds = sorted(k for v, g, k in found if v == view and g == generation)
            if kinds:
                counts[kinds[0]] += 1
        return dict(counts)

    async def _catch_up(self, name: str) -> None:
        """Read what was appended to dead-letter topic ``name`` since the last time."""
        if self._reader is None:
            self._reader = reader_for(self.app)
        tp = TP(name, 0)
        start, end = (await self._reader.offsets([tp]))[tp]
        low = max(self._read.get(name, 0), start)
        found = self._failures.setdefault(name, {})
        if end > low:
            async for _, batch in self._reader.read({tp: (low, end)}):
                for record in batch:
                    letter = DeadLetter.from_record(record.key, record.value, record.headers)
                    failure = (letter.view, letter.generation, letter.kind)
                    found.setdefault((letter.partition, letter.offset), set()).add(failure)
        self._read[name] = max(end, self._read.get(name, 0))

    async def close(self) -> None:
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await reader.close()


@dataclass
class ReplayReport:
    replayed: int = 0
    still_bad: list[str] = field(default_factory=list)


def replay(
    app: StreamsApp, topic: TopicT, client: BrokerClient, *, from_start: bool = False
) -> ReplayReport:
    """Publish ``topic``'s dead letters to it again, decoded (and so upcast) by today's code
    (a plain ``app.topic``'s: their original bytes and headers).

    Each is re-encoded at its type's current version, keeping its eventId, correlation and
    causation, and its producer's form of ``eventVersion`` (a string stays a string), in the
    partition the topic's partitioner gives its key. Progress is kept as the offsets of the group ``<app id>-dlq-replay``, so a
    second replay only takes what is new; ones that still fail are reported and passed.
    """
    source = topic.get_topic_name()
    name = dead_letter_topic(app.conf.id, source)
    group = f"{app.conf.id}-dlq-replay"
    start = None if from_start else client.committed(group, name)
    report = ReplayReport()
    done: dict[tuple[str, int], int] = {}
    out: dict[int | None, list[NewRecord]] = {}
    for record in client.read(name, start=start):
        done[(name, record.partition)] = record.offset + 1
        letter = DeadLetter.from_record(record.key, record.value, record.headers)
        if not isinstance(getattr(topic, "codec", None), EnvelopeCodec):  # plain: its bytes again
            out.setdefault(None, []).append(NewRecord(letter.key, letter.value, 0, letter.headers))
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
            NewRecord(
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
