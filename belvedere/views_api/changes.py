"""``GET /views/{view}/changes``: a view's updates as Server-Sent Events, resumable.

Any worker serves the whole feed: it reads the view's changelog (durable, and the same
whoever writes it), so a rebalance or a restart does not end a feed, and a client that
reconnects to any worker with the last event id it saw (``Last-Event-ID``, or
``?after=``) gets every later change exactly once.

Each event is ``event: change`` with ``data: {"key", "value", "deleted", "partition"}``
(a windowed view's also ``start`` and ``end``, its window's) and an ``id`` that resumes
right after it. The id says, per partition, the checkpoint to read from and how many of
its changes were already sent. Without an id the feed starts at the end (``?from=start``:
at the beginning, the whole view as it was built). A rebuild switching the view to a new
generation ends the feed with ``event: rebuilt``; a position the changelog no longer holds
answers 410: start again without an id.

``?after=`` may instead be a consistency token (a scan's ``X-Belvedere-Position``): once
every partition has applied it (else 504, as a scan), the feed starts with the changes of
the events after it, so a snapshot and the feed after it miss nothing.

A worker serves at most ``max_change_feeds`` feeds at once (503 with ``Retry-After``
beyond). Waiting for changes costs one request for a changelog's offsets per
``IDLE_POLL`` whatever the number of feeds reading it: one poller per changelog answers
them all (each feed then reads its own new records from its own position).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import orjson
from aiohttp import web
from faust.types import TP

from belvedere.tables.changes import Checkpoint, Truncated, checkpoint_ends, checkpoints
from belvedere.tables.view import View
from belvedere.views_api.errors import BadRequest, error
from belvedere.views_api.opaque import pack, unpack
from belvedere.views_api.params import TOKEN, Choice, Param
from belvedere.views_api.positions import BadToken, Positions, decode_token
from belvedere.views_api.reads import lineage, view_or_404
from belvedere.views_api.scans import wait_everywhere
from belvedere.views_api.surface import ServedApp
from belvedere.views_api.windows import feed_key

__all__ = ["FEED_AFTER", "FROM", "LAST_EVENT_ID", "changes"]

#: Seconds between two reads of an idle changelog, and between two keep-alive comments.
IDLE_POLL = 0.2
KEEPALIVE = 15.0
#: Seconds a client refused for want of a feed slot is told to wait.
RETRY_AFTER = 5
#: How many records are first read back from a changelog's end to find where a token falls.
SEARCH_WINDOW = 1_000

#: partition -> (first offset of the checkpoint to read, changes of it already sent)
Resume = dict[int, tuple[int, int]]


FEED_AFTER = Param(
    "after",
    "the id of the last event received; or a consistency token: the feed starts with the "
    "changes of events after its position",
    schema=TOKEN,
)
FROM = Choice("from", "where a feed without an id starts", choices=("start", "end"), default="end")
LAST_EVENT_ID = Param("Last-Event-ID", "the id of the last event received", "header", TOKEN)


class BadResume(BadRequest):
    code = "bad-token"


def encode_resume(topic: str, resume: Resume) -> str:
    flat = [[topic, p, offset, sent] for p, (offset, sent) in sorted(resume.items())]
    return pack(flat)


def decode_resume(text: str, partitions: int) -> tuple[str, Resume]:
    try:
        flat = unpack(text)
        topics = {entry[0] for entry in flat}
        resume = {int(p): (int(offset), int(sent)) for _, p, offset, sent in flat}
        if len(topics) != 1 or set(resume) != set(range(partitions)):
            raise ValueError
        if any(offset < 0 or sent < 0 for offset, sent in resume.values()):
            raise ValueError
        return topics.pop(), resume
    except (ValueError, TypeError):
        raise BadResume(
            f"{text[:80]!r} is not a change feed id (use the id of the last event received)"
        ) from None


def _event(kind: str, data: bytes, event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n".encode() if event_id else b""
    return head + b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


async def _start(view: View, reader: Any, topic: str, from_start: bool) -> Resume:
    assert view.partitions is not None
    tps = [TP(topic, p) for p in range(view.partitions)]
    bounds = await reader.offsets(tps)
    return {tp.partition: (bounds[tp][0] if from_start else bounds[tp][1], 0) for tp in tps}


def _token_or(text: str) -> Positions:
    """``text`` as a consistency token; a BadResume naming both forms if it is neither."""
    try:
        return decode_token(text)
    except BadToken:
        raise BadResume(
            f"{text[:80]!r} is neither a change feed id (the id of the last event received) "
            "nor a consistency token"
        ) from None


Wanted = Mapping[tuple[str, int], int]
Bounds = Mapping[TP, tuple[int, int]]


class Poller:
    """A changelog's partition bounds, read by one task for every feed of it. A feed asking
    gets the bounds of a read started after it asked (so never older than what it saw),
    at most one read per ``interval``; with no feed asking, the task ends."""

    def __init__(self, reader: Any, interval: float) -> None:
        self.reader = reader
        self.interval = interval
        self.tps: set[TP] = set()
        self.feeds = 0
        self.polls = 0
        self._next: asyncio.Future[Bounds] | None = None
        self._task: asyncio.Task[None] | None = None
        self._last = -interval

    async def offsets(self, tps: Iterable[TP]) -> Bounds:
        wanted = list(tps)
        self.tps.update(wanted)
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        found = self._next
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        bounds = await asyncio.shield(found)
        return {tp: bounds[tp] for tp in wanted}

    async def _run(self) -> None:
        try:
            while self._next is not None:
                delay = self._last + self.interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                found, self._next = self._next, None
                self._last = time.monotonic()
                self.polls += 1
                try:
                    found.set_result(await self.reader.offsets(sorted(self.tps)))
                except Exception as exc:
                    found.set_exception(exc)
                    found.exception()  # each feed that waited gets it; none is left unread
        finally:
            self._task = None

    def read(self, ranges: Mapping[TP, tuple[int, int]]) -> AsyncIterator[Any]:
        return self.reader.read(ranges)


class Feeds:
    """This worker's change feeds: how many are open, and the poller of each changelog."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.pollers: dict[str, Poller] = {}
        #: Offset reads of pollers that have ended, for the total.
        self.past_polls = 0

    @property
    def polls(self) -> int:
        return self.past_polls + sum(p.polls for p in self.pollers.values())

    def join(self, topic: str, reader: Any) -> Poller:
        poller = self.pollers.get(topic)
        if poller is None:
            poller = self.pollers[topic] = Poller(reader, IDLE_POLL)
        poller.feeds += 1
        return poller

    def leave(self, topic: str, poller: Poller) -> None:
        poller.feeds -= 1
        if poller.feeds == 0 and self.pollers.get(topic) is poller:
            del self.pollers[topic]
            self.past_polls += poller.polls


