"""Who may ask what: three scopes, a bearer token for each, and the loopback rule for admin.

Every route declares one scope (the ``ROUTES`` table in :mod:`belvedere.views_api.routes`):

- ``read``: views, scans, lookups, change feeds, aggregates, sagas, traces, metrics and a
  rebuild's progress;
- ``write``: ``POST /events`` and ``POST /commands``;
- ``admin``: starting a rebuild;
- ``open``: the status page, ``/health``, ``/ready`` and ``/openapi.json``.

A scope is guarded once its own token is set: ``read_token`` (``api_token`` when unset)
for read, ``write_token`` (``api_token`` when unset) for write, ``admin_token`` for admin.
The scopes form a hierarchy: a guarded scope accepts its own token and the tokens of the
scopes above it (admin above write above read), so the admin token opens everything and
the write token also reads. An unguarded read or write scope is open to whoever can
connect (the default bind address is loopback); admin without a token answers clients on
this machine only. A request without a bearer token where one is needed answers 401, one
whose token does not open the scope 403; both carry ``WWW-Authenticate: Bearer``.

Routes that are not Belvedere's (faust ``app.page`` handlers) need read for ``GET`` and
``HEAD``, write otherwise. Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from belvedere.views_api.errors import error
from belvedere.views_api.surface import ServedApp

__all__ = [
    "ADMIN",
    "EXPOSURE_REMEDY",
    "OPEN",
    "READ",
    "SCOPES",
    "WRITE",
    "Tokens",
    "exposure_problem",
    "is_loopback_host",
    "tokens_required",
]

READ, WRITE, ADMIN, OPEN = "read", "write", "admin", "open"
#: The guarded scopes, lowest first: each accepts the tokens of those after it.
SCOPES = (READ, WRITE, ADMIN)
_REALM = "belvedere"


@dataclass(frozen=True)
class Tokens:
    """The token guarding each scope (None: not guarded)."""

    read: str | None
    write: str | None
    admin: str | None

    @classmethod
    def of(cls, app: ServedApp) -> Tokens:
        return cls(
            read=app.read_token or app.api_token,
            write=app.write_token or app.api_token,
            admin=app.admin_token,
        )

    def own(self, scope: str) -> str | None:
        return getattr(self, scope)

    def accepted(self, scope: str) -> list[str]:
        """The tokens that open ``scope``: its own and those of the scopes above it."""
        above = SCOPES[SCOPES.index(scope) :]
        return [t for t in (self.own(s) for s in above) if t is not None]

    def unguarded(self) -> list[str]:
        return [scope for scope in SCOPES if self.own(scope) is None]

    def given(self) -> list[str]:
        return [t for t in (self.read, self.write, self.admin) if t is not None]


def _is_loopback_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_host(host: str) -> bool:
    """True if binding ``host`` only accepts connections from this machine (a name counts
    if every address it resolves to is loopback; one that does not resolve does not)."""
    if _is_loopback_address(host):
        return True
    try:
        ipaddress.ip_address(host)
        return False
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    return bool(found) and all(_is_loopback_address(str(info[4][0])) for info in found)


def exposure_problem(app: ServedApp) -> str | None:
    """Why this worker would be an open door (None if it would not): bound to an address
    other machines reach, with a scope no token guards."""
    bind = str(app.conf.web_bind)
    missing = Tokens.of(app).unguarded()
    if is_loopback_host(bind) or not missing:
        return None
    return (
        f"the web server binds {bind}, which other machines can reach, but no token guards "
        f"the {'/'.join(missing)} scope{'s' if len(missing) > 1 else ''}"
    )


#: How to mend what :func:`exposure_problem` finds.
EXPOSURE_REMEDY = (
    "set BELVEDERE_READ_TOKEN, BELVEDERE_WRITE_TOKEN and BELVEDERE_ADMIN_TOKEN (or "
    "BELVEDERE_API_TOKEN for read and write), bind 127.0.0.1, or pass --insecure-open"
)


def _challenge(scope: str, problem: str | None = None) -> dict[str, str]:
    fields = f'realm="{_REALM}", scope="{scope}"'
    if problem is not None:
        fields += f', error="{problem}"'
    return {"WWW-Authenticate": f"Bearer {fields}"}


def _bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


def _matches(given: str, tokens: list[str]) -> bool:
    """Constant time in which token matched, if any (every one is compared)."""
    found = False
    for token in tokens:
        found |= hmac.compare_digest(given.encode(), token.encode())
    return found


def refusal(request: web.Request, scope: str, tokens: Tokens) -> web.Response | None:
    """The answer refusing ``request`` for ``scope``, or None if it may go on."""
    if scope == OPEN:
        return None
    accepted = tokens.accepted(scope)
    if tokens.own(scope) is None:
        if scope != ADMIN or _is_loopback_address(request.remote or ""):
            return None
        return error(
            403,
            "forbidden",
            "admin requests from other machines need BELVEDERE_ADMIN_TOKEN set",
            _challenge(scope, "insufficient_scope"),
        )
    given = _bearer(request)
    if given is None:
        return error(
            401,
            "unauthorized",
            f"this needs a token with the {scope} scope: Authorization: Bearer <token>",
            _challenge(scope),
        )
    if not _matches(given, accepted):
        return error(
            403,
            "forbidden",
            f"this token does not open the {scope} scope",
            _challenge(scope, "insufficient_scope"),
        )
    return None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def tokens_required(app: ServedApp, scopes: Mapping[str, str]) -> Callable[..., Any]:
    """The middleware checking each request's token against its route's scope
    (``scopes``: route name -> scope)."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        info = request.match_info
        if info.http_exception is None:  # unknown paths and methods answer 404/405 as they are
            scope = scopes.get(info.route.name or "")
            if scope is None:
                scope = READ if request.method in ("GET", "HEAD") else WRITE
            refused = refusal(request, scope, Tokens.of(app))
            if refused is not None:
                return refused
        return await handler(request)

    return check
