"""Who may ask what: the admin token, and the optional API token for everything else.

With ``admin_token`` set (``BELVEDERE_ADMIN_TOKEN``), admin requests (rebuilds) need
``Authorization: Bearer <token>``: none answers 401, a wrong one 403. Without one, only
clients on this machine (loopback) may use the admin endpoints: the default bind address
is loopback too. With ``api_token`` set (``BELVEDERE_API_TOKEN``), reads,
``POST /events`` and ``POST /commands`` need it the same way; health, readiness and the
OpenAPI spec stay open.
Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from belvedere.views_api.errors import error

__all__ = ["ADMIN", "OPEN", "refuse_admin", "refuse_without_token", "tokens_required"]

#: Route names that check the admin token themselves, and those anyone may call.
ADMIN = frozenset({"start_rebuild", "rebuild_status"})
OPEN = frozenset({"health", "ready", "openapi", "status_page"})


def refuse_without_token(request: web.Request, token: str, what: str) -> web.Response | None:
    """401 without a bearer token, 403 with a wrong one, None with ``token``."""
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not value:
        return error(
            401,
            "unauthorized",
            f"this needs the {what} token: Authorization: Bearer <token>",
            {"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(value.strip().encode(), token.encode()):
        return error(403, "forbidden", f"wrong {what} token")
    return None


def refuse_admin(request: web.Request, token: str | None) -> web.Response | None:
    """The answer refusing ``request``, or None if it may go on."""
    if token is not None:
        return refuse_without_token(request, token, "admin")
    try:
        local = ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        local = False
    if local:
        return None
    return error(
        403, "forbidden", "admin requests from other machines need BELVEDERE_ADMIN_TOKEN set"
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def tokens_required(app: Any) -> Callable[..., Any]:
    """The middleware asking for the API token where one is configured."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        token = app.api_token
        name = request.match_info.route.name
        if token is not None and name not in ADMIN and name not in OPEN:
            refused = refuse_without_token(request, token, "API")
            if refused is not None:
                return refused
        return await handler(request)

    return check
