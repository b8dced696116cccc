"""What an event topic declares about ``POST /events/{topic}``: the ``http_publish`` and
``http_publish_owned`` keywords of ``app.event_topic``, checked as the topic is declared.

The App keeps one :class:`Publishing` per open topic; :mod:`belvedere.views_api.publishing`
applies them to each request. They live apart so that the HTTP layer's view of the app
(:mod:`belvedere.views_api.surface`) can name them without importing the checks that
take the app.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from belvedere.streams.topics import EventTopic

__all__ = ["Publishing", "declared"]


@dataclass(frozen=True)
class Publishing:
    """One event topic's declaration."""

    #: The event classes that may be published (None: every one the topic carries).
    types: frozenset[type] | None
    #: Aggregates' topics and event types too.
    owned: bool


def declared(
    topic: EventTopic, http_publish: bool | Sequence[type], owned: bool
) -> Publishing | None:
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
