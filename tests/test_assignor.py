"""A worker joining a group gets its share of partitions (faust-streaming issue 93), with
faust's own assignor classes doing the rest; no broker needed."""

from __future__ import annotations

import random

import pytest
from faust.assignor.client_assignment import CopartitionedAssignment
from faust.assignor.copartitioned_assignor import CopartitionedAssignor

from belvedere.streams.assignor import BalancedCopartitionedAssignor, BalancedPartitionAssignor

TOPICS = {"orders"}


def group(*holdings: tuple[set[int], set[int]]) -> dict[str, CopartitionedAssignment]:
    """Each worker's (actives, standbys) before the rebalance; a new worker holds nothing."""
    return {
        f"w{i}": CopartitionedAssignment(actives=set(a), standbys=set(s), topics=set(TOPICS))
        for i, (a, s) in enumerate(holdings)
    }


def assign(kind: type[CopartitionedAssignor], before: dict, partitions: int) -> dict:
    assigned = kind(TOPICS, before, partitions, replicas=1).get_assignment()
    return {name: (sorted(a.actives), sorted(a.standbys)) for name, a in assigned.items()}


def test_faust_leaves_a_joining_worker_without_partitions() -> None:
    """The behaviour fixed here, so that this test notices if faust fixes it too."""
    joined = group(({0, 1}, {2, 3}), ({2, 3}, {0, 1}), (set(), set()))
    after = assign(CopartitionedAssignor, joined, 4)
    assert after["w2"][0] == []


@pytest.mark.parametrize(
    ("partitions", "holdings", "most"),
    [
        (4, [({0, 1}, {2, 3}), ({2, 3}, {0, 1}), (set(), set())], 2),  # 2 + 2, a third joins
        (6, [({0, 1}, {2, 3}), ({2, 3}, {4, 5}), ({4, 5}, {0, 1}), (set(), set())], 2),
        (12, [(set(range(6)), set(range(6, 12))), (set(range(6, 12)), set(range(6)))]
         + [(set(), set())] * 2, 3),  # two join at once
    ],
)  # fmt: skip
def test_every_worker_gets_its_floor_share_and_little_moves(
    partitions: int, holdings: list[tuple[set[int], set[int]]], most: int
) -> None:
    before = {name: set(a.actives) for name, a in group(*holdings).items()}
    after = assign(BalancedCopartitionedAssignor, group(*holdings), partitions)
    actives = {name: set(a) for name, (a, _) in after.items()}
    floor = partitions // len(holdings)
    assert sorted(p for a in actives.values() for p in a) == list(range(partitions))
    assert all(floor <= len(a) <= most for a in actives.values()), actives
    moved = sum(len(before[name] - actives[name]) for name in before)
    needed = sum(max(0, floor - len(before[name])) for name in before)
    assert moved == needed, (before, actives)  # only what the short workers needed
    for name, (a, s) in after.items():
        assert not set(a) & set(s), (name, a, s)  # a standby is never its own active


def test_a_freed_partition_goes_to_a_worker_keeping_its_standby() -> None:
    """The joining worker already restored partition 3 as a standby: that one moves."""
    joined = group(({0, 1}, {2}), ({2, 3}, {0}), (set(), {3}))
    after = assign(BalancedCopartitionedAssignor, joined, 4)
    assert after["w2"][0] == [3]
    assert after["w0"][0] == [0, 1]


def test_belvedere_apps_use_the_balanced_assignor() -> None:
    import belvedere

    app = belvedere.App("assignor-check", broker="embedded://", data_dir="/tmp/unused")
    assert isinstance(app.assignor, BalancedPartitionAssignor)


def test_from_any_valid_group_every_worker_gets_its_share() -> None:
    """2,000 seeded groups: a valid assignment among the old workers (each partition active
    on one, a standby on another), then one to three new workers join."""
    rng = random.Random(93)
    faust_short = 0
    for _ in range(2_000):
        partitions, old, new = rng.randint(2, 12), rng.randint(1, 4), rng.randint(1, 3)
        if partitions < old + new:
            continue
        holdings: list[tuple[set[int], set[int]]] = [(set(), set()) for _ in range(old + new)]
        for p in range(partitions):
            owner = rng.randrange(old)
            holdings[owner][0].add(p)
            if old > 1:
                holdings[rng.choice([c for c in range(old) if c != owner])][1].add(p)
        floor = partitions // (old + new)
        plain = assign(CopartitionedAssignor, group(*holdings), partitions)
        faust_short += min(len(a) for a, _ in plain.values()) < floor
        after = assign(BalancedCopartitionedAssignor, group(*holdings), partitions)
        actives = [p for a, _ in after.values() for p in a]
        assert sorted(actives) == list(range(partitions)), (holdings, after)
        assert min(len(a) for a, _ in after.values()) >= floor, (holdings, after)
        standbys = [p for _, s in after.values() for p in s]
        assert sorted(standbys) == list(range(partitions)), (holdings, after)  # one each
        assert all(not set(a) & set(s) for a, s in after.values()), after
    assert faust_short > 100  # what faust's own does from the same groups
