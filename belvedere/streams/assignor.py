"""faust's partition assignor, with a joining worker given its share of partitions.

With standby replicas (which Belvedere requires: they tell every worker where each view
partition lives), faust lets each worker keep up to ceil(partitions / workers) active
partitions. A worker joining a group whose workers each hold that many gets none: with 4
partitions, workers holding 2 and 2 keep them when a third joins, which then serves
nothing while the others carry the load (faust-streaming issue 93; its fix, PR 97, covers
only groups without standbys). Here, before faust assigns, just enough partitions are
taken from the workers holding the most to bring every worker up to
floor(partitions / workers), preferring ones a needy worker keeps a standby of (faust
hands a freed partition to its standby first, so the takeover is warm). Nothing else
moves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, MutableMapping
from typing import Any

from faust.assignor import partition_assignor
from faust.assignor.client_assignment import CopartitionedAssignment
from faust.assignor.copartitioned_assignor import CopartitionedAssignor
from faust.assignor.partition_assignor import PartitionAssignor

__all__ = ["BalancedCopartitionedAssignor", "BalancedPartitionAssignor"]


class BalancedCopartitionedAssignor(CopartitionedAssignor):
    """One copartitioned group's assignment, every worker given at least its floor share."""

    def get_assignment(self) -> MutableMapping[str, CopartitionedAssignment]:
        if self.replicas:  # without standbys faust trims to the floor itself
            self._free_for_the_short()
        return super().get_assignment()

    def _free_for_the_short(self) -> None:
        clients = list(self._client_assignments.values())
        floor = self.min_capacity
        held = set().union(*(c.actives for c in clients))
        need = sum(max(0, floor - len(c.actives)) for c in clients)
        need -= self.num_partitions - len(held)  # free already
        short = [c for c in clients if len(c.actives) < floor]
        warm = set().union(*(c.standbys for c in short)) if short else set()
        while need > 0:
            most = max(len(c.actives) for c in clients)
            if most <= floor:
                return
            richest = [c for c in clients if len(c.actives) == most]
            client, partition = next(
                ((c, min(c.actives & warm)) for c in richest if c.actives & warm),
                (richest[0], max(richest[0].actives)),
            )
            client.actives.discard(partition)
            need -= 1


@contextlib.contextmanager
def _balanced_groups() -> Iterator[None]:
    """faust's assignor names its group assignor as a module global; for one assignment
    (synchronous, on the group leader), that name is ours."""
    original = partition_assignor.CopartitionedAssignor
    partition_assignor.CopartitionedAssignor = BalancedCopartitionedAssignor  # type: ignore[misc]
    try:
        yield
    finally:
        partition_assignor.CopartitionedAssignor = original  # type: ignore[misc]


class BalancedPartitionAssignor(PartitionAssignor):
    """faust's assignor, with :class:`BalancedCopartitionedAssignor` for each group."""

    def _perform_assignment(self, cluster: Any, member_metadata: Any) -> Any:
        with _balanced_groups():
            return super()._perform_assignment(cluster, member_metadata)