_FEEDS = web.AppKey("belvedere.change_feeds", Feeds)


def feeds_of(app: ServedApp, web_app: web.Application) -> Feeds:
    found = web_app.get(_FEEDS)
    if found is None:
        found = web_app[_FEEDS] = Feeds(app.web_limits.max_change_feeds)
    return found


async def _after_token(
    app: ServedApp, view: View, reader: Any, topic: str, token: Positions
) -> Resume:
    """Where a feed given a consistency token starts (once the view has applied it), per
    partition: right after the last checkpoint that applied nothing at or past the token's
    position, so every later change is sent and none before it. A partition the token does
    not name starts at the end; one it names at offset 0, at the start."""
    assert view.partitions is not None
    topics = lineage(app, view)
    tps = [TP(topic, p) for p in range(view.partitions)]
    bounds = await reader.offsets(tps)
    resume: Resume = {}
    for tp in tps:
        wanted = topics.wanted(token, tp.partition)
        low, high = bounds[tp]
        if not wanted:
            resume[tp.partition] = (high, 0)
        elif all(o <= 0 for o in wanted.values()):
            resume[tp.partition] = (low, 0)
        else:
            resume[tp.partition] = (await _boundary(reader, tp, wanted, low, high), 0)
    return resume


async def _boundary(reader: Any, tp: TP, wanted: Wanted, low: int, high: int) -> int:
    """The offset right after the last checkpoint whose source offsets are all at or before
    ``wanted``, read back from ``high`` a window at a time (``low`` if there is none: a
    checkpoint with no changed rows writes nothing, and compaction removes superseded ends)."""
    first, window = high, SEARCH_WINDOW
    while first > low:
        start = max(low, first - window)
        ends = await checkpoint_ends(reader, tp, start, first)
        for after, source in reversed(ends):
            if all(source.get(k, 0) <= offset for k, offset in wanted.items()):
                return after
        first, window = start, window * 2
    return low


