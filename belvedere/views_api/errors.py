"""Every error answer is JSON, ``{"error": ..., "detail": ...}``: never HTML or a traceback."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

__all__ = ["BadRequest", "error", "errors_as_json", "json"]

logger = logging.getLogger(__name__)

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
        return error(exc.status, exc.reason.lower().replace(" ", "-"), exc.text or exc.reason)
    except Exception:
        logger.exception("%s %s failed", request.method, request.path)
        return error(500, "internal", "the worker failed to answer; see its log")
