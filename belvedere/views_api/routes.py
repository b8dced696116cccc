"""Which path goes where, declared once per route (:class:`~.operations.Route`): the table
installed on faust's aiohttp application when its server starts, and the one the OpenAPI
spec is written from.

Paths under ``/views/{view}/`` that are not keys: ``rebuild``, ``changes``, ``by`` and
``windows``. A row whose key is one of those is read with ``GET /views/{view}?key=...``.
Order matters: aiohttp tries the paths in this order, so those come before
``/views/{view}/{key}``.
"""

from __future__ import annotations

import functools

from aiohttp import web

from belvedere.streams.converters import INT_MAX
from belvedere.views_api import (
    aggregates,
    changes,
    commands,
    dead_letters,
    events,
    sagas,
    scans,
    windows,
)
from belvedere.views_api.auth import ADMIN, OPEN, READ, WRITE, tokens_required
from belvedere.views_api.browsers import browser_rules
from belvedere.views_api.catalog import list_views
from belvedere.views_api.errors import errors_as_json, json
from belvedere.views_api.forwarding import (
    close_session,
    forward_key,
    request_ids,
    sign_forwards,
    trust_for_forwards,
)
from belvedere.views_api.health import health, ready
from belvedere.views_api.identity import announce_app
from belvedere.views_api.metrics import metrics, timed
from belvedere.views_api.openapi import spec
from belvedere.views_api.operations import ERROR, Answer, Body, Route, ok, refusals
from belvedere.views_api.params import AFTER, TIMEOUT, WHEN
from belvedere.views_api.reads import KEY, MAX_LAG, VIEW, get_row
from belvedere.views_api.rebuilds import rebuild_status, start_rebuild
from belvedere.views_api.status_page import status_page
from belvedere.views_api.surface import ServedApp
from belvedere.views_api.trace import FLOW, get_trace

__all__ = ["ROUTES", "install", "openapi"]


async def openapi(app: ServedApp, request: web.Request) -> web.StreamResponse:
    """``GET /openapi.json``: the spec of ``ROUTES``, for this app."""
    return json(spec(app, ROUTES))


PAGE = {"$ref": "#/components/schemas/Page"}
ENVELOPE = {"$ref": "#/components/schemas/Envelope"}
_WINDOW = {
    "start": {"type": "string", "format": "date-time"},
    "end": {"type": "string", "format": "date-time", "description": "exclusive"},
    "value": {},
}
KEY_WINDOWS = {
    "type": "object",
    "properties": {
        "key": {},
        "windows": {
            "type": "array",
            "items": {"type": "object", "properties": _WINDOW},
            "description": "oldest first",
        },
    },
}
WINDOW_PAGE = {
    "type": "object",
    "properties": {
        "rows": {
            "type": "array",
            "items": {"type": "object", "properties": {"key": {}, **_WINDOW}},
        },
        "next": {"type": ["string", "null"]},
    },
}
REBUILD = Body(
    {
        "type": "object",
        "properties": {
            "fromTimestamp": {
                "anyOf": [
                    {"type": "integer", "minimum": 0, "maximum": INT_MAX},
                    *WHEN,
                    {"type": "null"},
                ],
                "description": "where the replay starts (ms since the epoch, or ISO-8601); "
                "none: the start",
            },
            "acceptFailures": {"type": "boolean"},
        },
        "additionalProperties": False,
    },
    "`{}` for a rebuild from the start; the body may be empty, but its Content-Type is "
    "application/json all the same",
)
PUBLISHED = Body(
    {
        "oneOf": [
            ENVELOPE,
            {"type": "array", "items": ENVELOPE, "minItems": 1, "maxItems": events.MAX_EVENTS},
        ]
    }
)

