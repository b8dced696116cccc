"""The App as the projection engine and its kinds of projections see it.

``belvedere.App`` imports the agents layer, so the agents layer cannot name it: its parts
take any object with the members below, which the App has (``tests/test_app.py`` checks).
These are the members of :class:`~belvedere.streams.surface.StreamsApp` and those the
engine, rebuilds, standbys and the kinds of projections use besides, typed with the agents'
layer's types and those below it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from faust.types import TP, ConsumerT
from faust.types.assignor import PartitionAssignorT
from mode import Signal

from belvedere.agents.projection import Projection
from belvedere.agents.replay_processes import ReplayHelpers
from belvedere.streams.dead_letters import DeadLetters
from belvedere.streams.records import Event
from belvedere.streams.surface import StreamsApp
from belvedere.streams.tap import Tap
from belvedere.streams.topics import EventTopic
from belvedere.tables.view import View

__all__ = ["AgentsApp", "Projections"]


class Projections(Protocol):
    """The projection engine, as a reset sees it: the projection into each view."""

    @property
    def projections(self) -> Mapping[str, Projection]: ...


@runtime_checkable
class AgentsApp(StreamsApp, Protocol):
    """What the agents layer uses of the app, besides what the streams layer does."""

    @property
    def views(self) -> Mapping[str, View]: ...

    @property
    def engine(self) -> Projections: ...

    @property
    def consumer(self) -> ConsumerT: ...

    @property
    def assignor(self) -> PartitionAssignorT: ...

    #: True while a rebalance is under way (faust's).
    @property
    def rebalancing(self) -> bool: ...

    #: Stop the worker at the first handler error instead of dead-lettering.
    @property
    def strict(self) -> bool: ...

    #: What takes fetched batches of the engine's partitions (the engine sets itself).
    batch_tap: Tap | None

    @property
    def on_partitions_assigned(self) -> Signal[set[TP]]: ...

    @property
    def on_partitions_revoked(self) -> Signal[set[TP]]: ...

    @property
    def dead_letters(self) -> DeadLetters: ...

    #: The processes a rebuild replays history in (None: it replays in this one).
    @property
    def replay_helpers(self) -> ReplayHelpers | None: ...

    def topic_carrying(
        self, types: Sequence[type[Event]], what: str, *, choosing: str = ""
    ) -> EventTopic: ...
