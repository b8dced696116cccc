"""``GET /health`` (the process answers) and ``GET /ready`` (every assigned partition of
every view is recovered, and no rebalance is under way): for liveness and readiness probes.

With ``ready_max_dead_letter_rate`` set, ``/ready`` also fails while this worker sends
more dead letters a minute than that: a release whose handlers fail on every event is
then taken out of service (or its rollout stopped) rather than served green."""

from __future__ import annotations

from aiohttp import web

from belvedere.views_api.errors import json
from belvedere.views_api.surface import ServedApp

__all__ = ["health", "ready"]


async def health(app: ServedApp, request: web.Request) -> web.StreamResponse:
    return json({"status": "ok", "app": app.conf.id, "worker": str(app.conf.canonical_url)})


async def ready(app: ServedApp, request: web.Request) -> web.StreamResponse:
    waiting = {
        name: sorted(p for p, s in view.status.items() if s.state != "serving")
        for name, view in app.views.items()
    }
    waiting = {name: parts for name, parts in waiting.items() if parts}
    limit = app.ready_max_dead_letter_rate
    rate = app.dead_letters.rate()
    if app.ready and not waiting and (limit is None or rate <= limit):
        return json({"ready": True})
    if app.ready and not waiting:
        return json(
            {
                "ready": False,
                "error": "dead-letters",
                "detail": f"{rate} dead letters in the last minute, over "
                f"ready_max_dead_letter_rate ({limit}); see GET /dead-letters",
                "deadLettersLastMinute": rate,
            },
            503,
            {"Retry-After": "10"},
        )
    detail = "rebalancing or recovering tables" if not app.ready else "views recovering"
    return json(
        {"ready": False, "error": "not-ready", "detail": detail, "recovering": waiting},
        503,
        {"Retry-After": "1"},
    )
