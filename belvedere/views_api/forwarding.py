"""Which worker holds which view partition, and asking it.

A view partition lives with the source partition it is folded from, so its owner is the
member the last rebalance gave that partition to: faust's assignor shares that map
(``external_topic_distribution``, member URL -> topic -> partitions) with every member.
On the embedded broker there is one worker and no map: everything is local.

A forwarded request carries ``X-Belvedere-Forwarded`` and is never forwarded again, so two
workers with different views of a rebalance cannot bounce a request between them. The
header is signed (HMAC-SHA256 over the method, the path with its query, the request id
and a timestamp, keyed by the secret the workers share: :func:`forward_key`), so a client
cannot send it to keep its request from the partition's owner: a header that does not
verify, or is older than ``FORWARD_WINDOW``, is ignored and the request forwarded as usual.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import ssl
import time
import uuid
import weakref
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from yarl import URL

from belvedere.views_api.auth import Tokens
from belvedere.views_api.errors import error
from belvedere.views_api.surface import ServedApp

__all__ = [
    "HEADER_FORWARDED",
    "HEADER_REQUEST_ID",
    "HEADER_WORKER",
    "Member",
    "ask_members",
    "close_session",
    "forward",
    "forward_key",
    "is_forwarded",
    "members_of",
    "owner_of",
    "request_ids",
    "self_url",
    "sign_forwards",
    "trust_for_forwards",
]

HEADER_FORWARDED = "X-Belvedere-Forwarded"
HEADER_REQUEST_ID = "X-Request-Id"
#: On a key read: the worker whose copy answered.
HEADER_WORKER = "X-Belvedere-Worker"
#: Seconds a forwarded request may take, beyond any wait the request itself asks for.
FORWARD_TIMEOUT = 10.0
#: Seconds a forward's signature holds, either way: how far the workers' clocks may differ,
#: and how long a captured forward could be replayed.
FORWARD_WINDOW = 300.0
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
    "accept-encoding",
    "host",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-authenticate",
}
_SESSION = web.AppKey("belvedere.http", aiohttp.ClientSession)
_CLIENT_TLS = web.AppKey("belvedere.http.tls", ssl.SSLContext)
_FORWARD_KEY = web.AppKey("belvedere.http.forward_key", bytes)

Member = str


def self_url(app: ServedApp) -> str:
    found = _SELF_URLS.get(app)
    if found is None:
        found = _SELF_URLS[app] = str(app.conf.canonical_url).rstrip("/")
    return found


_SELF_URLS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _distribution(app: ServedApp) -> Mapping[str, Mapping[str, Any]]:
    try:
        return app.assignor.external_topic_distribution or {}
    except AttributeError:  # before the first assignment
        return {}


def owner_of(app: ServedApp, topic: str, partition: int) -> Member | None:
    """The URL of the worker that was given ``partition`` of ``topic`` (None: unknown)."""
    for url, topics in _distribution(app).items():
        if partition in topics.get(topic, ()):
            return url.rstrip("/")
    return None


def members_of(app: ServedApp, topic: str) -> dict[Member, list[int]]:
    """Every worker holding partitions of ``topic``, with them; just this one if no map
    is known (the embedded broker, or before the first rebalance)."""
    out: dict[Member, list[int]] = {}
    for url, topics in _distribution(app).items():
        partitions = topics.get(topic)
        if partitions:
            out[url.rstrip("/")] = sorted(partitions)
    return out or {self_url(app): []}


def trust_for_forwards(web_app: web.Application, context: ssl.SSLContext) -> None:
    """Check other workers' HTTPS certificates with ``context`` (the app's ``web_tls``)."""
    web_app[_CLIENT_TLS] = context


def forward_key(app: ServedApp) -> bytes:
    """What workers sign forwards with: ``forward_secret``; else derived from the tokens
    (every worker of an app has the same); else from the app id, which anyone may know:
    without tokens a worker is reachable from loopback only, unless ``insecure_open``."""
    given = [app.forward_secret] if app.forward_secret else Tokens.of(app).given()
    material = "\0".join(given or [f"app:{app.conf.id}"])
    return hmac.new(b"belvedere-forward", material.encode(), hashlib.sha256).digest()


def sign_forwards(web_app: web.Application, key: bytes) -> None:
    web_app[_FORWARD_KEY] = key


def _signature(key: bytes, method: str, path_qs: str, request_id: str, stamp: str) -> str:
    message = "\n".join((method, path_qs, request_id, stamp)).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def is_forwarded(request: web.Request) -> bool:
    """True if another worker of this app forwarded ``request`` (its signature verifies)."""
    stamp, _, signature = request.headers.get(HEADER_FORWARDED, "").partition(".")
    key = request.app.get(_FORWARD_KEY)
    if key is None or not stamp.isdigit() or len(stamp) > 12:
        return False
    if abs(time.time() - int(stamp)) > FORWARD_WINDOW:
        return False
    expected = _signature(key, request.method, request.raw_path, request["request_id"], stamp)
    return hmac.compare_digest(signature.encode(), expected.encode())


def _session(request: web.Request) -> aiohttp.ClientSession:
    session = request.app.get(_SESSION)
    if session is None or session.closed:
        tls = request.app.get(_CLIENT_TLS)
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=256, keepalive_timeout=30, ssl=True if tls is None else tls
            )
        )
        request.app[_SESSION] = session
    return session


async def close_session(web_app: web.Application) -> None:
    session = web_app.get(_SESSION)
    if session is not None:
        await session.close()


def _outgoing_headers(request: web.Request, method: str, path_qs: str) -> dict[str, str]:
    ours = {HEADER_FORWARDED.lower(), HEADER_REQUEST_ID.lower()}
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP | ours}
    request_id = headers[HEADER_REQUEST_ID] = request["request_id"]
    stamp = str(int(time.time()))
    key = request.app[_FORWARD_KEY]
    headers[HEADER_FORWARDED] = f"{stamp}.{_signature(key, method, path_qs, request_id, stamp)}"
    return headers


async def forward(request: web.Request, member: Member, extra_timeout: float = 0.0) -> web.Response:
    """Ask ``member`` the same request, body included (even when the handler has read it
    already, as ``POST /commands`` does to find the aggregate); its answer is passed back as
    it is (status, body, headers). A worker that does not answer gives 503 with Retry-After."""
    # as sent, not quoted again: a key's %2F or %3F stays in the key, and the signature holds
    url = URL(member + request.raw_path, encoded=True)
    timeout = aiohttp.ClientTimeout(total=FORWARD_TIMEOUT + extra_timeout)
    try:
        async with _session(request).request(
            request.method,
            url,
            headers=_outgoing_headers(request, request.method, request.raw_path),
            data=await request.read() if request.body_exists else None,
            timeout=timeout,
            allow_redirects=False,
        ) as answer:
            body = await answer.read()
            headers = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
            return web.Response(status=answer.status, body=body, headers=headers)
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return error(
            503,
            "owner-unavailable",
            f"the worker at {member} holds this partition but did not answer ({exc!r})",
            {"Retry-After": "1"},
        )


async def ask_members(
    request: web.Request, paths: Mapping[Member, str], extra_timeout: float = 0.0
) -> dict[Member, tuple[int, Any]]:
    """GET each member's path (with its query) at once, as forwarded requests: (status,
    JSON body) per member; a member that did not answer has status 0 and the reason."""

    async def one(member: Member, path_qs: str) -> tuple[int, Any]:
        timeout = aiohttp.ClientTimeout(total=FORWARD_TIMEOUT + extra_timeout)
        try:
            async with _session(request).get(
                URL(member + path_qs, encoded=True),
                headers=_outgoing_headers(request, "GET", path_qs),
                timeout=timeout,
            ) as answer:
                return answer.status, orjson.loads(await answer.read())
        except (TimeoutError, aiohttp.ClientError, OSError, orjson.JSONDecodeError) as exc:
            return 0, repr(exc)

    found = await asyncio.gather(*(one(m, path) for m, path in paths.items()))
    return dict(zip(paths, found, strict=True))


_ID_PREFIX = uuid.uuid4().hex[:12]
_ID_COUNTER = itertools.count(1)


def _new_request_id() -> str:
    """Unique across workers (a random prefix per process), and cheap."""
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"


@web.middleware
async def request_ids(request: web.Request, handler: Any) -> web.StreamResponse:
    """Each request has an id (the caller's ``X-Request-Id``, or a new one), passed along
    on forwards and echoed in the answer, so one read can be followed across workers."""
    given = request.headers.get(HEADER_REQUEST_ID, "")
    request_id = given if 0 < len(given) <= 128 and given.isprintable() else _new_request_id()
    request["request_id"] = request_id
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers[HEADER_REQUEST_ID] = request_id
        raise
    response.headers[HEADER_REQUEST_ID] = request_id
    return response