#: Every route, in the order aiohttp tries them (see :mod:`belvedere.views_api.auth` for the
#: scopes).
ROUTES: tuple[Route, ...] = (
    Route("GET", "/", status_page, OPEN, in_spec=False),
    Route("GET", "/health", health, OPEN, "Liveness", answers=(ok("the process answers"),)),
    Route(
        "GET",
        "/ready",
        ready,
        OPEN,
        "Readiness: every assigned partition is recovered (and, with "
        "ready_max_dead_letter_rate, dead letters under that rate)",
        answers=(ok("ready"), *refusals(503)),
    ),
    Route(
        "GET",
        "/metrics",
        metrics,
        READ,
        "Prometheus metrics",
        answers=(Answer(200, "text format", media="text/plain"),),
    ),
    Route("GET", "/openapi.json", openapi, OPEN, "This document", answers=(ok("the spec"),)),
    Route(
        "GET",
        "/views",
        list_views,
        READ,
        "Every view and its partitions",
        answers=(ok("the views"),),
    ),
    Route(
        "GET",
        "/views/{view}",
        scans.scan_rows,
        READ,
        "Rows in key order across every worker (or one row with `key`)",
        (
            VIEW,
            scans.ROW_KEY,
            scans.PREFIX,
            scans.START,
            scans.END,
            scans.LIMIT,
            scans.CURSOR,
            AFTER,
            TIMEOUT,
        ),
        answers=(ok("a page of rows", schema=PAGE), *refusals(400, 404, 503, 504)),
    ),
    Route(
        "GET",
        "/views/{view}/rebuild",
        rebuild_status,
        READ,
        "A rebuild's progress",
        (VIEW,),
        answers=(ok("the rebuild's state"), *refusals(404)),
    ),
    Route(
        "POST",
        "/views/{view}/rebuild",
        start_rebuild,
        ADMIN,
        "Rebuild the view into a new generation",
        (VIEW,),
        REBUILD,
        (ok("started", 202), *refusals(400, 404, 409, 415)),
    ),
    Route(
        "GET",
        "/views/{view}/by/{index}/{value}",
        scans.lookup_rows,
        READ,
        "Rows whose indexed field has a value, across every worker",
        (VIEW, scans.INDEX, scans.VALUE, scans.LIMIT, scans.CURSOR, AFTER, TIMEOUT),
        answers=(ok("a page of rows", schema=PAGE), *refusals(400, 404, 503, 504)),
    ),
    Route(
        "GET",
        "/views/{view}/changes",
        changes.changes,
        READ,
        "The view's updates as Server-Sent Events, resumable by event id",
        (VIEW, changes.FEED_AFTER, TIMEOUT, changes.FROM, changes.LAST_EVENT_ID),
        answers=(
            Answer(200, "an event stream", media="text/event-stream"),
            *refusals(400, 404, 410, 503, 504),
        ),
    ),
    Route(
        "GET",
        "/views/{view}/windows",
        windows.one_window,
        READ,
        "One window of every key of a windowed view (by its start), across every worker",
        (windows.WINDOWED, windows.START, scans.LIMIT, scans.CURSOR, AFTER, TIMEOUT),
        answers=(ok("a page of windows", schema=WINDOW_PAGE), *refusals(400, 404, 503, 504)),
    ),
    Route(
        "GET",
        "/views/{view}/windows/{key}",
        windows.key_windows_read,
        READ,
        "A key's windows in a time range, or those containing an instant",
        (
            windows.WINDOWED,
            windows.WINDOW_KEY,
            windows.FROM,
            windows.TO,
            windows.AT,
            AFTER,
            TIMEOUT,
            MAX_LAG,
        ),
        answers=(ok("the key's windows", schema=KEY_WINDOWS), *refusals(400, 404, 503, 504)),
    ),
    Route(
        "GET",
        "/views/{view}/{key}",
        get_row,
        READ,
        "One row by key, from whichever worker holds it",
        (VIEW, KEY, AFTER, TIMEOUT, MAX_LAG),
        answers=(ok("the row's value"), *refusals(400, 404, 503, 504)),
    ),
    Route(
        "POST",
        "/events/{topic}",
        events.publish_events,
        WRITE,
        "Publish events (one envelope or an array); answers a token",
        (events.TOPIC,),
        PUBLISHED,
        (
            ok("written", 201),
            *refusals(400, 404, 415),
            Answer(
                403,
                "a token that does not open the write scope, or a topic or event type not "
                "open to HTTP publishing",
                ERROR,
            ),
        ),
    ),
    Route(
        "POST",
        "/commands/{name}",
        commands.send_command,
        WRITE,
        "Send a command; answered once it is decided",
        (commands.COMMAND, commands.IDEMPOTENCY_KEY, commands.CORRELATION_ID, commands.TIMEOUT),
        Body({"type": "object"}),
        (
            ok("accepted, with its events and a token", 202),
            *refusals(400, 404, 409, 415, 422, 503, 504),
        ),
    ),
    Route(
        "GET",
        "/aggregates/{type}/{id}",
        aggregates.get_aggregate,
        READ,
        "An aggregate's state and version, now or as it was",
        (aggregates.TYPE, aggregates.ID, aggregates.AT),
        answers=(ok("its state"), *refusals(400, 404, 503)),
    ),
    Route(
        "GET",
        "/aggregates/{type}/{id}/events",
        aggregates.aggregate_events,
        READ,
        "An aggregate's events, oldest first, a page at a time",
        (aggregates.TYPE, aggregates.ID, aggregates.LIMIT, aggregates.CURSOR),
        answers=(ok("a page of its history, and `next`"), *refusals(400, 404, 503)),
    ),
    Route(
        "GET",
        "/sagas/{name}/{id}",
        sagas.get_saga,
        READ,
        "A saga's state and history, by correlation id",
        (sagas.SAGA, sagas.CORRELATION),
        answers=(ok("its state and history"), *refusals(404, 503)),
    ),
    Route(
        "GET",
        "/trace/{id}",
        get_trace,
        READ,
        "Every event of one flow, across topics, in causal order",
        (FLOW,),
        answers=(ok("its events"), *refusals(404, 503)),
    ),
    Route(
        "GET",
        "/dead-letters",
        dead_letters.list_dead_letters,
        READ,
        "The most recent dead letters, newest first, with their reasons",
        (
            dead_letters.VIEW,
            dead_letters.TOPIC,
            dead_letters.KIND,
            dead_letters.LIMIT,
            dead_letters.CURSOR,
        ),
        answers=(
            ok(
                "a page of dead letters, and `next`",
                schema={"$ref": "#/components/schemas/DeadLetters"},
            ),
            *refusals(400, 404),
        ),
    ),
)


def install(app: ServedApp, web_app: web.Application) -> None:
    scopes = {route.name: route.scope for route in ROUTES}
    announce_app(app, web_app)
    web_app.middlewares.extend([request_ids, timed, errors_as_json])
    web_app.middlewares.append(browser_rules(app, web_app))  # before tokens: preflights
    web_app.middlewares.append(tokens_required(app, scopes))
    for route in ROUTES:
        web_app.router.add_route(
            route.method, route.path, functools.partial(route.handler, app), name=route.name
        )
    sign_forwards(web_app, forward_key(app))
    web_app.on_cleanup.append(close_session)
    if app.web_tls.enabled:
        trust_for_forwards(web_app, app.web_tls.client_context)
