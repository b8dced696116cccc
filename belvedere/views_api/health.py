"""``GET /health`` (the process answers) and ``GET /ready`` (every assigned partition of
every view is recovered, and no rebalance is under way): for liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from belvedere.views_api.errors import json

__all__ = ["health", "ready"]


async def health(app: Any, request: web.Request) -> web.StreamResponse:
    return json({"status": "ok", "app": app.conf.id, "worker": str(app.conf.canonical_url)})


async def ready(app: Any, request: web.Request) -> web.StreamResponse:
    waiting = {
        name: sorted(p for p, s in view.status.items() if s.state != "serving")
        for name, view in app.views.items()
    }
    waiting = {name: parts for name, parts in waiting.items() if parts}
    if app.ready and not waiting:
        return json({"ready": True})
    detail = "rebalancing or recovering tables" if not app.ready else "views recovering"
    return json(
        {"ready": False, "error": "not-ready", "detail": detail, "recovering": waiting},
        503,
        {"Retry-After": "1"},
    )