async def changes(app: ServedApp, request: web.Request) -> web.StreamResponse:
    feeds = feeds_of(app, request.app)
    if feeds.open >= feeds.limit:
        return error(
            503,
            "too-many-feeds",
            f"this worker serves {feeds.limit} change feeds at once: retry later, or another worker",
            {"Retry-After": str(RETRY_AFTER)},
        )
    feeds.open += 1
    try:
        return await _changes(app, request, feeds)
    finally:
        feeds.open -= 1


async def _changes(app: ServedApp, request: web.Request, feeds: Feeds) -> web.StreamResponse:
    view = view_or_404(app, request)
    if isinstance(view, web.Response):
        return view
    if view.partitions is None:
        return error(503, "not-serving", f"view {view.name!r} is not started", {"Retry-After": "1"})
    generation, topic = view.generation, view.changelog_topic
    given = LAST_EVENT_ID.text(request) or FEED_AFTER.text(request)
    origin = FROM.parse(request)
    resume: Resume | None = None
    token: Positions | None = None
    if given:
        try:
            named, resume = decode_resume(given, view.partitions)
        except BadResume:
            if LAST_EVENT_ID.text(request):
                raise
            token = _token_or(given)
            lineage(app, view).wanted(token, 0)  # a token of another topic is a 400
            named = topic
        if named != topic:
            return error(
                410,
                "rebuilt",
                f"view {view.name!r} was rebuilt since that id: start again without one",
            )
    reader = app.engine.requests_reader()
    if token is not None:
        refused = await wait_everywhere(app, request, view, token)
        if refused is not None:
            return refused
        resume = await _after_token(app, view, reader, topic, token)
    if resume is None:
        resume = await _start(view, reader, topic, origin == "start")
    poller = feeds.join(topic, reader)
    try:
        return await _serve(request, view, generation, topic, resume, poller)
    finally:
        feeds.leave(topic, poller)


async def _serve(
    request: web.Request, view: View, generation: int, topic: str, resume: Resume, poller: Poller
) -> web.StreamResponse:
    feed = checkpoints(poller, topic, {p: offset for p, (offset, _) in resume.items()})
    try:
        first = await anext(feed)  # a position the log no longer holds fails here, as a 410
    except Truncated as exc:
        await feed.aclose()
        return error(410, "truncated", f"{exc}: start again without an id")
    except BaseException:
        await feed.aclose()
        raise
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    try:
        await response.prepare(request)
        await _stream(view, generation, topic, resume, first, feed, response)
    except (ConnectionResetError, asyncio.CancelledError):
        pass  # the client went away
    except Truncated as exc:
        await response.write(_event("truncated", orjson.dumps({"detail": str(exc)})))
    finally:
        await feed.aclose()
    return response


async def _stream(
    view: View,
    generation: int,
    topic: str,
    resume: Resume,
    first: Checkpoint | None,
    feed: Any,
    response: web.StreamResponse,
) -> None:
    last_write = time.monotonic()
    found = first
    while True:
        if view.generation != generation:
            data = {"generation": view.generation, "detail": "reconnect without an id"}
            await response.write(_event("rebuilt", orjson.dumps(data)))
            return
        if found is None:
            if time.monotonic() - last_write >= KEEPALIVE:
                await response.write(b": keep-alive\n\n")
                last_write = time.monotonic()
        else:
            p = found.partition
            offset, sent = resume[p]
            skip = sent if found.start == offset else 0
            count = len(found.changes)
            chunks = []
            for i, (key, value) in enumerate(found.changes):
                if i < skip:
                    continue
                resume[p] = (found.start, i + 1) if i + 1 < count else (found.end, 0)
                named = feed_key(view, key)
                if named is None:
                    continue
                data = {
                    **named,
                    "value": None if value is None else orjson.Fragment(value),
                    "deleted": value is None,
                    "partition": p,
                }
                chunks.append(_event("change", orjson.dumps(data), encode_resume(topic, resume)))
            resume[p] = (found.end, 0)
            if chunks:
                await response.write(b"".join(chunks))
                last_write = time.monotonic()
        found = await anext(feed)
