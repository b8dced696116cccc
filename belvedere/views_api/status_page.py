"""``GET /``: a status page of the views, their partitions, lag and rebuilds.

One HTML file with its script inline and no build step: it reads ``GET /views`` every
second and redraws, so it stays current while the worker runs. The app's own views come
first; those the framework made (``internal``) are folded away, so they do not bury them.
Event rates are computed in the page from successive polls' ``eventsProcessed``: the
server keeps no window of its own. The page itself is open;
where a read token is set, ``GET /views`` answers 401 and the page asks for the token
once, keeps it in the tab's sessionStorage and sends it as ``Authorization: Bearer``.
"""

from __future__ import annotations

import functools
import html
from importlib import resources

from aiohttp import web

from belvedere.views_api.surface import ServedApp

__all__ = ["status_page"]


@functools.cache
def _page(app_id: str) -> str:
    page = resources.files("belvedere.views_api").joinpath("static/status.html")
    return page.read_text(encoding="utf-8").replace("{{app}}", html.escape(app_id))


async def status_page(app: ServedApp, request: web.Request) -> web.StreamResponse:
    return web.Response(
        text=_page(app.conf.id),
        content_type="text/html",
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )
