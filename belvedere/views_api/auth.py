"""The admin token: what may start a rebuild.

With ``admin_token`` set (``BELVEDERE_ADMIN_TOKEN``), admin requests need
``Authorization: Bearer <token>``: none answers 401, a wrong one 403. Tokens are compared
in constant time and never logged. Without one, only clients on this machine (loopback)
may use the admin endpoints: the default bind address is loopback too.
"""

from __future__ import annotations

import hmac
import ipaddress

from aiohttp import web

from belvedere.views_api.errors import error

__all__ = ["refuse_admin"]


def refuse_admin(request: web.Request, token: str | None) -> web.Response | None:
    """The answer refusing ``request``, or None if it may go on."""
    if token is None:
        try:
            local = ipaddress.ip_address(request.remote or "").is_loopback
        except ValueError:
            local = False
        if local:
            return None
        return error(
            403, "forbidden", "admin requests from other machines need BELVEDERE_ADMIN_TOKEN set"
        )
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not value:
        return error(
            401,
            "unauthorized",
            "this needs the admin token: Authorization: Bearer <token>",
            {"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(value.strip().encode(), token.encode()):
        return error(403, "forbidden", "wrong admin token")
    return None
