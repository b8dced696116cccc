"""What ``POST /events/{topic}`` may publish: only what the app declared, never by default.

An HTTP client that may write is not trusted with every fact the app records. An event
topic is publishable over HTTP once declared with ``http_publish``: ``True`` (every event
type it carries) or a list of its event types. Two kinds stay refused (403) even then,
unless the declaration also says ``http_publish_owned=True``:

- an aggregate's topics: its commands go through ``POST /commands``, whose answer says
  what the aggregate decided; its events are written by its command handlers only;
- event types an aggregate owns (those its events topic carries, or that it applies),
  wherever they are carried: a forged ``OrderConfirmed`` would state a decision no
  aggregate made.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Publishing", "declared", "event_check", "publishable_topics", "refused_topic"]


@dataclass(frozen=True)
class Publishing:
    """One event topic's declaration."""

    #: The event classes that may be published (None: every one the topic carries).
    types: frozenset[type] | None
    #: Aggregates' topics and event types too.
    owned: bool


def declared(topic: Any, http_publish: bool | Sequence[type], owned: bool) -> Publishing | None:
    """The declaration ``app.event_topic(..., http_publish=, http_publish_owned=)`` makes
    (None: not publishable); a type the topic does not carry is a mistake."""
    if http_publish is False or http_publish is None:
        if owned:
            raise ValueError("http_publish_owned=True needs http_publish too")
        return None
    if http_publish is True:
        return Publishing(None, owned)
    carried = set(topic.codec.types.values())
    chosen = frozenset(http_publish)
    stray = sorted(getattr(t, "__name__", repr(t)) for t in chosen - carried)
    if stray or not chosen:
        raise ValueError(
            f"http_publish of {topic.get_topic_name()!r}: give True or event types it carries, "
            f"not {stray or 'none'}"
        )
    return Publishing(chosen, owned)


def _aggregate_topics(app: Any) -> set[str]:
    return {
        name
        for projection in app.aggregates.values()
        for name in (projection.events_topic, projection.source.get_topic_name())
    }


def _owned_types(app: Any) -> set[type]:
    owned: set[type] = set()
    for projection in app.aggregates.values():
        owned.update(projection.events.codec.types.values())
        owned.update(projection.aggregate.appliers)
    return owned


def refused_topic(app: Any, name: str) -> str | None:
    """Why nothing may be published to the event topic ``name`` over HTTP (None: some may)."""
    publishing = app.http_publishing.get(name)
    if publishing is None:
        return (
            f"{name!r} is not open to HTTP publishing: declare it with "
            "app.event_topic(..., http_publish=True) or a list of event types"
        )
    if not publishing.owned and name in _aggregate_topics(app):
        return (
            f"{name!r} is an aggregate's topic: send commands with POST /commands, or declare "
            "it with http_publish_owned=True to write it directly"
        )
    return None


def event_check(app: Any, name: str) -> Callable[[type], str | None]:
    """For a topic :func:`refused_topic` lets through: why an event of a class may not be
    published to it (None: it may)."""
    publishing = app.http_publishing[name]
    owned = set() if publishing.owned else _owned_types(app)

    def refused(cls: type) -> str | None:
        if publishing.types is not None and cls not in publishing.types:
            return f"{cls.__name__} is not among the event types {name!r} lets HTTP publish"
        if cls in owned:
            return (
                f"{cls.__name__} is an aggregate's event: only its command handlers emit it "
                "(declare the topic with http_publish_owned=True to publish it anyway)"
            )
        return None

    return refused


def publishable_topics(app: Any) -> list[str]:
    return sorted(name for name in app.http_publishing if refused_topic(app, name) is None)
