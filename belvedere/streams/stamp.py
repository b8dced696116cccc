"""Events made in code with the envelope a topic would give them.

An event built in a test has no ``meta`` (only decoding sets it), so a handler that reads
``event.meta.timestamp`` or its correlation cannot be tried on it. :func:`event` gives it
one, with the fields chosen or the defaults a publish would write.
"""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any, TypeVar

from belvedere.streams.envelope import EventMeta, new_meta
from belvedere.streams.records import Event

__all__ = ["event", "given_key", "stamped"]

E = TypeVar("E", bound=Event)

#: Where :func:`event` keeps a ``key=`` for whoever sends the event (not an event field,
#: so it cannot collide with one).
_KEY = "belvedere.key"


def _at(timestamp: dt.datetime | float | None) -> dt.datetime | None:
    if timestamp is None or isinstance(timestamp, dt.datetime):
        if isinstance(timestamp, dt.datetime) and timestamp.tzinfo is None:
            return timestamp.replace(tzinfo=dt.UTC)  # a naive time is taken as UTC
        return timestamp
    if isinstance(timestamp, int | float) and not isinstance(timestamp, bool):
        return dt.datetime.fromtimestamp(timestamp, dt.UTC)
    raise TypeError(f"timestamp must be a datetime or seconds since the epoch, not {timestamp!r}")


def event(
    evt: E,
    *,
    timestamp: dt.datetime | float | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    event_id: str | None = None,
    key: str | None = None,
    producer: str | None = None,
) -> E:
    """A copy of ``evt`` with its envelope set, as a handler receives it from a topic.

    Left out: ``event_id`` a new UUID, ``timestamp`` now, ``correlation_id`` the event id
    (a flow's first event), ``causation_id`` none. A naive ``timestamp`` is UTC; a number
    is seconds since the epoch. ``key`` is the record key a test driver sends it with
    (default: the event's key field)."""
    if not isinstance(evt, Event):
        raise TypeError(f"{evt!r} is not a belvedere.Event")
    meta = new_meta(
        evt,
        producer=producer,
        correlation_id=correlation_id,
        causation_id=causation_id,
        event_id=event_id,
    )
    at = _at(timestamp)
    if at is not None:
        meta = meta._replace(timestamp=at)
    made = copy.copy(evt)
    vars(made)["meta"] = meta
    if key is not None:
        vars(made)[_KEY] = key
    return made


def stamped(evt: E, **defaults: Any) -> E:
    """``evt`` as it is when it has an envelope already, else :func:`event` of it with
    ``defaults`` (the given-when-then fixtures': their clock, their flow)."""
    if isinstance(getattr(evt, "meta", None), EventMeta):
        return evt
    return event(evt, **defaults)


def given_key(evt: Event) -> str | None:
    """The ``key=`` :func:`event` was given, if any."""
    return vars(evt).get(_KEY)
