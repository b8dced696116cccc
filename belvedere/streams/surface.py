"""The App as the streams layer's parts see it.

``belvedere.App`` imports the streams layer, so the streams layer cannot name it: its parts
take any object with the members below, which the App has (``tests/test_app.py`` checks).
Each member is here because a module of ``belvedere.streams`` uses it; those it reads of
the layers above (views, projections) are declared as the little it reads of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from faust.types import EventT, Message, ProducerT, TopicT, TransportT
from faust.types.agents import AgentManagerT
from faust.types.settings import Settings
from faust.types.transports import ConductorT

from belvedere.streams.security import BrokerSecurity

__all__ = ["DeadLetterSink", "Folded", "Folds", "Generational", "StreamsApp"]


class DeadLetterSink(Protocol):
    """Where a topic's undecodable messages go (``belvedere.streams.dead_letters``)."""

    async def send(self, message: Message, kind: str, reason: str) -> None: ...


class Generational(Protocol):
    """A view, for counting its dead letters: the generation it serves."""

    @property
    def generation(self) -> int: ...


class Folded(Protocol):
    """A projection, for listing the topics that may have dead letters."""

    @property
    def fold_topic(self) -> TopicT: ...


class Folds(Protocol):
    """The projection engine, for the same: its projections by view name."""

    @property
    def projections(self) -> Mapping[str, Folded]: ...


@runtime_checkable
class StreamsApp(Protocol):
    """What the streams layer uses of the app: faust's parts, and Belvedere's settings."""

    @property
    def conf(self) -> Settings: ...

    @property
    def producer(self) -> ProducerT: ...

    @property
    def transport(self) -> TransportT: ...

    @property
    def topics(self) -> ConductorT: ...

    @property
    def agents(self) -> AgentManagerT: ...

    @property
    def broker_security(self) -> BrokerSecurity: ...

    @property
    def event_topics(self) -> Mapping[str, TopicT]: ...

    @property
    def views(self) -> Mapping[str, Generational]: ...

    @property
    def engine(self) -> Folds: ...

    @property
    def dead_letters(self) -> DeadLetterSink: ...

    def topic(
        self, *topics: str, partitions: int | None = None, internal: bool = False
    ) -> TopicT: ...

    def create_event(self, key: Any, value: Any, headers: Any, message: Message) -> EventT: ...
