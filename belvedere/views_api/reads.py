"""A view's rows by key, answered by whichever worker is asked.

``GET /views/{view}/{key}`` (or ``GET /views/{view}?key=...`` for a key that clashes
with a sub-path, such as ``rebuild``): parsed to the view's key type and hashed as
producers hash it, answered here when this worker serves the partition, otherwise
forwarded to the worker that does. Options:

- ``max_lag=N``: a copy up to N records behind will do (one being restored, or a standby),
  instead of 503 while the partition recovers;
- ``after=TOKEN`` and ``timeout=S``: first wait until the view has applied the token's
  positions (read-your-writes), else 504 with where it is.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import Any

from aiohttp import web
from faust.types import TP

from belvedere.tables.view import LocalPartition, NotLocal, PartitionStatus, View
from belvedere.views_api.errors import error
from belvedere.views_api.forwarding import (
    HEADER_WORKER,
    forward,
    is_forwarded,
    owner_of,
    self_url,
)
from belvedere.views_api.params import AFTER, TIMEOUT, Integer, Key, Name
from belvedere.views_api.positions import (
    HEADER_POSITION,
    Lineage,
    encode_token,
    staleness_headers,
    wait_until_applied,
)
from belvedere.views_api.surface import ServedApp

__all__ = [
    "HEADER_GENERATION",
    "KEY",
    "MAX_LAG",
    "VIEW",
    "get_row",
    "hurry",
    "lag_of",
    "lineage",
    "not_here",
    "read_here",
    "stored_row",
    "view_or_404",
    "windowed_refused",
]

HEADER_GENERATION = "X-Belvedere-Generation"

VIEW = Name("view", "a view's name", "path", known=lambda app: sorted(app.views))
KEY = Key("key", "the row's key, as text", "path", {"type": "string", "minLength": 1})
MAX_LAG = Integer(
    "max_lag",
    "accept a copy this many records behind (recovering, or a standby)",
    default=None,
    low=0,
    high=2**62,
)


def view_or_404(app: ServedApp, request: web.Request) -> View | web.Response:
    name = request.match_info[VIEW.name]
    view = app.views.get(name)
    if view is None:
        known = ", ".join(VIEW.known(app)) or "none"
        return error(404, "unknown-view", f"no view {name!r} (views: {known})")
    return view


def lineage(app: ServedApp, view: View) -> Lineage:
    """The topics the view's partitions follow and its tokens are told in."""
    found = _LINEAGES.get(view)
    if found is None:
        found = _LINEAGES[view] = _lineage(app, view)
    return found


_LINEAGES: weakref.WeakKeyDictionary[View, Lineage] = weakref.WeakKeyDictionary()


def _lineage(app: ServedApp, view: View) -> Lineage:
    projection = app.engine.projections.get(view.name)
    if projection is None:
        unfed = f"{app.conf.id}-view-{view.name}-unfed"
        return Lineage(unfed, unfed)
    return Lineage(projection.source.get_topic_name(), projection.fold_topic.get_topic_name())


def hurry(app: ServedApp, view: View) -> Callable[[int], None]:
    """What a read waiting on ``?after=`` calls for a partition still short of the token:
    it checkpoints at once rather than at the end of the checkpoint interval."""
    engine = app.engine
    return lambda partition: engine.checkpoint_soon(view.name, partition)


def lag_of(app: ServedApp, topics: Lineage, partition: int, status: PartitionStatus) -> int | None:
    """Records of the folded partition not yet applied here, against its end offset as last
    fetched (None: not known here)."""
    here = status.positions.get((topics.folded, partition))
    try:
        end = app.consumer.highwater(TP(topics.folded, partition))
    except Exception:  # not assigned here, or nothing fetched yet
        return None
    if here is None or not isinstance(end, int) or end < 0:
        return None
    return max(end - here, 0)


