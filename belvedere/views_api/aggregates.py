"""``GET /aggregates/{type}/{id}`` and ``.../events``: an aggregate now, then, and its history.

- ``GET /aggregates/{type}/{id}``: its state and version, from its snapshot.
- ``?at=N`` (a version) or ``?at=2024-01-15T10:30:00Z`` (a time): the aggregate as it was
  then, folded again from its events (the first N, or those stamped up to that time).
- ``GET /aggregates/{type}/{id}/events``: every event it has, oldest first, each with its
  version and offset, as the envelopes were written.

Answered by the worker holding the aggregate's partition (forwarded there otherwise).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web
from faust.types import TP

from belvedere.agents.commands import CommandProjection
from belvedere.streams.types import FieldError, format_timestamp, parse_timestamp
from belvedere.views_api.errors import error, json
from belvedere.views_api.params import BadParam
from belvedere.views_api.reads import stored_row

__all__ = ["aggregate_events", "get_aggregate"]

#: Read a history as one offset range when it is at least this dense in its partition.
DENSE = 1 / 20


def _at_param(request: web.Request) -> int | dt.datetime | None:
    text = request.query.get("at")
    if not text:
        return None
    if text.isascii() and text.isdigit():
        return int(text)
    try:
        return parse_timestamp(text)
    except FieldError:
        raise BadParam(f"at must be a version or an ISO-8601 time, not {text[:40]!r}") from None


async def _row(app: Any, request: web.Request) -> tuple[CommandProjection, dict] | web.Response:
    name, aggregate_id = request.match_info["type"], request.match_info["id"]
    projection = app.aggregates.get(name)
    if projection is None:
        known = ", ".join(sorted(app.aggregates)) or "none"
        return error(404, "unknown-aggregate-type", f"no aggregate type {name!r} (types: {known})")
    view = projection.view
    data = await stored_row(
        app, request, view, aggregate_id, f"no {name} {aggregate_id!r} (it has no events)"
    )
    if isinstance(data, web.Response):
        return data
    return projection, view.decode_value(data)


async def _history(app: Any, projection: CommandProjection, row: dict) -> list[Any]:
    """The aggregate's event records, in order, read back from its events topic."""
    offsets: Sequence[int] = row["offsets"]
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
    reader = app.projections.requests_reader()
    for start, end in ranges:
        async for _, records in reader.read({tp: (start, end)}):
            found.extend(r for r in records if r.offset in wanted)
    return found


async def get_aggregate(app: Any, request: web.Request) -> web.StreamResponse:
    at = _at_param(request)
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
    for record in await _history(app, projection, row):
        event = codec.decode(record.value, headers=record.headers)
        if isinstance(at, int) and aggregate.version >= at:
            break
        if isinstance(at, dt.datetime) and event.meta.timestamp > at:
            break
        aggregate.apply(event)
    body.update(version=aggregate.version, state=aggregate.to_data())
    body["at"] = at if isinstance(at, int) else format_timestamp(at)
    return json(body)


async def aggregate_events(app: Any, request: web.Request) -> web.StreamResponse:
    got = await _row(app, request)
    if isinstance(got, web.Response):
        return got
    projection, row = got
    history = [
        {"version": i, "offset": r.offset, "event": orjson.Fragment(bytes(r.value))}
        for i, r in enumerate(await _history(app, projection, row), start=1)
    ]
    return json(
        {"type": row["type"], "id": row["id"], "version": row["version"], "events": history}
    )
