"""The HTTP layer described in OpenAPI 3.1 (``GET /openapi.json``), written from the route
declarations (:mod:`belvedere.views_api.routes`) for this app's views.

Built from the app when asked, so a view or topic added to the app is in the spec with
its name listed where a path takes one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from belvedere.views_api.auth import OPEN
from belvedere.views_api.operations import Route, refusals
from belvedere.views_api.surface import ServedApp

__all__ = ["spec"]


def _operation(app: ServedApp, route: Route) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": route.summary}
    if route.parameters:
        operation["parameters"] = [p.described(app) for p in route.parameters]
    if route.body is not None:
        operation["requestBody"] = route.body.described()
    answers = {str(a.status): a.described() for a in route.answers}
    operation["responses"] = answers
    operation["x-scope"] = route.scope
    if route.scope == OPEN:
        operation["security"] = []
        return operation
    operation["security"] = [{"bearer": [route.scope]}]
    for refusal in refusals(401, 403):  # unless the route says why it refuses
        answers.setdefault(str(refusal.status), refusal.described())
    return operation


def spec(app: ServedApp, routes: Iterable[Route]) -> dict[str, Any]:
    """The spec of ``routes`` (those ``in_spec``), with the names ``app`` has now."""
    paths: dict[str, Any] = {}
    for route in routes:
        if route.in_spec:
            paths.setdefault(route.path, {})[route.method.lower()] = _operation(app, route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"{app.conf.id}: Belvedere",
            "version": "1",
            "description": "Views, events, commands, aggregates, sagas and flows over HTTP, "
            "from any worker. Every error is "
            'JSON: {"error": ..., "detail": ...}.',
        },
        "paths": paths,
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
