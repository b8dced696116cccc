"""``POST /commands/{name}``: send a command over HTTP and get its outcome.

The body is the command's data (camelCase fields, ``expectedVersion`` optional). The
worker holding the aggregate's partition publishes it on the command topic and answers
once it is decided:

- 202: accepted, with the events and a consistency token (``X-Belvedere-Position``) that
  a read passes as ``?after=`` to see views with the events applied;
- 409: ``expectedVersion`` is not the aggregate's version;
- 422: the handler rejected it;
- 400: the body is not such a command; 404: no handler takes it;
- 504: no outcome within ``?timeout=`` seconds (5 by default). Sending it again with the
  same ``Idempotency-Key`` is safe.

``Idempotency-Key`` is the command id: a command id seen before gets its first outcome
back (with ``"duplicate": true``) and emits nothing. ``X-Correlation-Id`` starts (or
continues) a flow; by default the command id does.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from aiohttp import web

from belvedere.agents.commands import CommandProjection, Outcome
from belvedere.streams.converters import FieldError
from belvedere.tables.view import NotLocal
from belvedere.views_api.errors import error, json
from belvedere.views_api.params import Name, Param, Seconds
from belvedere.views_api.positions import HEADER_POSITION, encode_token
from belvedere.views_api.reads import not_here
from belvedere.views_api.surface import ServedApp

__all__ = ["COMMAND", "CORRELATION_ID", "IDEMPOTENCY_KEY", "TIMEOUT", "send_command"]

HEADER_IDEMPOTENCY = "Idempotency-Key"
HEADER_CORRELATION = "X-Correlation-Id"
#: Longest command id (Idempotency-Key) accepted.
MAX_ID = 200


def _commands(app: ServedApp) -> list[str]:
    return sorted(c.event_type for p in app.aggregates.values() for c in p.command_handlers)


COMMAND = Name("name", "the command type", "path", known=_commands)
IDEMPOTENCY_KEY = Param(
    HEADER_IDEMPOTENCY,
    "the command id: a repeat gets the first outcome",
    "header",
    {"type": "string", "maxLength": MAX_ID},
)
CORRELATION_ID = Param(HEADER_CORRELATION, "the flow this command belongs to", "header")
TIMEOUT = Seconds("timeout", "seconds to wait for the command's outcome")

_STATUS = {"accepted": 202, "rejected": 422, "conflict": 409, "failed": 500}
_ERRORS = {"rejected": "rejected", "conflict": "version-conflict", "failed": "handler-failed"}


def answer(
    projection: CommandProjection,
    command_id: str,
    aggregate_id: str,
    outcome: Outcome,
    duplicate: bool,
) -> web.Response:
    status = outcome["status"]
    body: dict[str, Any] = {
        "commandId": command_id,
        "aggregateType": projection.aggregate.aggregate_type,
        "aggregateId": aggregate_id,
        **{k: v for k, v in outcome.items() if k not in ("at", "position")},
    }
    if status in _ERRORS:
        body["error"] = _ERRORS[status]
    if duplicate:
        body["duplicate"] = True
    headers = {}
    position = outcome.get("position")
    if position is not None:
        topic, partition, offset = position
        headers[HEADER_POSITION] = body["token"] = encode_token({topic: {partition: offset}})
    return json(body, _STATUS[status], headers)


async def send_command(app: ServedApp, request: web.Request) -> web.StreamResponse:
    name = request.match_info[COMMAND.name]
    projection = app.command_route(name)
    if projection is None:
        known = COMMAND.known(app)
        return error(
            404,
            "unknown-command",
            f"no handler takes {name!r} (commands: {', '.join(known) or 'none'})",
        )
    cls = projection.source.codec.types[name]
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        return error(400, "bad-body", f"the body is not JSON: {exc}")
    try:
        command = cls.from_data(body)
    except FieldError as exc:
        return error(400, "invalid-data", f"{name}: {exc}")
    try:
        aggregate_id = projection.aggregate_id_of(command)
    except ValueError as exc:
        return error(400, "no-key", str(exc))
    command_id = IDEMPOTENCY_KEY.text(request) or str(uuid.uuid4())
    if len(command_id) > MAX_ID:
        return error(400, "bad-header", f"{HEADER_IDEMPOTENCY} is longer than {MAX_ID} characters")
    timeout = TIMEOUT.parse(request)
    view = projection.view
    partition = view.partition_of(aggregate_id, view.partitions or 1)
    try:
        local = view.local(partition)
    except NotLocal as exc:
        return await not_here(app, request, view, partition, exc, timeout)
    seen = projection.recorded(local.store, aggregate_id, command_id)
    if seen is not None:
        return answer(projection, command_id, aggregate_id, seen, duplicate=True)
    try:
        outcome = await projection.submit(
            command,
            command_id=command_id,
            partition=partition,
            correlation_id=CORRELATION_ID.text(request),
            timeout=timeout,
        )
    except TimeoutError:
        return error(
            504,
            "no-outcome-yet",
            f"command {command_id!r} was sent but not decided within {timeout:g}s; send it "
            f"again with {HEADER_IDEMPOTENCY}: {command_id} to get its outcome",
        )
    return answer(projection, command_id, aggregate_id, outcome, bool(outcome.get("duplicate")))
