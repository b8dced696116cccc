"""``POST /events/{topic}``: publishing events over HTTP, for clients that are not Kafka clients.

The body is one envelope or a JSON array of them. Each is validated as a consumer would
decode it (a bad one fails the whole request with a 400 naming it, and nothing is
written); ``eventId``, ``timestamp`` and ``producer`` are filled in when absent, and the
rest is written as given (a string ``eventVersion`` stays a string). Only topics and
event types declared publishable are accepted (:mod:`belvedere.views_api.publishing`):
others answer 403 ``not-publishable``, and nothing is written. The answer carries a consistency token of the offsets written: pass it as ``?after=`` to a
read to see the view with these events applied.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import orjson
from aiohttp import web

from belvedere.streams.converters import format_timestamp
from belvedere.streams.envelope import BadEvent
from belvedere.views_api.errors import error, json
from belvedere.views_api.params import Name
from belvedere.views_api.positions import HEADER_POSITION, encode_token
from belvedere.views_api.publishing import event_check, publishable_topics, refused_topic
from belvedere.views_api.surface import ServedApp

__all__ = ["TOPIC", "publish_events"]

#: Most events one request may publish.
MAX_EVENTS = 1000

TOPIC = Name("topic", "an event topic open to HTTP publishing", "path", known=publishable_topics)


def _completed(doc: Any, producer: str) -> Any:
    if isinstance(doc, dict):
        doc.setdefault("eventId", str(uuid.uuid4()))
        doc.setdefault("timestamp", format_timestamp(dt.datetime.now(dt.UTC)))
        doc.setdefault("producer", producer)
    return doc


async def publish_events(app: ServedApp, request: web.Request) -> web.StreamResponse:
    name = request.match_info[TOPIC.name]
    topic = app.event_topics.get(name)
    if topic is None:
        known = ", ".join(sorted(app.event_topics)) or "none"
        return error(404, "unknown-topic", f"no event topic {name!r} (event topics: {known})")
    refused = refused_topic(app, name)
    if refused is not None:
        return error(403, "not-publishable", refused)
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        return error(400, "bad-body", f"the body is not JSON: {exc}")
    docs = body if isinstance(body, list) else [body]
    if not docs or len(docs) > MAX_EVENTS:
        return error(400, "bad-body", f"send 1 to {MAX_EVENTS} envelopes, not {len(docs)}")
    prepared = []
    refused_event = event_check(app, name)
    for i, doc in enumerate(docs):
        where = f"event {i}: " if isinstance(body, list) else ""
        raw = orjson.dumps(_completed(doc, f"{app.conf.id}-http"))
        try:
            event = topic.codec.decode(raw)
            key = topic.key_for(event)
        except (BadEvent, ValueError, AttributeError) as exc:
            kind = exc.kind if isinstance(exc, BadEvent) else "no-key"
            return error(400, kind, f"{where}{exc}")
        refused = refused_event(type(event))
        if refused is not None:
            return error(403, "not-publishable", f"{where}{refused}")
        prepared.append((key, raw, topic.codec.headers(event, event.meta), event.meta.event_id))
    futures = [
        await app.producer.send(name, key, raw, topic.partition_for(key), None, headers)
        for key, raw, headers, _ in prepared
    ]
    sent = await asyncio.gather(*futures)
    positions: dict[str, dict[int, int]] = {name: {}}
    for metadata in sent:
        mine = positions[name]
        mine[metadata.partition] = max(mine.get(metadata.partition, 0), metadata.offset + 1)
    token = encode_token(positions)
    return json(
        {
            "token": token,
            "events": [
                {"eventId": event_id, "partition": m.partition, "offset": m.offset}
                for (_, _, _, event_id), m in zip(prepared, sent, strict=True)
            ],
        },
        201,
        {HEADER_POSITION: token},
    )
