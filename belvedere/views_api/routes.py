"""Which path goes where. Installed on faust's aiohttp application when its server starts."""

from __future__ import annotations

import functools
from typing import Any

from aiohttp import web

from belvedere.views_api.errors import errors_as_json
from belvedere.views_api.reads import get_row
from belvedere.views_api.rebuilds import rebuild_status, start_rebuild

__all__ = ["install"]


def install(app: Any, web_app: web.Application) -> None:
    web_app.middlewares.append(errors_as_json)
    routes = [
        # Before the row route, which therefore cannot read a key named "rebuild".
        ("POST", "/views/{view}/rebuild", start_rebuild),
        ("GET", "/views/{view}/rebuild", rebuild_status),
        ("GET", "/views/{view}/{key}", get_row),
    ]
    for method, path, handler in routes:
        web_app.router.add_route(method, path, functools.partial(handler, app))
