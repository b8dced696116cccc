"""The event envelope on the wire, and the one place events are decoded.

Exactly this JSON object, camelCase::

    {"eventId", "eventType", "eventVersion", "timestamp", "correlationId", "causationId",
     "producer", "data"}

Any Kafka client that writes it produces a valid event. Foreign producers may leave out
the bookkeeping fields; what Belvedere fills in is documented in docs/events.md:
``eventId`` becomes ``<topic>-<partition>-<offset>`` (stable across redelivery, so dedup
works), ``timestamp`` the Kafka record's timestamp, ``correlationId`` the eventId,
``causationId`` and ``producer`` null. ``eventType``, ``eventVersion`` and ``data`` are
required.

``eventVersion`` is an integer, or a version string as many producers write it (``"1.0"``,
``"2"``, ``"2.1"``): its major number selects the class's version and the upcasters, and a
minor change is compatible (it may add fields, which the decoder ignores). The string is
kept in the event's ``meta``, so that an event Belvedere writes back (a dead-letter replay)
keeps the producer's form.

A message is decoded once, with orjson; ``eventType``/``eventVersion`` headers, when
present, let an unknown type be refused without decoding the body.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import orjson

from belvedere.compat.orjson import dumps
from belvedere.streams.converters import FieldError, format_timestamp, parse_timestamp
from belvedere.streams.records import Event, codec
from belvedere.streams.upcasters import UpcastError, upcast

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "BadEvent",
    "EnvelopeCodec",
    "EventMeta",
    "new_meta",
    "parse_version",
]

DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
HEADER_TYPE = "eventType"
HEADER_VERSION = "eventVersion"
_OPTIONAL_STR = (str, type(None))
_fromisoformat = dt.datetime.fromisoformat
_tuple_new = tuple.__new__


class BadEvent(ValueError):
    """A message that cannot become an event; ``kind`` is a short stable label for metrics."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class EventMeta(NamedTuple):
    """The envelope fields around an event's data (a tuple: cheap to build per event)."""

    event_id: str
    event_type: str
    #: The version as written (a version string's major number), before any upcasting.
    event_version: int
    timestamp: dt.datetime
    correlation_id: str
    causation_id: str | None
    producer: str | None
    #: ``eventVersion`` as written when it was a string (``"1.0"``); None for an integer.
    version_string: str | None = None

    @property
    def written_version(self) -> int | str:
        """``eventVersion`` in the form its producer wrote it."""
        return self.event_version if self.version_string is None else self.version_string

    def at_version(self, version: int) -> EventMeta:
        """This envelope at ``version`` (after upcasting), in its producer's form: an
        integer stays one; a string keeps its text at the same major version, and becomes
        ``"<version>.0"`` (or ``"<version>"`` if it had no minor part) at another."""
        text = self.version_string
        if text is not None and version != self.event_version:
            text = f"{version}.0" if "." in text else str(version)
        return self._replace(event_version=version, version_string=text)


def new_meta(
    event: Event,
    *,
    producer: str | None,
    cause: EventMeta | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    event_id: str | None = None,
) -> EventMeta:
    """The envelope of a new event: it continues ``cause``'s correlation, caused by it."""
    event_id = event_id or str(uuid.uuid4())
    return EventMeta(
        event_id=event_id,
        event_type=event.event_type,
        event_version=event.event_version,
        timestamp=dt.datetime.now(dt.UTC),
        correlation_id=correlation_id or (cause.correlation_id if cause else event_id),
        causation_id=causation_id or (cause.event_id if cause else None),
        producer=producer,
    )


_VERSION_STRING = re.compile(r"(\d{1,9})(?:\.\d{1,9}){0,2}")


def parse_version(value: Any) -> tuple[int, str | None]:
    """``eventVersion``'s major number, and its text when it was a string."""
    if type(value) is int:
        return value, None
    if type(value) is str:
        found = _VERSION_STRING.fullmatch(value)
        if found is not None:
            return int(found.group(1)), value
    raise BadEvent(
        "bad-envelope",
        f'eventVersion must be an integer or a version string (2, "2", "2.1"), not {value!r}',
    )


def _header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> bytes | None:
    if headers:
        for key, value in headers:
            if key == name:
                return value
    return None


