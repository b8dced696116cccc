"""Queries over every partition of a view, wherever they live: scans and index lookups.

The worker asked splits the view's partitions by owner, asks each owner for its part
(``scope=local&partitions=...``, as a forwarded request), answers its own part itself,
and merges the parts in key order. Each part is at most ``limit`` rows past the cursor, so
the merged page is exact; its ``next`` cursor is the last key it holds. A partition that
no worker serves makes the answer a 503 with Retry-After, never a silently partial page.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from yarl import URL

from belvedere.tables.view import NotLocal, View
from belvedere.views_api.errors import BadRequest, error, json
from belvedere.views_api.forwarding import ask_members, members_of, self_url
from belvedere.views_api.params import (
    AFTER,
    TIMEOUT,
    BadParam,
    Integer,
    Key,
    KeyCursor,
    Param,
    encode_cursor,
)
from belvedere.views_api.positions import (
    HEADER_LAG,
    HEADER_LAST_EVENT,
    HEADER_POSITION,
    Positions,
    encode_token,
    format_ms,
    wait_until_applied,
)
from belvedere.views_api.reads import (
    HEADER_GENERATION,
    get_row,
    hurry,
    lag_of,
    lineage,
    view_or_404,
    windowed_refused,
)
from belvedere.views_api.surface import ServedApp

__all__ = [
    "CURSOR",
    "END",
    "INDEX",
    "LIMIT",
    "PREFIX",
    "ROW_KEY",
    "START",
    "VALUE",
    "gather",
    "lookup_rows",
    "scan_rows",
    "wait_everywhere",
]

LIMIT = Integer("limit", "rows per page", default=100, low=1, high=10_000)
CURSOR = KeyCursor("cursor", "the `next` of the previous page")
ROW_KEY = Param("key", "read this one row instead")
PREFIX = Param("prefix", "keys starting with this (text keys)")
START = Key("start", "the first key (inclusive)")
END = Key("end", "the last key (exclusive)")
INDEX = Param("index", "an index of the view", "path")
VALUE = Param("value", "the field's value", "path")

#: (view, partitions, limit, after) -> [(store key, stored JSON)], more?
Local = Callable[[View, list[int], int, bytes | None], tuple[list[tuple[bytes, bytes]], bool]]


def _partitions_param(request: web.Request, view: View) -> list[int]:
    assert view.partitions is not None
    text = request.query.get("partitions", "")
    try:
        found = sorted({int(p) for p in text.split(",") if p})
    except ValueError:
        raise BadParam(f"partitions must be a comma-separated list, not {text[:40]!r}") from None
    if any(not 0 <= p < view.partitions for p in found):
        raise BadParam(f"partitions must be in [0, {view.partitions})")
    return found


async def _local_part(
    app: ServedApp, request: web.Request, view: View, partitions: list[int], local: Local
) -> dict[str, Any]:
    """This worker's part: the rows of the partitions it serves, and those it does not;
    with ``?after=``, no rows if a served partition is still ``short`` of the token."""
    token = AFTER.parse(request)
    topics = lineage(app, view)
    short: list[int] = []
    if token is not None:
        wanted = {p: topics.wanted(token, p) for p in partitions}
        deadline = time.monotonic() + TIMEOUT.parse(request)
        short = await wait_until_applied(view, wanted, deadline, hurry(app, view))
    served = [p for p in partitions if p in view.stores and view.status[p].state == "serving"]
    short = [p for p in short if p in served]
    limit = LIMIT.parse(request)
    try:
        if short:
            rows, more = [], False
        else:
            rows, more = local(view, served, limit, CURSOR.parse(request, view))
    except NotLocal:  # revoked in between; the caller retries
        rows, more, served = [], False, []
    except (KeyError, TypeError) as exc:
        raise BadRequest(exc.args[0] if exc.args else str(exc)) from None
    lag, last = 0, None
    for p in served:
        status = view.status[p]
        lag = max(lag, lag_of(app, topics, p, status) or 0)
        if status.last_event_ms is not None:
            last = max(last or 0, status.last_event_ms)
    return {
        "rows": [[view.key_from_store(k), orjson.Fragment(v)] for k, v in rows],
        "more": more,
        "served": served,
        "short": short,
        "missing": {
            p: (view.status[p].state if p in view.status else "not assigned here")
            for p in partitions
            if p not in served
        },
        "position": topics.combine(topics.position(view.status[p], p) for p in served),
        "lag": lag,
        "lastEvent": last,
    }


async def _parts(
    app: ServedApp, request: web.Request, view: View, local: Local, url: URL, wait: float
) -> dict[str, Any] | web.Response:
    """Every owner's part (``url`` with ``scope=local``, asked of each at once, and this
    worker's own): 503 if a partition is served nowhere, 504 if one has not applied
    ``?after=`` within ``wait`` seconds, a 400 an owner gave passed back."""
    assert view.partitions is not None
    topics = lineage(app, view)
    token = AFTER.parse(request)
    if token is not None:
        topics.wanted(token, 0)  # refuse a foreign token here, not once per worker
    me = self_url(app)
    # A global view is whole on every worker: this one answers for all of it.
    members = {me: [0]} if view.replicated else members_of(app, topics.folded)
    if list(members) == [me] and not members[me]:
        members = {me: list(range(view.partitions))}
    parts: dict[str, Any] = {}
    others = [m for m in members if m != me]
    paths = {
        m: url.update_query(scope="local", partitions=",".join(map(str, members[m]))).raw_path_qs
        for m in others
    }
    asked, mine = await asyncio.gather(  # at once: each may wait up to the timeout
        ask_members(request, paths, wait) if others else _nothing(),
        _local_part(app, request, view, members[me], local) if me in members else _nothing(),
    )
    for member, (status, body) in asked.items():
        if status == 200 and isinstance(body, dict):
            parts[member] = body
        elif status == 400:
            return json(body, 400)
    if mine:
        parts[me] = mine
    served = {p for part in parts.values() for p in part["served"]}
    missing = sorted(set(range(view.partitions)) - served)
    if missing:
        return error(
            503,
            "not-serving",
            f"view {view.name!r}: partitions {missing} are not served right now (recovering, "
            "or moving between workers)",
            {"Retry-After": "1"},
        )
    short = sorted(p for part in parts.values() for p in part.get("short", ()))
    if short:
        position = topics.combine(part["position"] for part in parts.values() if part["served"])
        return error(
            504,
            "not-yet-applied",
            f"view {view.name!r}: partitions {short} have not applied the token's positions "
            f"within {wait:g}s",
            {HEADER_POSITION: encode_token(position)},
        )
    return parts


async def wait_everywhere(
    app: ServedApp, request: web.Request, view: View, token: Positions
) -> web.Response | None:
    """Wait until every partition of ``view`` has applied ``token`` (the request's
    ``?after=``), wherever it is served: None once they all have, else the 504 (or 503) a
    scan would answer."""

    def no_rows(*_: Any) -> tuple[list[tuple[bytes, bytes]], bool]:
        return [], False

    url = URL.build(
        path=f"/views/{view.name}",
        query={
            "after": request.query[AFTER.name],
            "timeout": f"{TIMEOUT.parse(request):g}",
            "limit": "1",
        },
    )
    found = await _parts(app, request, view, no_rows, url, TIMEOUT.parse(request))
    return found if isinstance(found, web.Response) else None


def _row(key: Any, value: Any) -> Any:
    return {"key": key, "value": value}


async def gather(
    app: ServedApp,
    request: web.Request,
    local: Local,
    *,
    order: Callable[[View, Any], Any] | None = None,
    row: Callable[[Any, Any], Any] = _row,
    refuse: Callable[[View], web.Response | None] = windowed_refused,
) -> web.StreamResponse:
    """A page of ``local``'s rows from every partition, wherever each is served, merged in
    key order: the keys' own, or ``order(view, key)`` where the parts come in another (it
    must be the order ``local`` pages in past its ``after``). Each row of the answer is
    ``row(key, value)``; ``refuse(view)`` answers instead for a view the read is not for."""
    view = view_or_404(app, request)
    if isinstance(view, web.Response):
        return view
    refused = refuse(view)
    if refused is not None:
        return refused
    if view.partitions is None:
        return error(503, "not-serving", f"view {view.name!r} is not started", {"Retry-After": "1"})
    if request.query.get("scope") == "local":
        return json(await _local_part(app, request, view, _partitions_param(request, view), local))
    limit = LIMIT.parse(request)
    token = AFTER.parse(request)
    wait = TIMEOUT.parse(request)  # refused when bad, even if unused
    if token is None:
        wait = 0.0
    CURSOR.parse(request, view)  # refuse a bad one here, not once per worker
    query = {k: v for k, v in request.query.items() if k not in ("scope", "partitions")}
    parts = await _parts(app, request, view, local, request.rel_url.with_query(query), wait)
    if isinstance(parts, web.Response):
        return parts
    topics = lineage(app, view)
    by = (lambda r: r[0]) if order is None else (lambda r: order(view, r[0]))
    merged = list(heapq.merge(*(part["rows"] for part in parts.values()), key=by))
    page = merged[:limit]
    more = len(merged) > limit or any(part["more"] for part in parts.values())
    position = topics.combine(part["position"] for part in parts.values() if part["served"])
    headers = {
        HEADER_POSITION: encode_token(position),
        HEADER_LAG: str(max(part["lag"] for part in parts.values())),
        HEADER_GENERATION: str(view.generation),
    }
    last = [part["lastEvent"] for part in parts.values() if part["lastEvent"] is not None]
    if last:
        headers[HEADER_LAST_EVENT] = format_ms(max(last))
    body = {
        "rows": [row(key, value) for key, value in page],
        "next": encode_cursor(page[-1][0]) if more and page else None,
    }
    return json(body, headers=headers)


async def _nothing() -> dict:
    return {}


def _scan(request: web.Request) -> Local:
    prefix = PREFIX.text(request) or None
    start, end = START.text(request), END.text(request)

    def run(
        view: View, partitions: list[int], limit: int, after: bytes | None
    ) -> tuple[list[tuple[bytes, bytes]], bool]:
        return view.scan_encoded(
            partitions,
            prefix=prefix,
            start=None if start is None else START.parse(view, start),
            end=None if end is None else END.parse(view, end),
            limit=limit,
            after=after,
        )

    return run


async def scan_rows(app: ServedApp, request: web.Request) -> web.StreamResponse:
    """``GET /views/{view}?prefix=&start=&end=&limit=&cursor=``: rows in key order
    (``?key=K`` reads the one row, as ``GET /views/{view}/{key}`` does)."""
    if ROW_KEY.name in request.query:
        return await get_row(app, request)
    return await gather(app, request, _scan(request))


async def lookup_rows(app: ServedApp, request: web.Request) -> web.StreamResponse:
    """``GET /views/{view}/by/{index}/{value}?limit=&cursor=``: rows whose indexed field
    has that value, in key order."""
    index, value = request.match_info[INDEX.name], request.match_info[VALUE.name]

    def run(
        view: View, partitions: list[int], limit: int, after: bytes | None
    ) -> tuple[list[tuple[bytes, bytes]], bool]:
        found = view.lookup_encoded(partitions, index, value, limit + 1, after)
        return found[:limit], len(found) > limit

    return await gather(app, request, run)
