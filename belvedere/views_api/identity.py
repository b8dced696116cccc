"""Which app a worker runs, on every answer it gives.

A command line client (``belvedere rebuild``, ``reset``) finds a worker by host and port;
on a machine running workers of several apps, the port it guessed may be another app's.
Every answer carries ``X-Belvedere-App`` (and ``/health`` says ``app``) so that the client
can refuse, in one line, to talk to the wrong one instead of failing later with "no view".
"""

from __future__ import annotations

from aiohttp import web

from belvedere.views_api.surface import ServedApp

__all__ = ["APP_HEADER", "announce_app", "wrong_app"]

APP_HEADER = "X-Belvedere-App"


def announce_app(app: ServedApp, web_app: web.Application) -> None:
    name = str(app.conf.id)

    async def add_header(request: web.Request, response: web.StreamResponse) -> None:
        response.headers[APP_HEADER] = name

    web_app.on_response_prepare.append(add_header)


def wrong_app(url: str, expected: str, answered: str | None, hint: str) -> str | None:
    """The one line refusing a worker that runs another app than ``expected`` (or none
    that says: not a Belvedere worker); None when it is the one."""
    if answered == expected:
        return None
    if answered is None:
        return f"the server at {url} is not a Belvedere worker (no {APP_HEADER} header): {hint}"
    return f"the worker at {url} runs app {answered!r}, not {expected!r}: {hint}"
