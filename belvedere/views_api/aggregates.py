"""``GET /aggregates/{type}/{id}`` and ``.../events``: an aggregate now, then, and its history.

- ``GET /aggregates/{type}/{id}``: its state and version, from its snapshot.
- ``?at=N`` (a version) or ``?at=2024-01-15T10:30:00Z`` (a time): the aggregate as it was
  then, folded again from its events (the first N, or those stamped up to that time).
- ``GET /aggregates/{type}/{id}/events``: its events, oldest first, each with its version
  and offset, as the envelopes were written; ``limit`` at a time (default 100, at most
  1,000), the next page from the answer's ``next`` cursor (null on the last page), as
  scans page, so no history is read whole into one answer.

Answered by the worker holding the aggregate's partition (forwarded there otherwise).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from faust.types import TP

from belvedere.agents.commands import CommandProjection
from belvedere.streams.converters import FieldError, format_timestamp, parse_timestamp
from belvedere.views_api.errors import error, json
from belvedere.views_api.opaque import unpack
from belvedere.views_api.params import (
    DATE_TIME,
    PAGE_CURSOR,
    TOKEN,
    BadParam,
    Integer,
    Name,
    Param,
    encode_cursor,
)
from belvedere.views_api.reads import stored_row
from belvedere.views_api.surface import ServedApp

__all__ = ["AT", "CURSOR", "ID", "LIMIT", "TYPE", "aggregate_events", "get_aggregate"]

#: Read a history as one offset range when it is at least this dense in its partition.
DENSE = 1 / 20


@dataclass(frozen=True, slots=True, eq=False)
class _Moment(Param):
    """A version number (digits) or an ISO-8601 time."""

    def parse(self, request: web.Request) -> int | dt.datetime | None:
        text = request.query.get(self.name)
        if not text:
            return None
        if text.isascii() and text.isdigit():
            return int(text)
        try:
            return parse_timestamp(text)
        except FieldError:
            raise BadParam(
                f"{self.name} must be a version or an ISO-8601 time, not {text[:40]!r}"
            ) from None


@dataclass(frozen=True, slots=True, eq=False)
class _VersionCursor(Param):
    """Where a page of a history resumes: the previous page's ``next``."""

    def parse(self, request: web.Request, version: int) -> int:
        """The version the page starts after, 0 without a cursor."""
        text = request.query.get(self.name)
        if not text:
            return 0
        try:
            after = unpack(text)
            if type(after) is not int or not 0 < after <= version:
                raise ValueError
            return after
        except (ValueError, TypeError):
            raise BadParam(f"{self.name} {text[:40]!r} is not a cursor of this history") from None


TYPE = Name("type", "an aggregate type", "path", known=lambda app: sorted(app.aggregates))
ID = Param("id", "the aggregate's id", "path", {"type": "string", "minLength": 1})
AT = _Moment(
    "at",
    "a version number (digits), or an ISO-8601 time",
    schema={"anyOf": [{"type": "string", "pattern": "^[0-9]{0,18}$"}, DATE_TIME]},
)
#: Events per page of a history.
LIMIT = Integer("limit", "events per page", default=100, low=1, high=1_000)
CURSOR = _VersionCursor("cursor", PAGE_CURSOR, schema=TOKEN)


async def _row(
    app: ServedApp, request: web.Request
) -> tuple[CommandProjection, dict] | web.Response:
    name, aggregate_id = request.match_info[TYPE.name], request.match_info[ID.name]
    projection = app.aggregates.get(name)
    if projection is None:
        known = ", ".join(TYPE.known(app)) or "none"
        return error(404, "unknown-aggregate-type", f"no aggregate type {name!r} (types: {known})")
    view = projection.view
    data = await stored_row(
        app, request, view, aggregate_id, f"no {name} {aggregate_id!r} (it has no events)"
    )
    if isinstance(data, web.Response):
        return data
    return projection, view.decode_value(data)


async def _history(
    app: ServedApp, projection: CommandProjection, row: dict, offsets: Sequence[int]
) -> list[Any]:
    """The aggregate's event records at ``offsets`` (some of its own, in order), read
    back from its events topic."""
    if not offsets:
        return []
    tp = TP(projection.events_topic, projection.view.partition_for(row["id"]))
    span = offsets[-1] - offsets[0] + 1
    if len(offsets) >= span * DENSE:
        ranges = [(offsets[0], offsets[-1] + 1)]
    else:
        ranges = [(o, o + 1) for o in offsets]
    wanted = set(offsets)
    found = []
    reader = app.engine.requests_reader()
    for start, end in ranges:
        async for _, records in reader.read({tp: (start, end)}):
            found.extend(r for r in records if r.offset in wanted)
    return found


async def get_aggregate(app: ServedApp, request: web.Request) -> web.StreamResponse:
    at = AT.parse(request)
    got = await _row(app, request)
    if isinstance(got, web.Response):
        return got
    projection, row = got
    body = {"type": row["type"], "id": row["id"], "version": row["version"], "state": row["state"]}
    if at is None:
        return json(body)
    if isinstance(at, int) and at > row["version"]:
        return error(
            404, "no-such-version", f"{row['id']!r} is at version {row['version']}, not {at}"
        )
    aggregate = projection.aggregate.new(row["id"])
    codec = projection.events.codec
    for record in await _history(app, projection, row, row["offsets"]):
        event = codec.decode(record.value, headers=record.headers)
        if isinstance(at, int) and aggregate.version >= at:
            break
        if isinstance(at, dt.datetime) and event.meta.timestamp > at:
            break
        aggregate.apply(event)
    body.update(version=aggregate.version, state=aggregate.to_data())
    body["at"] = at if isinstance(at, int) else format_timestamp(at)
    return json(body)


async def aggregate_events(app: ServedApp, request: web.Request) -> web.StreamResponse:
    limit = LIMIT.parse(request)
    got = await _row(app, request)
    if isinstance(got, web.Response):
        return got
    projection, row = got
    after = CURSOR.parse(request, len(row["offsets"]))
    offsets = row["offsets"][after : after + limit]
    history = [
        {"version": i, "offset": r.offset, "event": orjson.Fragment(bytes(r.value))}
        for i, r in enumerate(await _history(app, projection, row, offsets), start=after + 1)
    ]
    last = after + len(offsets)
    return json(
        {
            "type": row["type"],
            "id": row["id"],
            "version": row["version"],
            "events": history,
            "next": encode_cursor(last) if last < len(row["offsets"]) else None,
        }
    )
