"""faust's partition assignor, with a joining worker given its share of partitions.

With standby replicas (which Belvedere requires: they tell every worker where each view
partition lives), faust lets each worker keep up to ceil(partitions / workers) active
partitions. A worker joining a group whose workers each hold that many gets none: with 4
partitions, workers holding 2 and 2 keep them when a third joins, which then serves
nothing while the others carry the load (faust-streaming issue 93; its fix, PR 97, covers
only groups without standbys). Here, before faust assigns, each worker under
floor(partitions / workers) is given partitions up to it: unserved ones first, then ones
taken from the workers holding the most, preferring ones it keeps a standby of (a warm
takeover). Nothing else moves; faust assigns the rest, and the standbys, as before.
"""

from __future__ import annotations

from collections.abc import MutableMapping

from faust.assignor.client_assignment import CopartitionedAssignment

from belvedere.compat.faust import GroupAssignor, PartitionAssignor

__all__ = ["BalancedCopartitionedAssignor", "BalancedPartitionAssignor"]


class BalancedCopartitionedAssignor(GroupAssignor):
    """One copartitioned group's assignment, every worker given at least its floor share."""

    def get_assignment(self) -> MutableMapping[str, CopartitionedAssignment]:
        if self.replicas:  # without standbys faust trims to the floor itself
            self._share_out()
        return super().get_assignment()

    def _share_out(self) -> None:
        """Move partitions to each worker under its floor share, the emptiest first: one
        nobody serves, else one taken from a worker over its floor (the one holding the
        most); of those, one it keeps a standby of, if any. Moved here, not left free:
        faust hands a free partition to its standby first, wherever that is."""
        clients = list(self.clients.values())
        floor = self.min_capacity
        free = set(range(self.num_partitions)).difference(*(c.actives for c in clients))
        for needy in sorted(clients, key=lambda c: len(c.actives)):
            while len(needy.actives) < floor:
                owner, partition = self._next_for(needy, free, clients, floor)
                if partition is None:
                    return
                if owner is None:
                    free.discard(partition)
                else:
                    owner.actives.discard(partition)
                needy.actives.add(partition)
                needy.standbys.discard(partition)

    @staticmethod
    def _next_for(
        needy: CopartitionedAssignment,
        free: set[int],
        clients: list[CopartitionedAssignment],
        floor: int,
    ) -> tuple[CopartitionedAssignment | None, int | None]:
        if free:
            return None, min(free & needy.standbys, default=min(free))
        donors = [c for c in clients if len(c.actives) > floor and c is not needy]
        if not donors:
            return None, None
        most = max(len(c.actives) for c in donors)
        richest = [c for c in donors if len(c.actives) == most]
        for donor in richest:
            if donor.actives & needy.standbys:
                return donor, min(donor.actives & needy.standbys)
        return richest[0], max(richest[0].actives)


class BalancedPartitionAssignor(PartitionAssignor):
    """faust's assignor, with :class:`BalancedCopartitionedAssignor` for each group."""

    group_assignor = BalancedCopartitionedAssignor
