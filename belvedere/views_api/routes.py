"""Which path goes where. Installed on faust's aiohttp application when its server starts.

Paths under ``/views/{view}/`` that are not keys: ``rebuild``, ``changes`` and ``by``. A
row whose key is one of those is read with ``GET /views/{view}?key=...``.
"""

from __future__ import annotations

import functools
from typing import Any

from aiohttp import web

from belvedere.views_api.aggregates import aggregate_events, get_aggregate
from belvedere.views_api.auth import ADMIN, OPEN, READ, WRITE, tokens_required
from belvedere.views_api.browsers import browser_rules
from belvedere.views_api.catalog import list_views
from belvedere.views_api.changes import changes
from belvedere.views_api.commands import send_command
from belvedere.views_api.dead_letters import list_dead_letters
from belvedere.views_api.errors import errors_as_json
from belvedere.views_api.events import publish_events
from belvedere.views_api.health import health, ready
from belvedere.views_api.identity import announce_app
from belvedere.views_api.metrics import metrics, timed
from belvedere.views_api.openapi import openapi
from belvedere.views_api.reads import get_row
from belvedere.views_api.rebuilds import rebuild_status, start_rebuild
from belvedere.views_api.routing import (
    close_session,
    forward_key,
    request_ids,
    sign_forwards,
    trust_for_forwards,
)
from belvedere.views_api.sagas import get_saga
from belvedere.views_api.scans import lookup_rows, scan_rows
from belvedere.views_api.status_page import status_page
from belvedere.views_api.surface import ServedApp
from belvedere.views_api.trace import get_trace

__all__ = ["ROUTES", "install", "scope_of"]

#: (method, path, handler, scope): the one place a route's scope is declared; also what the
#: OpenAPI spec describes (see :mod:`belvedere.views_api.auth` for the scopes).
ROUTES: list[tuple[str, str, Any, str]] = [
    ("GET", "/", status_page, OPEN),
    ("GET", "/health", health, OPEN),
    ("GET", "/ready", ready, OPEN),
    ("GET", "/metrics", metrics, READ),
    ("GET", "/openapi.json", openapi, OPEN),
    ("GET", "/views", list_views, READ),
    ("GET", "/views/{view}", scan_rows, READ),
    ("POST", "/views/{view}/rebuild", start_rebuild, ADMIN),
    ("GET", "/views/{view}/rebuild", rebuild_status, READ),
    ("GET", "/views/{view}/by/{index}/{value}", lookup_rows, READ),
    ("GET", "/views/{view}/changes", changes, READ),
    ("GET", "/views/{view}/{key}", get_row, READ),
    ("POST", "/events/{topic}", publish_events, WRITE),
    ("POST", "/commands/{name}", send_command, WRITE),
    ("GET", "/aggregates/{type}/{id}", get_aggregate, READ),
    ("GET", "/aggregates/{type}/{id}/events", aggregate_events, READ),
    ("GET", "/sagas/{name}/{id}", get_saga, READ),
    ("GET", "/trace/{id}", get_trace, READ),
    ("GET", "/dead-letters", list_dead_letters, READ),
]


def scope_of(method: str, path: str) -> str | None:
    """The scope ``ROUTES`` gives a route (None: not Belvedere's)."""
    for m, p, _, scope in ROUTES:
        if (m, p) == (method, path):
            return scope
    return None


def install(app: ServedApp, web_app: web.Application) -> None:
    scopes = {handler.__name__: scope for _, _, handler, scope in ROUTES}
    announce_app(app, web_app)
    web_app.middlewares.extend([request_ids, timed, errors_as_json])
    web_app.middlewares.append(browser_rules(app, web_app))  # before tokens: preflights
    web_app.middlewares.append(tokens_required(app, scopes))
    for method, path, handler, _ in ROUTES:
        web_app.router.add_route(
            method, path, functools.partial(handler, app), name=handler.__name__
        )
    sign_forwards(web_app, forward_key(app))
    web_app.on_cleanup.append(close_session)
    if app.web_tls.enabled:
        trust_for_forwards(web_app, app.web_tls.client_context)
