"""The correlation index: every event of a flow, across topics, by correlation id.

``app.trace_flows(*topics)`` (every event topic declared so far, by default) copies each event
of those topics into the trace inbox, keyed by its correlation id. The view ``trace``
then holds, per flow, where each event is (topic, partition, offset), what it is, when,
and what caused it. ``GET /trace/{correlationId}`` answers a flow in causal order.
Commands are events on their command topics, so a flow reads
command -> events -> saga command -> events ...

Tracing doubles the writes of the traced topics (each event is copied once), so it is
opt-in. A flow keeps its first ``max_events`` events; the row says if more were dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from belvedere.agents.engine import origin_of
from belvedere.agents.projection import Handler, Projection, by_correlation
from belvedere.streams.converters import format_timestamp
from belvedere.streams.records import Event
from belvedere.streams.topics import EventTopic
from belvedere.tables.view import View

__all__ = ["TraceProjection", "causal_order"]


class TraceProjection(Projection):
    not_rebuildable = "the index of several topics is not replayed by a rebuild yet"

    def __init__(
        self, sources: Sequence[EventTopic], view: View, inbox: EventTopic, max_events: int
    ) -> None:
        super().__init__(view=view, **by_correlation(sources, inbox))
        self.max_events = max_events
        handler = Handler(self._record, False, "trace")
        for topic in sources:
            for cls in topic.event_types:
                self.handlers[cls] = handler

    def _record(self, txn: Any, event: Event) -> None:
        meta = event.meta
        row = txn.get(meta.correlation_id) or {
            "correlationId": meta.correlation_id,
            "events": [],
            "dropped": 0,
        }
        if any(e["eventId"] == meta.event_id for e in row["events"]):
            return  # the same event published twice (an at-least-once producer)
        row = dict(row)
        if len(row["events"]) >= self.max_events:
            row["dropped"] += 1
        else:
            found = origin_of(txn.record)
            (topic, partition), offset = found if found is not None else (("?", -1), -1)
            row["events"] = [
                *row["events"],
                {
                    "eventId": meta.event_id,
                    "eventType": meta.event_type,
                    "kind": event.kind,
                    "causationId": meta.causation_id,
                    "producer": meta.producer,
                    "timestamp": format_timestamp(meta.timestamp),
                    "topic": topic,
                    "partition": partition,
                    "offset": offset,
                },
            ]
        txn[meta.correlation_id] = row


def causal_order(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each event after the one that caused it; siblings, and separate roots, by time."""
    by_time = sorted(events, key=lambda e: (e["timestamp"], e["topic"], e["offset"]))
    known = {e["eventId"] for e in by_time}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for event in by_time:
        cause = event["causationId"]
        if cause not in known or cause == event["eventId"]:
            cause = None
        children.setdefault(cause, []).append(event)
    out: list[dict[str, Any]] = []
    placed: set[str] = set()
    stack = list(reversed(children.get(None, [])))
    while stack:
        event = stack.pop()
        if event["eventId"] in placed:
            continue
        placed.add(event["eventId"])
        out.append(event)
        stack.extend(reversed(children.get(event["eventId"], [])))
    return out + [e for e in by_time if e["eventId"] not in placed]  # a causation cycle
