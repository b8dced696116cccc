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

from collections.abc import Callable

from belvedere.views_api.surface import ServedApp

__all__ = ["event_check", "publishable_topics", "refused_topic"]


def _aggregate_topics(app: ServedApp) -> set[str]:
    return {
        name
        for projection in app.aggregates.values()
        for name in (projection.events_topic, projection.source.get_topic_name())
    }


def _owned_types(app: ServedApp) -> set[type]:
    owned: set[type] = set()
    for projection in app.aggregates.values():
        owned.update(projection.events.codec.types.values())
        owned.update(projection.aggregate.appliers)
    return owned


def refused_topic(app: ServedApp, name: str) -> str | None:
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


def event_check(app: ServedApp, name: str) -> Callable[[type], str | None]:
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


def publishable_topics(app: ServedApp) -> list[str]:
    return sorted(name for name in app.http_publishing if refused_topic(app, name) is None)
