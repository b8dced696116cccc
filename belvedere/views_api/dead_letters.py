"""``GET /dead-letters``: the most recent dead letters, newest first, with their reasons.

What ``belvedere dlq list`` prints, for a worker that is running (the CLI cannot open the
embedded broker's log while a worker holds it): read from the dead-letter topics with the
worker's shared reader, decoded and chosen as the CLI does (``DeadLetter.matches``). Each page
scans back from where the last one stopped (``cursor``: per dead-letter topic, the offset
below which nothing was shown yet), at most ``SCAN_LIMIT`` records a topic, so a filter
that matches nothing answers quickly, with a cursor to go on from.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from faust.types import TP

from belvedere.streams.dead_letters import DeadLetter, dead_letter_topic
from belvedere.views_api.errors import error, json
from belvedere.views_api.opaque import pack, unpack
from belvedere.views_api.params import PAGE_CURSOR, TOKEN, BadParam, Integer, Name, Param
from belvedere.views_api.surface import ServedApp

__all__ = ["CURSOR", "KIND", "LIMIT", "TOPIC", "VIEW", "list_dead_letters"]

#: Records read back per dead-letter topic per request, and per read.
SCAN_LIMIT = 10_000
CHUNK = 1000

Found = tuple[DeadLetter, int]  # a letter and its offset in its dead-letter topic


async def _scan(
    reader: Any, tp: TP, start: int, upper: int, wanted: int, chosen: Any
) -> tuple[list[Found], int]:
    """Matches in [start, upper), newest first, until ``wanted`` or ``SCAN_LIMIT`` records;
    and the lowest offset read (everything from there to ``upper`` was looked at)."""
    found: list[Found] = []
    low = upper
    while low > start and len(found) < wanted and upper - low < SCAN_LIMIT:
        chunk_start = max(start, low - CHUNK)
        records: list[Any] = []
        async for _, batch in reader.read({tp: (chunk_start, low)}):
            records.extend(batch)
        for record in reversed(records):
            letter = DeadLetter.from_record(record.key, record.value, record.headers)
            if chosen(letter):
                found.append((letter, record.offset))
        low = chunk_start
    return found, low


def _newest_first(per_topic: dict[str, list[Found]]) -> Iterator[tuple[str, Found]]:
    """Every topic's letters, merged newest first (each topic's in its own order)."""
    streams = [[(name, item) for item in items] for name, items in per_topic.items()]
    return heapq.merge(*streams, key=lambda pair: (pair[1][0].time, pair[1][1]), reverse=True)


@dataclass(frozen=True, slots=True, eq=False)
class _Bounds(Param):
    """Where a page resumes: per dead-letter topic, the offset below which nothing was
    shown yet (the previous page's ``next``)."""

    def parse(self, request: web.Request) -> dict[str, int]:
        text = request.query.get(self.name)
        if not text:
            return {}
        try:
            bounds = unpack(text)
            if isinstance(bounds, dict) and all(isinstance(v, int) for v in bounds.values()):
                return bounds
        except ValueError:
            pass
        raise BadParam(f"{self.name} {text[:40]!r} is not a cursor of GET /dead-letters")


VIEW = Name("view", "only those of this view's handlers", known=lambda app: sorted(app.views))
TOPIC = Name(
    "topic", "only those from this source topic", known=lambda app: app.dead_letters.sources()
)
KIND = Param("kind", "only this kind (handler-error, invalid-data, bad-value...)")
LIMIT = Integer(
    "limit",
    "dead letters per page",
    default=100,
    low=1,
    high=1000,
    empty_is_default=False,
)
CURSOR = _Bounds("cursor", PAGE_CURSOR, schema=TOKEN)


async def list_dead_letters(app: ServedApp, request: web.Request) -> web.StreamResponse:
    dead_letters = app.dead_letters
    sources = dead_letters.sources()
    topic = TOPIC.text(request)
    if topic is not None and topic not in sources:
        known = ", ".join(sources) or "none"
        return error(404, "unknown-topic", f"no topic {topic!r} (topics: {known})")
    view = VIEW.text(request)
    if view is not None and view not in app.views:
        known = ", ".join(VIEW.known(app)) or "none"
        return error(404, "unknown-view", f"no view {view!r} (views: {known})")
    kind = KIND.text(request) or None
    limit = LIMIT.parse(request)
    bounds = CURSOR.parse(request)

    def chosen(letter: DeadLetter) -> bool:
        return letter.matches(view=view, kind=kind)

    reader = app.engine.requests_reader()
    per_topic: dict[str, list[Found]] = {}
    scanned: dict[str, tuple[int, int]] = {}  # name: (log start, lowest offset read)
    upper: dict[str, int] = {}
    for source in [topic] if topic is not None else sources:
        await dead_letters.declare(source)
        name = dead_letter_topic(app.conf.id, source)
        tp = TP(name, 0)
        start, end = (await reader.offsets([tp]))[tp]
        upper[name] = min(bounds.get(name, end), end)
        per_topic[name], low = await _scan(reader, tp, start, upper[name], limit, chosen)
        scanned[name] = (start, low)

    shown: list[dict[str, Any]] = []
    taken: dict[str, list[int]] = {}
    for name, (letter, offset) in _newest_first(per_topic):
        if len(shown) == limit:
            break
        shown.append({**letter.describe(), "deadLetterTopic": name, "deadLetterOffset": offset})
        taken.setdefault(name, []).append(offset)
    nxt: dict[str, int] = {}
    for name, (_, low) in scanned.items():
        mine = taken.get(name, [])
        if len(mine) == len(per_topic[name]):  # all it found is shown: go on below the scan
            nxt[name] = low
        else:  # some found are not shown: start again below the last shown
            nxt[name] = mine[-1] if mine else upper[name]
    more = any(nxt[name] > start for name, (start, _) in scanned.items())
    return json({"deadLetters": shown, "next": pack(nxt) if more else None})
