"""Reading a view's rows from the worker that holds them."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from belvedere.tables.view import NotLocal, View
from belvedere.views_api.errors import error

__all__ = ["get_row", "view_or_404"]

HEADER_GENERATION = "X-Belvedere-Generation"


def view_or_404(app: Any, request: web.Request) -> View | web.Response:
    name = request.match_info["view"]
    view = app.views.get(name)
    if view is None:
        known = ", ".join(sorted(app.views)) or "none"
        return error(404, "unknown-view", f"no view {name!r} (views: {known})")
    return view


async def get_row(app: Any, request: web.Request) -> web.StreamResponse:
    """The row's JSON as stored (encoded once, when it was written)."""
    view = view_or_404(app, request)
    if isinstance(view, web.Response):
        return view
    text = request.match_info["key"]
    try:
        key = view.parse_key(text)
    except ValueError:
        return error(400, "bad-key", f"view {view.name!r} is keyed by {view.key_type.__name__}")
    try:
        data = view.get_encoded(key)
    except NotLocal as exc:
        return error(503, "not-serving", str(exc), {"Retry-After": "1"})
    headers = {HEADER_GENERATION: str(view.generation)}
    if data is None:
        return error(404, "no-such-key", f"view {view.name!r} has no row {text!r}", headers)
    return web.Response(body=data, headers=headers, content_type="application/json")
