"""Every error answer is JSON, ``{"error": ..., "detail": ...}``: never HTML or a traceback.

A client that hangs up before its request is read (or answered) is no failure of the
worker: no traceback, one debug line, and 499 (nginx's "client closed request") in the
metrics, for an answer nobody receives.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

__all__ = ["CLIENT_GONE", "BadRequest", "error", "errors_as_json", "json"]

logger = logging.getLogger(__name__)

#: The status recorded for a request whose client went away.
CLIENT_GONE = 499
#: aiohttp's own error headers that a JSON answer replaces.
_BODY_HEADERS = frozenset({"content-type", "content-length"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(ValueError):
    """What the client asked for cannot be done as asked: a 400 with this detail."""

    code = "bad-request"


def json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def error(
    status: int, error: str, detail: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return json({"error": error, "detail": detail}, status, headers)


def _no_route(request: web.Request) -> str:
    """What a path no route takes is missing, where it can be guessed."""
    parts = request.path.strip("/").split("/")
    if len(parts) == 4 and parts[0] == "views" and parts[2] == "by":
        return f"an index lookup needs a value: GET /views/{parts[1]}/by/{parts[3]}/{{value}}"
    return f"no route for {request.method} {request.path[:200]}; GET /openapi.json lists them"


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (an unknown path, a wrong method) and crashes, as JSON."""
    try:
        return await handler(request)
    except BadRequest as exc:
        return error(400, exc.code, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kept = {k: v for k, v in exc.headers.items() if k.lower() not in _BODY_HEADERS}
        detail = exc.text or exc.reason
        if isinstance(exc, web.HTTPMethodNotAllowed):
            detail = f"{request.method} is not one of {', '.join(sorted(exc.allowed_methods))}"
        elif isinstance(exc, web.HTTPNotFound) and request.match_info.route.resource is None:
            detail = _no_route(request)
        return error(exc.status, exc.reason.lower().replace(" ", "-"), detail, kept)
    except ConnectionResetError:  # also aiohttp's ClientConnectionResetError
        logger.debug("%s %s: the client hung up", request.method, request.path)
        return error(CLIENT_GONE, "client-gone", "the client closed the connection")
    except Exception:
        logger.exception("%s %s failed", request.method, request.path)
        return error(500, "internal", "the worker failed to answer; see its log")