class EnvelopeCodec:
    """Encodes events of the given types, and decodes (and upcasts) messages into them."""

    def __init__(
        self, event_types: Iterable[type[Event]], *, max_bytes: int = DEFAULT_MAX_EVENT_BYTES
    ):
        self.types: dict[str, type[Event]] = {}
        for cls in event_types:
            if not (isinstance(cls, type) and issubclass(cls, Event)):
                raise TypeError(f"{cls!r} is not a belvedere.Event class")
            other = self.types.get(cls.event_type)
            if other is not None and other is not cls:
                raise TypeError(f"two classes named {cls.event_type!r}: {other!r} and {cls!r}")
            self.types[cls.event_type] = cls
        self.max_bytes = max_bytes
        self._type_names = {name.encode(): name for name in self.types}
        self._decoders: dict[str, tuple[type[Event], Any]] = {}

    def headers(self, event: Event, meta: EventMeta | None = None) -> list[tuple[str, bytes]]:
        """The headers of ``event``'s record: its type, and its version as ``meta`` writes
        it (default: the class's)."""
        version = event.event_version if meta is None else meta.written_version
        return [
            (HEADER_TYPE, event.event_type.encode()),
            (HEADER_VERSION, str(version).encode()),
        ]

    def encode(self, event: Event, meta: EventMeta) -> bytes:
        return dumps(
            {
                "eventId": meta.event_id,
                "eventType": meta.event_type,
                "eventVersion": meta.written_version,
                "timestamp": format_timestamp(meta.timestamp),
                "correlationId": meta.correlation_id,
                "causationId": meta.causation_id,
                "producer": meta.producer,
                "data": codec(type(event)).encode(event),
            }
        )

    def decode(
        self,
        value: bytes | None,
        *,
        headers: Sequence[tuple[str, bytes]] | None = None,
        timestamp: float | None = None,
        source: str = "",
    ) -> Event:
        """The typed event in ``value``, its ``meta`` set; BadEvent says why not.

        ``timestamp`` (seconds) and ``source`` (``topic-partition-offset``) stand in for
        a foreign event's missing ``timestamp`` and ``eventId``.
        """
        if value is None:
            raise BadEvent("not-json", "the message has no value (a tombstone)")
        if len(value) > self.max_bytes:
            raise BadEvent(
                "oversized", f"{len(value)} bytes is over the {self.max_bytes}-byte limit"
            )
        if headers:
            named = _header(headers, HEADER_TYPE)
            if named is not None and named not in self._type_names:
                raise BadEvent(
                    "unknown-type",
                    f"unknown eventType {named.decode(errors='replace')!r} (from its header)",
                )
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise BadEvent("not-json", f"not JSON: {exc}") from None
        if type(doc) is not dict:
            raise BadEvent(
                "bad-envelope", f"the envelope must be a JSON object, not {type(doc).__name__}"
            )
        event_type = doc.get("eventType")
        found = self._decoders.get(event_type) if type(event_type) is str else None
        if found is None:
            found = self._decoder(event_type)
        cls, decode_data = found
        version = doc.get("eventVersion")
        if type(version) is int:
            text = None
        else:
            version, text = parse_version(version)
        data = doc.get("data")
        if type(data) is not dict:
            raise BadEvent("bad-envelope", "the envelope has no data object")
        if version != cls.event_version:
            try:
                data = upcast(event_type, version, cls.event_version, data)
            except UpcastError as exc:
                raise BadEvent(exc.kind, str(exc)) from None
        try:
            event = decode_data(data)
        except FieldError as exc:
            raise BadEvent(
                "invalid-data", f"{event_type} v{cls.event_version}: data.{exc}"
            ) from None
        event.__dict__["meta"] = self._meta(doc, event_type, version, timestamp, source, text)
        return event

    def _decoder(self, event_type: Any) -> tuple[type[Event], Any]:
        if type(event_type) is not str:
            raise BadEvent("bad-envelope", "the envelope has no eventType string")
        cls = self.types.get(event_type)
        if cls is None:
            raise BadEvent("unknown-type", f"unknown eventType {event_type!r}")
        found = self._decoders[event_type] = (cls, codec(cls).decode)
        return found

    @staticmethod
    def _meta(
        doc: dict,
        event_type: str,
        version: int,
        timestamp: float | None,
        source: str,
        text: str | None,
    ) -> EventMeta:
        event_id = doc.get("eventId")
        if event_id is None:
            event_id = source or str(uuid.uuid4())
        elif type(event_id) is not str:
            raise BadEvent("bad-envelope", f"eventId must be a string, not {event_id!r}")
        when = doc.get("timestamp")
        if when is None:
            at = dt.datetime.fromtimestamp(timestamp or 0.0, dt.UTC)
        else:
            try:
                at = _fromisoformat(when) if type(when) is str else None
            except ValueError:
                at = None
            if at is None or at.tzinfo is not dt.UTC:
                try:
                    at = parse_timestamp(when)
                except FieldError as exc:
                    raise BadEvent("bad-envelope", f"timestamp: {exc}") from None
        correlation = doc.get("correlationId") or event_id
        causation = doc.get("causationId")
        producer = doc.get("producer")
        for name, field in (
            ("correlationId", correlation),
            ("causationId", causation),
            ("producer", producer),
        ):
            if field is not None and type(field) is not str:
                raise BadEvent("bad-envelope", f"{name} must be a string, not {field!r}")
        return _tuple_new(
            EventMeta, (event_id, event_type, version, at, correlation, causation, producer, text)
        )
