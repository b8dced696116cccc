"""``GET /openapi.json``: the HTTP layer described in OpenAPI 3.1, for this app's views.

Built from the app when asked, so a view or topic added to the app is in the spec with
its name listed where a path takes one.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from belvedere.streams.types import INT_MAX
from belvedere.views_api.aggregates import DEFAULT_LIMIT as HISTORY_DEFAULT_LIMIT
from belvedere.views_api.aggregates import MAX_LIMIT as HISTORY_MAX_LIMIT
from belvedere.views_api.auth import OPEN
from belvedere.views_api.dead_letters import DEFAULT_LIMIT as DEAD_LETTERS_DEFAULT_LIMIT
from belvedere.views_api.dead_letters import MAX_LIMIT as DEAD_LETTERS_MAX_LIMIT
from belvedere.views_api.errors import json
from belvedere.views_api.events import MAX_EVENTS
from belvedere.views_api.publishing import publishable_topics
from belvedere.views_api.surface import ServedApp

__all__ = ["openapi", "spec"]

ERROR = {"$ref": "#/components/schemas/Error"}
#: A point in time as the API takes it: milliseconds since the epoch, or ISO-8601.
WHEN = [
    {"type": "string", "pattern": "^[0-9]{1,18}$"},
    {"type": "string", "format": "date-time"},
]


def _param(name: str, where: str, description: str, schema: dict, required: bool = False) -> dict:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "description": description,
        "schema": schema,
    }


_REASONS = {
    400: "a bad parameter or body",
    401: "no token where the route's scope needs one",
    403: "a token that does not open the route's scope",
    404: "no such view, key, topic or path",
    409: "a conflict: a rebuild already running, or not the expectedVersion",
    415: "the body is not sent as application/json",
    410: "the position is gone (the view was rebuilt, or its changelog compacted)",
    503: "the partition is not served right now (recovering, or moving): retry after",
    422: "the command was rejected",
    504: "not in time: the token's positions, or the command's outcome",
}


def _error_answer(status: int) -> dict:
    return {
        "description": _REASONS[status],
        "content": {"application/json": {"schema": ERROR}},
    }


def _answers(ok: str, *errors: int, ok_status: str = "200", body: dict | None = None) -> dict:
    out: dict[str, Any] = {
        ok_status: {
            "description": ok,
            "content": {"application/json": {"schema": body or {}}},
        }
    }
    for status in errors:
        out[str(status)] = _error_answer(status)
    return out


def _page_params(what: str, default: int, maximum: int) -> list[dict]:
    """``limit`` and ``cursor``, for a listing read a page at a time."""
    return [
        _param(
            "limit",
            "query",
            f"{what} per page (default {default})",
            {"type": "integer", "minimum": 1, "maximum": maximum},
        ),
        _param(
            "cursor",
            "query",
            "the `next` of the previous page (empty: the first)",
            {"type": "string", "pattern": "^[A-Za-z0-9_-]*$", "maxLength": 4096},
        ),
    ]


def _command_paths(app: ServedApp) -> dict[str, Any]:
    """The write side: commands, and aggregates with their history."""
    timeout = _param(
        "timeout",
        "query",
        "seconds to wait for the command's outcome (default 5)",
        {"type": "number", "minimum": 0, "maximum": 60},
    )
    commands = sorted(c.event_type for p in app.aggregates.values() for c in p.command_handlers)
    kind = _param(
        "type",
        "path",
        "an aggregate type",
        {"type": "string", "enum": sorted(app.aggregates) or ["none"]},
    )
    aggregate_id = _param("id", "path", "the aggregate's id", {"type": "string", "minLength": 1})
    return {
        "/commands/{name}": {
            "post": {
                "summary": "Send a command; answered once it is decided",
                "parameters": [
                    _param(
                        "name",
                        "path",
                        "the command type",
                        {"type": "string", "enum": commands or ["none"]},
                    ),
                    _param(
                        "Idempotency-Key",
                        "header",
                        "the command id: a repeat gets the first outcome",
                        {"type": "string", "maxLength": 200},
                    ),
                    _param(
                        "X-Correlation-Id",
                        "header",
                        "the flow this command belongs to",
                        {"type": "string"},
                    ),
                    timeout,
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "responses": _answers(
                    "accepted, with its events and a token",
                    400,
                    404,
                    409,
                    415,
                    422,
                    503,
                    504,
                    ok_status="202",
                ),
            }
        },
        "/aggregates/{type}/{id}": {
            "get": {
                "summary": "An aggregate's state and version, now or as it was",
                "parameters": [
                    kind,
                    aggregate_id,
                    _param(
                        "at",
                        "query",
                        "a version number (digits), or an ISO-8601 time",
                        {"anyOf": [{"type": "string", "pattern": "^[0-9]{0,18}$"}, WHEN[1]]},
                    ),
                ],
                "responses": _answers("its state", 400, 404, 503),
            }
        },
        "/sagas/{name}/{id}": {
            "get": {
                "summary": "A saga's state and history, by correlation id",
                "parameters": [
                    _param(
                        "name",
                        "path",
                        "the saga",
                        {"type": "string", "enum": sorted(app.sagas) or ["none"]},
                    ),
                    _param("id", "path", "its correlation id", {"type": "string", "minLength": 1}),
                ],
                "responses": _answers("its state and history", 404, 503),
            }
        },
        "/trace/{id}": {
            "get": {
                "summary": "Every event of one flow, across topics, in causal order",
                "parameters": [
                    _param(
                        "id",
                        "path",
                        "the flow's correlation id",
                        {"type": "string", "minLength": 1},
                    ),
                ],
                "responses": _answers("its events", 404, 503),
            }
        },
        "/dead-letters": {
            "get": {
                "summary": "The most recent dead letters, newest first, with their reasons",
                "parameters": [
                    _param(
                        "view",
                        "query",
                        "only those of this view's handlers",
                        {"type": "string", "enum": sorted(app.views) or ["none"]},
                    ),
                    _param(
                        "topic",
                        "query",
                        "only those from this source topic",
                        {"type": "string", "enum": app.dead_letters.sources() or ["none"]},
                    ),
                    _param(
                        "kind",
                        "query",
                        "only this kind (handler-error, invalid-data, bad-value...)",
                        {"type": "string"},
                    ),
                    *_page_params(
                        "dead letters", DEAD_LETTERS_DEFAULT_LIMIT, DEAD_LETTERS_MAX_LIMIT
                    ),
                ],
                "responses": _answers(
                    "a page of dead letters, and `next`",
                    400,
                    404,
                    body={"$ref": "#/components/schemas/DeadLetters"},
                ),
            }
        },
        "/aggregates/{type}/{id}/events": {
            "get": {
                "summary": "An aggregate's events, oldest first, a page at a time",
                "parameters": [
                    kind,
                    aggregate_id,
                    *_page_params("events", HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT),
                ],
                "responses": _answers("a page of its history, and `next`", 400, 404, 503),
            }
        },
    }


def spec(app: ServedApp) -> dict[str, Any]:
    views = sorted(app.views) or ["none"]
    topics = publishable_topics(app) or ["none"]
    view = _param("view", "path", "a view's name", {"type": "string", "enum": views})
    # empty: none given
    token = {"type": "string", "pattern": "^[A-Za-z0-9_-]*$", "maxLength": 4096}
    after = _param(
        "after",
        "query",
        "a consistency token (from X-Belvedere-Position or POST /events): wait until the "
        "view has applied it",
        token,
    )
    timeout = _param(
        "timeout",
        "query",
        "seconds to wait for `after`",
        {"type": "number", "minimum": 0, "maximum": 60},
    )
    max_lag = _param(
        "max_lag",
        "query",
        "accept a copy this many records behind (recovering, or a standby)",
        {"type": "integer", "minimum": 0},
    )
    limit = _param(
        "limit", "query", "rows per page", {"type": "integer", "minimum": 1, "maximum": 10000}
    )
    cursor = _param("cursor", "query", "the `next` of the previous page", token)
    page = {"$ref": "#/components/schemas/Page"}
    get_row = {
        "summary": "One row by key, from whichever worker holds it",
        "parameters": [
            view,
            _param("key", "path", "the row's key, as text", {"type": "string", "minLength": 1}),
            after,
            timeout,
            max_lag,
        ],
        "responses": _answers("the row's value", 400, 404, 503, 504),
    }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": f"{app.conf.id}: Belvedere",
            "version": "1",
            "description": "Views, events, commands, aggregates, sagas and flows over HTTP, "
            "from any worker. Every error is "
            'JSON: {"error": ..., "detail": ...}.',
        },
        "paths": {
            "/health": {
                "get": {
                    "summary": "Liveness",
                    "responses": _answers("the process answers"),
                }
            },
            "/ready": {
                "get": {
                    "summary": "Readiness: every assigned partition is recovered (and, with "
                    "ready_max_dead_letter_rate, dead letters under that rate)",
                    "responses": _answers("ready", 503),
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {"description": "text format", "content": {"text/plain": {}}}
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": _answers("the spec"),
                }
            },
            "/views": {
                "get": {
                    "summary": "Every view and its partitions",
                    "responses": _answers("the views"),
                }
            },
            "/views/{view}": {
                "get": {
                    "summary": "Rows in key order across every worker (or one row with `key`)",
                    "parameters": [
                        view,
                        _param("key", "query", "read this one row instead", {"type": "string"}),
                        _param(
                            "prefix",
                            "query",
                            "keys starting with this (text keys)",
                            {"type": "string"},
                        ),
                        _param("start", "query", "the first key (inclusive)", {"type": "string"}),
                        _param("end", "query", "the last key (exclusive)", {"type": "string"}),
                        limit,
                        cursor,
                        after,
                        timeout,
                    ],
                    "responses": _answers("a page of rows", 400, 404, 503, 504, body=page),
                }
            },
            "/views/{view}/{key}": {"get": get_row},
            "/views/{view}/by/{index}/{value}": {
                "get": {
                    "summary": "Rows whose indexed field has a value, across every worker",
                    "parameters": [
                        view,
                        _param("index", "path", "an index of the view", {"type": "string"}),
                        _param("value", "path", "the field's value", {"type": "string"}),
                        limit,
                        cursor,
                        after,
                        timeout,
                    ],
                    "responses": _answers("a page of rows", 400, 404, 503, 504, body=page),
                }
            },
            "/views/{view}/changes": {
                "get": {
                    "summary": "The view's updates as Server-Sent Events, resumable by event id",
                    "parameters": [
                        view,
                        _param(
                            "after",
                            "query",
                            "the id of the last event received; or a consistency token: the "
                            "feed starts with the changes of events after its position",
                            token,
                        ),
                        timeout,
                        _param(
                            "from",
                            "query",
                            "where a feed without an id starts",
                            {"type": "string", "enum": ["end", "start"]},
                        ),
                        _param(
                            "Last-Event-ID", "header", "the id of the last event received", token
                        ),
                    ],
                    "responses": {
                        "200": {
                            "description": "an event stream",
                            "content": {"text/event-stream": {}},
                        },
                        **{
                            k: v
                            for k, v in _answers("", 400, 404, 410, 503, 504).items()
                            if k != "200"
                        },
                    },
                }
            },
            "/views/{view}/rebuild": {
                "get": {
                    "summary": "A rebuild's progress",
                    "parameters": [view],
                    "responses": _answers("the rebuild's state", 404),
                },
                "post": {
                    "summary": "Rebuild the view into a new generation",
                    "parameters": [view],
                    "requestBody": {
                        "description": "`{}` for a rebuild from the start; the body may be "
                        "empty, but its Content-Type is application/json all the same",
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "fromTimestamp": {
                                            "anyOf": [
                                                {
                                                    "type": "integer",
                                                    "minimum": 0,
                                                    "maximum": INT_MAX,
                                                },
                                                *WHEN,
                                                {"type": "null"},
                                            ],
                                            "description": "where the replay starts (ms "
                                            "since the epoch, or ISO-8601); none: the start",
                                        },
                                        "acceptFailures": {"type": "boolean"},
                                    },
                                    "additionalProperties": False,
                                }
                            }
                        },
                    },
                    "responses": _answers("started", 400, 404, 409, 415, ok_status="202"),
                },
            },
            "/events/{topic}": {
                "post": {
                    "summary": "Publish events (one envelope or an array); answers a token",
                    "parameters": [
                        _param(
                            "topic",
                            "path",
                            "an event topic open to HTTP publishing",
                            {"type": "string", "enum": topics},
                        )
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        {"$ref": "#/components/schemas/Envelope"},
                                        {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/Envelope"},
                                            "minItems": 1,
                                            "maxItems": MAX_EVENTS,
                                        },
                                    ]
                                }
                            }
                        },
                    },
                    "responses": {
                        **_answers("written", 400, 404, 415, ok_status="201"),
                        "403": {
                            **_error_answer(403),
                            "description": "a token that does not open the write scope, or a "
                            "topic or event type not open to HTTP publishing",
                        },
                    },
                }
            },
            **_command_paths(app),
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "detail"],
                    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
                },
                "Page": {
                    "type": "object",
                    "required": ["rows", "next"],
                    "properties": {
                        "rows": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {"key": {}, "value": {}},
                            },
                        },
                        "next": {"type": ["string", "null"]},
                    },
                },
                "DeadLetters": {
                    "type": "object",
                    "required": ["deadLetters", "next"],
                    "properties": {
                        "deadLetters": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["kind", "reason", "topic", "partition", "offset"],
                                "properties": {
                                    "kind": {"type": "string"},
                                    "reason": {"type": "string"},
                                    "time": {"type": "string"},
                                    "view": {"type": ["string", "null"]},
                                    "generation": {"type": ["integer", "null"]},
                                    "topic": {"type": "string"},
                                    "partition": {"type": "integer"},
                                    "offset": {"type": "integer"},
                                    "key": {"type": ["string", "null"]},
                                    "eventId": {"type": ["string", "null"]},
                                    "eventType": {"type": ["string", "null"]},
                                    "deadLetterTopic": {"type": "string"},
                                    "deadLetterOffset": {"type": "integer"},
                                },
                            },
                        },
                        "next": {"type": ["string", "null"]},
                    },
                },
                "Envelope": {
                    "type": "object",
                    "required": ["eventType", "eventVersion", "data"],
                    "properties": {
                        "eventId": {"type": "string"},
                        "eventType": {
                            "type": "string",
                            "enum": sorted({t.event_type for t in app.event_types}) or ["none"],
                        },
                        "eventVersion": {
                            "description": 'an integer, or a version string ("1.0", "2.1") '
                            "whose major number is the version",
                            "oneOf": [
                                {"type": "integer"},
                                {"type": "string", "pattern": r"^\d{1,9}(\.\d{1,9}){0,2}$"},
                            ],
                        },
                        "timestamp": {"type": "string"},
                        "correlationId": {"type": "string"},
                        "causationId": {"type": "string"},
                        "producer": {"type": "string"},
                        "data": {"type": "object"},
                    },
                },
            },
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token opening the operation's scope (read, write or "
                    "admin). The admin token opens every scope and the write token also reads; "
                    "a scope the worker sets no token for needs none (admin then answers "
                    "loopback clients only).",
                }
            },
        },
    }
    _declare_scopes(document["paths"])
    return document


def _declare_scopes(paths: dict[str, Any]) -> None:
    """Each operation's ``security``, from the scope ``ROUTES`` declares for it."""
    from belvedere.views_api.routes import scope_of  # routes imports this module

    for path, operations in paths.items():
        for method, operation in operations.items():
            scope = scope_of(method.upper(), path)
            if scope is None:
                raise LookupError(f"{method.upper()} {path} is in the spec but not in ROUTES")
            operation["x-scope"] = scope
            if scope == OPEN:
                operation["security"] = []
                continue
            operation["security"] = [{"bearer": [scope]}]
            for status in (401, 403):
                operation["responses"].setdefault(str(status), _error_answer(status))


async def openapi(app: ServedApp, request: web.Request) -> web.StreamResponse:
    return json(spec(app))
