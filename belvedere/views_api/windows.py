"""A windowed view over HTTP: a key's windows, and one window of every key.

- ``GET /views/{view}/windows/{key}?from=&to=``: the key's windows overlapping
  ``[from, to)`` (either bound may be left out), oldest first; ``?at=`` instead: those
  containing that instant (one, or several when windows hop). Answered by the worker
  serving the key's partition (forwarded there otherwise), with ``?after=``, ``?timeout=``
  and ``?max_lag=`` as a key read takes them.
- ``GET /views/{view}/windows?start=``: every key's window starting then, in key order,
  a page at a time, from every worker, as a scan.

Instants are milliseconds since the epoch or ISO-8601; answers give each window's
``start`` and ``end`` (``[start, end)``) in ISO-8601 and its ``value`` as stored. Windows
past retention are hidden, as the view's own reads hide them, until a checkpoint deletes
them. A view that is not windowed answers 400 ``not-windowed``.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from belvedere.tables.view import View
from belvedere.tables.window_keys import SEPARATOR, parse_window_key
from belvedere.tables.window_reads import EARLIEST, LATEST, WindowRow
from belvedere.views_api.errors import error, json
from belvedere.views_api.params import BadParam, Instant, Key, Name
from belvedere.views_api.positions import format_ms
from belvedere.views_api.reads import read_here, view_or_404
from belvedere.views_api.scans import gather
from belvedere.views_api.surface import ServedApp

__all__ = [
    "AT",
    "FROM",
    "START",
    "TO",
    "WINDOWED",
    "WINDOW_KEY",
    "describe_window",
    "feed_key",
    "key_windows_read",
    "one_window",
]

WINDOWED = Name(
    "view",
    "a windowed view's name",
    "path",
    known=lambda app: sorted(n for n, v in app.views.items() if describe_window(v) is not None),
)
WINDOW_KEY = Key("key", "the key whose windows to read, as text", "path", {"type": "string"})
FROM = Instant("from", "windows ending after this instant (ms since the epoch, or ISO-8601)")
TO = Instant("to", "windows starting before this instant (ms since the epoch, or ISO-8601)")
AT = Instant("at", "instead of from and to: the windows containing this instant")
START = Instant("start", "required: the window start (ms since the epoch, or ISO-8601)")


def describe_window(view: View) -> str | None:
    """What the status page and ``GET /views`` say of a view's windows, such as
    ``tumbling 1m`` or ``session, gap 30s`` (None: not windowed)."""
    return None if view.window is None else view.window.describe()


def instant(ms: int) -> str | int:
    """``ms`` in ISO-8601 (as given, where no date has it)."""
    try:
        return format_ms(ms)
    except (ValueError, OverflowError, OSError):
        return ms


def feed_key(view: View, store_key: bytes) -> dict[str, Any] | None:
    """A change's key as a change feed sends it: with its window's bounds when windowed
    (None: a windowed view's bookkeeping row, not sent)."""
    if getattr(view, "window", None) is None:
        return {"key": view.key_from_store(store_key)}
    try:
        key, start, end = parse_window_key(store_key)
    except ValueError:
        return None
    return {"key": view.key_from_store(key), "start": instant(start), "end": instant(end)}


def _not_windowed(view: View) -> web.Response | None:
    if getattr(view, "window", None) is not None:
        return None
    return error(
        400,
        "not-windowed",
        f"view {view.name!r} is not windowed: read its rows with GET /views/{view.name}/{{key}} "
        f"(a row keyed 'windows' with GET /views/{view.name}?key=windows)",
    )


def _windowed_view(app: ServedApp, request: web.Request) -> View | web.Response:
    """The windowed view the path names, or the 404 or 400 instead."""
    view = view_or_404(app, request)
    if isinstance(view, web.Response):
        return view
    refused = _not_windowed(view)
    return view if refused is None else refused


def _window(row: WindowRow) -> dict[str, Any]:
    return {
        "start": instant(row.start),
        "end": instant(row.end),
        "value": orjson.Fragment(row.value),
    }


async def key_windows_read(app: ServedApp, request: web.Request) -> web.StreamResponse:
    """``GET /views/{view}/windows/{key}?from=&to=`` or ``?at=``: the key's windows."""
    view = _windowed_view(app, request)
    if isinstance(view, web.Response):
        return view
    key = WINDOW_KEY.parse(view, request.match_info[WINDOW_KEY.name])
    at, low, high = AT.parse(request), FROM.parse(request), TO.parse(request)
    if at is not None and (low is not None or high is not None):
        raise BadParam("give either at, or from and to, not both")
    low = EARLIEST if low is None else low
    high = LATEST if high is None else high
    if high <= low:
        raise BadParam("to must be after from")
    found = await read_here(app, request, view, key)
    if isinstance(found, web.Response):
        return found
    local, headers = found
    if at is not None:
        low, high = at, at + 1
    rows = view.stored_windows(local.store, view.store_key(key), low, high)
    body = {"key": key, "windows": [_window(row) for row in rows]}
    return json(body, headers=headers)


def _order(view: View, key: Any) -> bytes:
    """The order a windowed view's stores hold its keys in: a key's windows sort after every
    longer key it begins (``ab`` before ``a``), so pages go in that order."""
    return view.store_key(key) + SEPARATOR


def _as_is(key: Any, value: Any) -> Any:
    return value


async def one_window(app: ServedApp, request: web.Request) -> web.StreamResponse:
    """``GET /views/{view}/windows?start=``: every key's window starting at ``start``."""
    view = _windowed_view(app, request)
    if isinstance(view, web.Response):
        return view
    start = START.parse(request)
    if start is None:
        raise BadParam("start is required: the window start (ms or ISO-8601)")

    def run(
        view: View, partitions: list[int], limit: int, after: bytes | None
    ) -> tuple[list[tuple[bytes, bytes]], bool]:
        stores = [view.local(p).store for p in partitions]  # NotLocal: the caller retries
        rows, more = view.stored_windows_starting(stores, start, limit, after)
        return [
            (row.key, orjson.dumps({"key": view.key_from_store(row.key), **_window(row)}))
            for row in rows
        ], more

    return await gather(app, request, run, order=_order, row=_as_is, refuse=_not_windowed)
