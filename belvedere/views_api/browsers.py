"""What a web page in a browser may make a worker do: nothing it was not allowed to.

A worker on a developer's laptop is reachable by every page that developer opens. Three
rules close what a browser would otherwise allow:

- **Host.** DNS rebinding points a name the attacker owns at 127.0.0.1, so the page's
  requests reach the worker as same-origin ones, and it reads the answers. They carry that
  name in ``Host``; so a worker answers only a ``Host`` that names it: its advertised host
  (``web_host``, and the host of its canonical URL), the machine's host name,
  ``localhost``, any IP address (a
  rebinding needs a name: an IP in ``Host`` means the page was served from that address
  itself, which is how orchestrators' probes and load balancers ask), or a name listed in
  ``web_allowed_hosts`` (``*``: any). Any port. Otherwise 421 ``misdirected``. A
  request without ``Host`` (HTTP/1.0) names nothing to rebind, and passes.
- **Writes.** Every request that is not GET, HEAD or OPTIONS needs ``Content-Type:
  application/json`` (else 415 ``unsupported-media-type``): a page may send a form or
  text/plain anywhere, but JSON only after a CORS preflight the worker grants. Its
  ``Origin``, if sent, must be the worker's own (the one its ``Host`` names, or its
  canonical URL's) or listed in ``web_allowed_origins`` (else 403 ``forbidden-origin``).
  A forward between workers skips the origin check: the first worker made it, and the
  forward's signature (:func:`~belvedere.views_api.forwarding.is_forwarded`) proves it one.
- **CORS** is off unless ``web_allowed_origins`` lists origins: then their preflights are
  answered and their requests get ``Access-Control-Allow-Origin`` (with ``Authorization``
  an allowed header; no cookies are used, so no credentials mode).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import hdrs, web
from yarl import URL

from belvedere.views_api.errors import error
from belvedere.views_api.forwarding import is_forwarded
from belvedere.views_api.surface import ServedApp

__all__ = ["LOOPBACK_NAMES", "browser_rules", "origin_of", "split_list"]

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Request headers a page on an allowed origin may send (the rest need no permission).
ALLOWED_HEADERS = (
    "Authorization, Content-Type, Idempotency-Key, X-Correlation-Id, X-Request-Id, Last-Event-ID"
)
#: Answer headers a page on an allowed origin may read.
EXPOSED_HEADERS = (
    "X-Request-Id, X-Belvedere-Position, X-Belvedere-Lag, X-Belvedere-Last-Event, "
    "X-Belvedere-Served-From, X-Belvedere-Generation, X-Belvedere-Worker, X-Belvedere-App, Retry-After, "
    "WWW-Authenticate, Allow"
)
PREFLIGHT_MAX_AGE = "600"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def split_list(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """A setting given as comma-separated text or as a list, without blanks."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    return tuple(item.strip() for item in items if item.strip())


def _host_name(host: str) -> str | None:
    """The name in a ``Host`` header, lowercased, without port or trailing dot."""
    try:
        name = URL(f"http://{host}").raw_host
    except ValueError:
        return None
    return name.lower().rstrip(".").strip("[]") if name else None


def origin_of(text: str) -> str | None:
    """``scheme://host[:port]``, lowercased, default port left out; None if not one."""
    try:
        url = URL(text.strip())
    except ValueError:
        return None
    if url.scheme not in ("http", "https") or not url.raw_host:
        return None
    return str(url.origin()).lower()


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class BrowserRules:
    """The names and origins one worker accepts (see the module docstring)."""

    def __init__(self, app: ServedApp) -> None:
        canonical = URL(str(app.conf.canonical_url))
        configured = split_list(getattr(app, "web_allowed_hosts", None))
        self.any_host = "*" in configured
        self.hosts = LOOPBACK_NAMES | {
            name
            for name in (
                _host_name(str(app.conf.web_host)),
                _host_name(socket.gethostname()),
                _host_name(canonical.raw_host or ""),
                *(_host_name(h) for h in configured if h != "*"),
            )
            if name
        }
        self.own_origin = origin_of(str(canonical))
        origins = split_list(getattr(app, "web_allowed_origins", None))
        self.origins = frozenset(o for o in (origin_of(x) for x in origins) if o)

    def host_allowed(self, host: str) -> bool:
        if self.any_host:
            return True
        name = _host_name(host)
        return name is not None and (name in self.hosts or _is_ip(name))

    def origin_allowed(self, request: web.Request, origin: str) -> bool:
        found = origin_of(origin)
        if found is None:
            return False  # "null" (a sandboxed frame, a file), or garbage
        same = origin_of(f"{request.scheme}://{request.host}")
        return found in self.origins or found == same or found == self.own_origin

    def cross_origin(self, request: web.Request) -> str | None:
        """The request's origin if CORS is on and it is one of the listed ones."""
        origin = request.headers.get(hdrs.ORIGIN)
        if not self.origins or origin is None:
            return None
        found = origin_of(origin)
        return found if found in self.origins else None


def _preflight(origin: str, allowed: Iterable[str]) -> web.Response:
    return web.Response(
        status=204,
        headers={
            hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: origin,
            hdrs.ACCESS_CONTROL_ALLOW_METHODS: ", ".join(sorted({*allowed, "OPTIONS"})),
            hdrs.ACCESS_CONTROL_ALLOW_HEADERS: ALLOWED_HEADERS,
            hdrs.ACCESS_CONTROL_MAX_AGE: PREFLIGHT_MAX_AGE,
            hdrs.VARY: "Origin",
        },
    )


def browser_rules(app: ServedApp, web_app: web.Application) -> Callable[..., Any]:
    """The middleware enforcing the rules, and CORS headers on the answers it lets by."""
    rules = BrowserRules(app)

    async def add_cors(request: web.Request, response: web.StreamResponse) -> None:
        origin = rules.cross_origin(request)
        if origin is None:
            return
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
        response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = EXPOSED_HEADERS
        vary = response.headers.get(hdrs.VARY, "")
        if "origin" not in vary.lower():
            response.headers[hdrs.VARY] = f"{vary}, Origin" if vary else "Origin"

    web_app.on_response_prepare.append(add_cors)

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get(hdrs.HOST)  # none (HTTP/1.0): no name to rebind
        if host is not None and not rules.host_allowed(host):
            return error(
                421,
                "misdirected",
                f"this worker does not answer for Host {host[:80]!r}; add the name to "
                "BELVEDERE_WEB_ALLOWED_HOSTS if it is this worker's",
            )
        refused = request.match_info.http_exception
        if request.method == "OPTIONS" and isinstance(refused, web.HTTPMethodNotAllowed):
            origin = rules.cross_origin(request)
            if origin is not None and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers:
                return _preflight(origin, refused.allowed_methods)
        if request.method in SAFE_METHODS or refused is not None:
            return await handler(request)
        origin = request.headers.get(hdrs.ORIGIN)
        if (
            origin is not None
            and not is_forwarded(request)
            and not rules.origin_allowed(request, origin)
        ):
            return error(
                403,
                "forbidden-origin",
                f"requests from {origin[:80]!r} may not change anything here; list the origin "
                "in BELVEDERE_WEB_ALLOWED_ORIGINS to allow it",
            )
        if request.content_type != "application/json":
            return error(
                415,
                "unsupported-media-type",
                f"send the body as Content-Type: application/json, not {request.content_type!r}"
                " (an empty body too)",
            )
        return await handler(request)

    return check
