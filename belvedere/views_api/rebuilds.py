"""Starting a view's rebuild (admin scope), and watching it (read scope):
``POST``/``GET /views/{view}/rebuild``."""

from __future__ import annotations

import orjson
from aiohttp import web

from belvedere.agents.rebuild import RebuildConflict
from belvedere.streams.converters import INT_MAX, FieldError, timestamp_ms
from belvedere.tables.view import View
from belvedere.views_api.errors import error, json
from belvedere.views_api.reads import view_or_404
from belvedere.views_api.surface import ServedApp

__all__ = ["rebuild_status", "start_rebuild"]


async def start_rebuild(app: ServedApp, request: web.Request) -> web.StreamResponse:
    """Body (optional): ``{"fromTimestamp": <ms or ISO-8601>, "acceptFailures": true}``.
    Answers 202 and the status. ``acceptFailures`` on a rebuild under way (or refused)
    lets it switch despite events that failed under the new code."""
    view = view_or_404(app, request)
    if isinstance(view, web.Response):
        return view
    if view.replicated:
        return _not_rebuilt(view)
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as exc:
        return error(400, "bad-body", f"the body is not JSON: {exc}")
    if (
        not isinstance(body, dict)
        or set(body) - {"fromTimestamp", "acceptFailures"}
        or not isinstance(body.get("acceptFailures", False), bool)
    ):
        return error(
            400,
            "bad-body",
            'expected {"fromTimestamp": <ms or ISO-8601>, "acceptFailures": <bool>} or nothing',
        )
    since = body.get("fromTimestamp")
    if isinstance(since, float) and since.is_integer():  # JSON's 1.0 is an integer too
        since = int(since)
    try:
        since_ms = None if since is None else timestamp_ms(str(since))
        if since_ms is not None and abs(since_ms) > INT_MAX:
            raise FieldError(f"fromTimestamp {since!r} is out of range")
    except FieldError as exc:
        return error(400, "bad-timestamp", str(exc))
    try:
        await app.engine.rebuilds.start(
            view.name, since_ms, accept_failures=body.get("acceptFailures", False)
        )
    except LookupError as exc:
        return error(400, "not-rebuildable", str(exc))
    except RebuildConflict as exc:
        return error(409, "rebuild-running", str(exc))
    return json(await app.engine.rebuilds.status(view.name), 202)


def _not_rebuilt(view: View, status: int = 400) -> web.Response:
    return error(
        status,
        "not-rebuildable",
        f"global view {view.name!r} is folded by each worker from its topic, not rebuilt "
        "(docs/windows.md, Global views)",
    )


async def rebuild_status(app: ServedApp, request: web.Request) -> web.StreamResponse:
    view = view_or_404(app, request)
    if isinstance(view, web.Response):
        return view
    if view.replicated:  # no rebuild to report: 404, as for an unknown view
        return _not_rebuilt(view, 404)
    if view.name not in app.engine.projections:
        return error(
            404, "not-rebuildable", f"view {view.name!r} has no projection to rebuild it from"
        )
    return json(await app.engine.rebuilds.status(view.name))
