"""What the engine's parts (rebuilds, standbys) may ask of the engine that runs them.

The projection engine makes a :class:`~belvedere.agents.rebuild.Rebuilder` and
:class:`~belvedere.agents.standby.Standbys` and drives them; they call back into it. Typed
by this Protocol, they need not import the engine's module, which imports theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from faust.types import TP

from belvedere.agents.partitions import Partitions
from belvedere.agents.projection import PartitionState, Projection
from belvedere.agents.surface import AgentsApp
from belvedere.tables.store import StoreBudget
from belvedere.tables.view import PartitionStatus, View

__all__ = ["Decode", "EngineSurface"]

#: Decodes a fetched record into its event (``BadEvent`` if it cannot).
Decode = Callable[[Any], Any]


class EngineSurface(Protocol):
    """The projection engine, as its parts see it."""

    app: AgentsApp
    #: Each view's projection, by view name.
    projections: dict[str, Projection]
    partitions: Partitions
    #: The memory budget of every view partition's store (set when the engine starts).
    budget: StoreBudget | None

    @property
    def should_stop(self) -> bool: ...

    async def sleep(self, n: float) -> None: ...

    def projections_of(self, topic: str) -> list[Projection]: ...

    def store_dir(self, view: View, generation: int) -> Path: ...

    async def declare_changelog(self, view: View, generation: int) -> None: ...

    async def restore(
        self, entries: Sequence[tuple[Projection, TP, int, PartitionStatus]]
    ) -> list[PartitionState]: ...

    async def fold(
        self, part: PartitionState, records: Sequence[Any], decode: Decode | None = None
    ) -> None: ...

    def count_fold(self, view: str, mode: str, seconds: float, events: int) -> None: ...
