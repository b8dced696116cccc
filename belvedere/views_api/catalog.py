"""``GET /views``: every view, where each of its partitions stands, across all workers.

Each worker knows its own partitions; the worker asked gathers the others' (``scope=local``)
and answers for the whole group. A worker that does not answer is listed under
``unreachable``, and its partitions are missing rather than guessed.

A view's ``deadLetters`` are the events its handlers failed on (in the generation it
serves), counted from the dead-letter topics, so they are the whole group's and survive
restarts: ``GET /dead-letters?view=`` lists them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from belvedere.agents.global_views import GlobalView
from belvedere.tables.view import View
from belvedere.views_api.errors import json
from belvedere.views_api.forwarding import ask_members, members_of, self_url
from belvedere.views_api.reads import lag_of, lineage
from belvedere.views_api.surface import ServedApp
from belvedere.views_api.windows import describe_window

__all__ = ["list_views", "local_views"]

logger = logging.getLogger(__name__)


def _partition(app: ServedApp, view: View, partition: int, now: float) -> dict[str, Any]:
    status = view.status[partition]
    store = view.stores.get(partition)
    topics = lineage(app, view)
    serving = status.state == "serving"
    return {
        "state": status.state,
        "generation": status.generation,
        "position": topics.position(status, partition)[topics.source],
        "lag": view.lag if isinstance(view, GlobalView) else lag_of(app, topics, partition, status),
        "lastEvent": status.last_event_ms,
        "rows": view.stored_rows(store) if serving and store is not None else None,
        "restore": {
            "done": status.restore_done,
            "total": status.restore_total,
            "rate": status.restore_rate(now),
            "eta": status.restore_eta(now),
        },
    }


def local_views(app: ServedApp) -> dict[str, Any]:
    """What this worker holds of each view."""
    now = time.monotonic()
    me = self_url(app)
    processed = app.engine.events_processed  # as belvedere_events_processed_total
    out = {}
    for name, view in app.views.items():
        out[name] = {
            "partitions": {
                p: {**_partition(app, view, p, now), "worker": me} for p in sorted(view.status)
            },
            "standbys": {p: {"lag": lag, "worker": me} for p, lag in view.standby_lag.items()},
            "eventsProcessed": processed.get(name, 0),
        }
    return out


def _sources(app: ServedApp, view: View) -> list[str]:
    if isinstance(view, GlobalView):
        return [view.topic.get_topic_name()]
    projection = app.engine.projections.get(view.name)
    if projection is None:
        return []
    return list(dict.fromkeys(t.get_topic_name() for t in projection.sources))


def _summed(values: list[Any]) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _state(view: View, partitions: dict[Any, Any], rebuild: dict[str, Any]) -> str:
    if rebuild.get("state") in ("rebuilding", "switching"):
        return "rebuilding"
    expected = view.partitions or 0
    serving = sum(1 for p in partitions.values() if p["state"] == "serving")
    return "serving" if expected and serving >= expected else "recovering"


async def list_views(app: ServedApp, request: web.Request) -> web.StreamResponse:
    if request.query.get("scope") == "local":
        return json({"views": local_views(app)})
    me = self_url(app)
    members: set[str] = {me}
    for view in app.views.values():
        members.update(members_of(app, lineage(app, view).folded))
    others = sorted(members - {me})
    parts = {me: local_views(app)}
    unreachable = []
    if others:
        asked = await ask_members(request, {m: "/views?scope=local" for m in others})
        for member, (status, body) in asked.items():
            if status == 200 and isinstance(body, dict):
                parts[member] = body["views"]
            else:
                unreachable.append(member)
    try:
        dead_letters = await app.dead_letters.by_view()
    except Exception as exc:  # the broker out of reach: the rest still answers
        logger.warning("GET /views: dead letters not counted: %r", exc)
        dead_letters = None
    views = []
    for name, view in sorted(app.views.items()):
        partitions: dict[str, Any] = {}
        standbys: dict[str, list[Any]] = {}
        processed = 0
        for part in parts.values():
            found = part.get(name, {})
            processed += found.get("eventsProcessed", 0)
            for p, info in found.get("partitions", {}).items():
                # during a rebalance two workers may list one partition: keep the serving one
                if str(p) not in partitions or info["state"] == "serving":
                    partitions[str(p)] = info
            for p, info in found.get("standbys", {}).items():
                standbys.setdefault(str(p), []).append(info)
        rebuild = app.engine.rebuilds.report(name)
        letters = None
        if dead_letters is not None:
            kinds = dead_letters.get(name, {})
            letters = {"total": sum(kinds.values()), "kinds": dict(kinds)}
        rows = [p["rows"] for p in partitions.values() if p["rows"] is not None]
        last = [p["lastEvent"] for p in partitions.values() if p["lastEvent"] is not None]
        views.append(
            {
                "name": name,
                "internal": view.internal,
                "sourceTopics": _sources(app, view),
                "eventsProcessed": processed,
                "lastEvent": max(last, default=None),
                "lag": _summed([p["lag"] for p in partitions.values()]),
                "generation": view.generation,
                "state": _state(view, partitions, rebuild),
                "keyType": view.key_type.__name__,
                "window": describe_window(view),
                "indexes": list(view.indexes),
                "partitionCount": view.partitions,
                "keys": sum(rows),
                "partitions": dict(sorted(partitions.items(), key=lambda kv: int(kv[0]))),
                "standbys": standbys,
                "rebuild": rebuild,
                "deadLetters": letters,
            }
        )
    return json({"views": views, "workers": sorted(parts), "unreachable": unreachable})