async def not_here(
    app: ServedApp,
    request: web.Request,
    view: View,
    partition: int,
    why: NotLocal,
    wait: float = 0.0,
) -> web.Response:
    """Forward to the partition's owner; or 503 with Retry-After if that is this worker, or
    unknown, or the request was already forwarded once."""
    owner = owner_of(app, lineage(app, view).folded, partition)
    if owner is not None and owner != self_url(app) and not is_forwarded(request):
        return await forward(request, owner, wait)
    detail = str(why) if owner is not None else f"{why}; no worker holds it now (a rebalance?)"
    return error(503, "not-serving", detail, {"Retry-After": "1"})


async def stored_row(
    app: ServedApp, request: web.Request, view: View, key: Any, missing: str
) -> bytes | web.Response:
    """The row's stored JSON from the worker serving its partition (forwarded there if
    that is another one); a 404 saying ``missing`` when there is none."""
    partition = view.partition_for(key)
    try:
        local = view.local(partition)
    except NotLocal as exc:
        if exc.partition < 0:
            return error(503, "not-serving", str(exc), {"Retry-After": "1"})
        return await not_here(app, request, view, partition, exc)
    data = local.store.get(view.store_key(key))
    if data is None:
        return error(404, "no-such-key", missing)
    return data


async def read_here(
    app: ServedApp, request: web.Request, view: View, key: Any
) -> tuple[LocalPartition, dict[str, str]] | web.Response:
    """The copy of ``key``'s partition to answer from, once it has applied the request's
    ``?after=`` (within ``?timeout=``; ``?max_lag=`` accepts a copy behind), and the
    headers that say how current it is; or the answer instead: the owner's, forwarded
    there, a 503 or a 504."""
    max_lag = MAX_LAG.parse(request)
    token = AFTER.parse(request)
    timeout = TIMEOUT.parse(request)  # refused when bad, even if unused
    if token is None:
        timeout = 0.0
    try:
        partition = view.partition_for(key)
        local = view.local(partition, max_lag)
    except NotLocal as exc:
        if exc.partition < 0:
            return error(503, "not-serving", str(exc), {"Retry-After": "1"})
        return await not_here(app, request, view, partition, exc, timeout)
    topics = lineage(app, view)
    if token is not None:
        wanted = topics.wanted(token, partition)
        short = await wait_until_applied(
            view, {partition: wanted}, time.monotonic() + timeout, hurry(app, view)
        )
        if short:
            return error(
                504,
                "not-yet-applied",
                f"view {view.name!r} has not applied the token's positions within {timeout:g}s",
                {
                    HEADER_POSITION: encode_token(
                        topics.position(view.status.get(partition), partition)
                    )
                },
            )
        try:
            local = view.local(partition, max_lag)  # it may have moved while we waited
        except NotLocal as exc:
            return await not_here(app, request, view, partition, exc, timeout)
    status = view.status.get(partition)
    lag = None if status is None else lag_of(app, topics, partition, status)
    headers = staleness_headers(topics, partition, local, status, lag)
    headers[HEADER_GENERATION] = str(view.generation)
    headers[HEADER_WORKER] = self_url(app)
    return local, headers


def windowed_refused(view: View) -> web.Response | None:
    """The 400 a read of rows by key answers on a windowed view (None: not windowed)."""
    if getattr(view, "window", None) is None:
        return None
    return error(
        400,
        "windowed-view",
        f"view {view.name!r} is windowed: read a key's windows with "
        f"GET /views/{view.name}/windows/{{key}}, one window of every key with "
        f"GET /views/{view.name}/windows?start=",
    )


async def get_row(app: ServedApp, request: web.Request) -> web.StreamResponse:
    """The row's JSON as stored (encoded once, when it was written)."""
    view = view_or_404(app, request)
    if isinstance(view, web.Response):
        return view
    text = request.match_info.get("key")
    if text is None:
        text = request.query["key"]
    key = KEY.parse(view, text)
    refused = windowed_refused(view)
    if refused is not None:
        return refused
    found = await read_here(app, request, view, key)
    if isinstance(found, web.Response):
        return found
    local, headers = found
    data = local.store.get(view.store_key(key))
    if data is None:
        return error(404, "no-such-key", f"view {view.name!r} has no row {text!r}", headers)
    return web.Response(body=data, headers=headers, content_type="application/json")
