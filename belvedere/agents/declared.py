"""The App as its declarations' readers see it: the aggregates and sagas it declared.

The test fixtures (:mod:`belvedere.agents.testing`) and the HTTP layer look aggregates and
sagas up by name. Their classes take the app themselves
(:class:`~belvedere.agents.surface.AgentsApp`), so these members live a step above it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from belvedere.agents.commands import CommandProjection
from belvedere.agents.sagas import SagaProjection
from belvedere.agents.surface import AgentsApp
from belvedere.streams.topics import EventTopic

__all__ = ["DeclaredApp"]


@runtime_checkable
class DeclaredApp(AgentsApp, Protocol):
    """An app with its declarations, by name."""

    #: The aggregate types declared with ``app.aggregate``, by type name.
    @property
    def aggregates(self) -> Mapping[str, CommandProjection]: ...

    #: The sagas declared with ``app.saga``, by name.
    @property
    def sagas(self) -> Mapping[str, SagaProjection]: ...

    @property
    def event_topics(self) -> Mapping[str, EventTopic]: ...
