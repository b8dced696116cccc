"""Which generation of each view is live, which one is being rebuilt, and how far it got.

Every worker of an app shares one compacted, single-partition control topic
(``<app id>-belvedere-views``) and reads all of it. Two kinds of record live there:

- ``gen/<view>``: the view's live generation (``active``), the one being built
  (``building``) with the time it replays from, and the superseded one whose changelog is
  still to delete (``previous``). Writing it is how a rebuild starts and how it switches;
  it also says whether the operator accepts events failing under the new code, and why
  the switch was refused (``refused``), if it was.
- ``part/<view>/<partition>``: how far the owner of one partition got with a generation:
  ``replaying`` (with offsets), ``following`` (caught up, applying live events to both
  generations) or ``switched`` (serving the new one only). A record about an older
  generation than the one already known for the partition is ignored. It also carries the
  fingerprints of the projection code that folded the partition's generation (``codes``).

A generation's rows live in their own files (``views/<view>-g<N>/``) and changelog topic,
so building one never touches what the live one serves.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import orjson

__all__ = [
    "Generation",
    "Generations",
    "PartitionProgress",
    "control_topic",
    "decode_record",
    "gen_key",
    "part_key",
]


def control_topic(app_id: str) -> str:
    return f"{app_id}-belvedere-views"


@dataclass(frozen=True)
class Generation:
    """A view's generations, as the control topic last said."""

    active: int = 1
    building: int | None = None
    #: Source timestamp (ms) the building generation replays from (None: the beginning).
    from_timestamp: int | None = None
    previous: int | None = None
    #: The highest generation ever started, so an abandoned one's number is not reused.
    highest: int = 1
    #: Switch even though events failed under the new code (the operator accepted them).
    accept_failures: bool = False
    #: Why the coordinator did not switch to ``building`` (None: it was not refused).
    refused: str | None = None

    def start(self, from_timestamp: int | None, accept_failures: bool = False) -> Generation:
        new = max(self.highest, self.active) + 1
        return replace(
            self,
            building=new,
            from_timestamp=from_timestamp,
            highest=new,
            accept_failures=accept_failures,
            refused=None,
        )

    def accepted(self) -> Generation:
        return replace(self, accept_failures=True, refused=None)

    def refuse(self, reason: str) -> Generation:
        return replace(self, refused=reason)

    def switched(self) -> Generation:
        assert self.building is not None
        return Generation(self.building, None, None, self.active, self.highest)

    def cleaned(self) -> Generation:
        return replace(self, previous=None)

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))


@dataclass(frozen=True)
class PartitionProgress:
    """One view partition's progress with a generation (see the module docstring)."""

    generation: int
    state: str  # replaying | following | switched
    start: int = 0
    offset: int = 0
    end: int = 0
    rate: float = 0.0
    #: Fingerprints of the projection code that folded into this partition's generation.
    codes: tuple[str, ...] = ()

    @property
    def done(self) -> int:
        return max(self.offset - self.start, 0)

    @property
    def total(self) -> int:
        return max(self.end - self.start, 0)

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))


def gen_key(view: str) -> bytes:
    return f"gen/{view}".encode()


def part_key(view: str, partition: int) -> bytes:
    return f"part/{view}/{partition}".encode()


def decode_record(key: bytes, value: bytes | None) -> tuple[str, str, int | None, Any]:
    """(kind, view, partition, decoded value) of a control record."""
    parts = key.decode().split("/")
    data = None if value is None else orjson.loads(value)
    if parts[0] == "gen":
        return "gen", parts[1], None, None if data is None else Generation(**data)
    if parts[0] == "part":
        if data is not None:
            data["codes"] = tuple(data.get("codes", ()))
        progress = None if data is None else PartitionProgress(**data)
        return "part", parts[1], int(parts[2]), progress
    raise ValueError(f"not a view control record: {key!r}")


@dataclass
class Generations:
    """The control topic folded: every view's generations and partition progress."""

    views: dict[str, Generation] = field(default_factory=dict)
    progress: dict[str, dict[int, PartitionProgress]] = field(default_factory=dict)

    def of(self, view: str) -> Generation:
        return self.views.get(view, Generation())

    def apply(self, records: Iterable[tuple[bytes, bytes | None]]) -> set[str]:
        """Fold control records in; returns the views whose generation record changed."""
        changed = set()
        for key, value in records:
            kind, view, partition, data = decode_record(key, value)
            if kind == "gen":
                if data is None:
                    self.views.pop(view, None)
                else:
                    self.views[view] = data
                changed.add(view)
            elif data is None:
                self.progress.get(view, {}).pop(partition, None)  # type: ignore[arg-type]
            else:
                found = self.progress.setdefault(view, {})
                known = found.get(partition)  # type: ignore[arg-type]
                if known is None or known.generation <= data.generation:
                    found[partition] = data  # type: ignore[index]
        return changed

    def all_in(self, view: str, generation: int, partitions: int, states: set[str]) -> bool:
        """Whether every partition reported one of ``states`` for ``generation``."""
        found = self.progress.get(view, {})
        return all(
            (p := found.get(partition)) is not None
            and p.generation == generation
            and p.state in states
            for partition in range(partitions)
        )

    def codes(self, view: str, generation: int) -> set[str]:
        """The projection code fingerprints the partitions report for ``generation``."""
        return {
            code
            for p in self.progress.get(view, {}).values()
            if p.generation == generation
            for code in p.codes
        }

    def report(self, view: str, partitions: int) -> dict[str, Any]:
        """A rebuild's state for people: what the HTTP layer and the CLI show."""
        gen = self.of(view)
        target = gen.building if gen.building is not None else gen.previous and gen.active
        found = self.progress.get(view, {})
        rows = []
        for partition in range(partitions):
            p = found.get(partition)
            current = p is not None and p.generation == target
            rows.append(
                {
                    "partition": partition,
                    "state": p.state if current and p is not None else "waiting",
                    "done": p.done if current and p is not None else 0,
                    "total": p.total if current and p is not None else 0,
                    "rate": p.rate if current and p is not None else 0.0,
                }
            )
        if gen.building is not None:
            state = "refused" if gen.refused else "rebuilding"
        elif gen.previous is not None:
            state = "switching"
        else:
            state = "idle"
        done = sum(r["done"] for r in rows)
        total = sum(r["total"] for r in rows)
        rate = sum(r["rate"] for r in rows)
        return {
            "view": view,
            "state": state,
            "generation": gen.active,
            "building": gen.building,
            "fromTimestamp": gen.from_timestamp,
            "done": done,
            "total": total,
            "rate": rate,
            "eta": (total - done) / rate if rate > 0 and total > done else (0.0 if total else None),
            "partitions": rows,
            "acceptFailures": gen.accept_failures,
            "refused": gen.refused,
            "code": sorted(self.codes(view, gen.building)) if gen.building is not None else [],
        }
