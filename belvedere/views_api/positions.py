"""Consistency tokens: how far a view has read, and waiting until it has read a write.

A token is a set of source positions ``{topic: {partition: next offset}}``, encoded as
opaque URL-safe text. ``POST /events/{topic}`` answers one for the offsets it wrote; every
read answers one (``X-Belvedere-Position``) for what it reflects. A read given
``?after=TOKEN`` waits, up to ``?timeout=`` seconds, until the view has applied every
position of the token that its partitions read (read-your-writes, monotonic reads).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from belvedere.tables.view import LocalPartition, PartitionStatus, View
from belvedere.views_api.errors import BadRequest
from belvedere.views_api.opaque import pack, unpack

__all__ = [
    "HEADER_LAG",
    "HEADER_LAST_EVENT",
    "HEADER_POSITION",
    "HEADER_SERVED_FROM",
    "BadToken",
    "Lineage",
    "Positions",
    "decode_token",
    "encode_token",
    "format_ms",
    "short_of",
    "staleness_headers",
    "wait_until_applied",
]

HEADER_POSITION = "X-Belvedere-Position"
HEADER_LAG = "X-Belvedere-Lag"
HEADER_LAST_EVENT = "X-Belvedere-Last-Event"
#: serving | recovering | standby: which copy of the partition answered.
HEADER_SERVED_FROM = "X-Belvedere-Served-From"

Positions = dict[str, dict[int, int]]


class BadToken(BadRequest):
    code = "bad-token"


def encode_token(positions: Mapping[str, Mapping[int, int]]) -> str:
    flat = sorted([t, p, o] for t, parts in positions.items() for p, o in parts.items())
    return pack(flat)


def decode_token(text: str) -> Positions:
    try:
        flat = unpack(text)
        out: Positions = {}
        for topic, partition, offset in flat:
            if not (isinstance(topic, str) and type(partition) is int and type(offset) is int) or (
                partition < 0 or offset < 0
            ):
                raise ValueError
            out.setdefault(topic, {})[partition] = offset
        return out
    except (ValueError, TypeError):
        raise BadToken(
            f"{text[:80]!r} is not a consistency token (take one from a response's "
            f"{HEADER_POSITION} header or from POST /events)"
        ) from None


@dataclass(frozen=True)
class Lineage:
    """How a view's partitions relate to the source topic its tokens are told in."""

    #: The topic whose offsets tokens name: the projection's source.
    source: str
    #: The topic the view's partitions follow (the source, or its re-keyed copy).
    folded: str

    @property
    def rekeyed(self) -> bool:
        """Every partition then holds a position for every source partition."""
        return self.folded != self.source

    def wanted(self, token: Positions, partition: int) -> dict[tuple[str, int], int]:
        """What ``partition`` must have applied to satisfy ``token``; BadToken if the token
        names a topic the view does not read."""
        foreign = set(token) - {self.source}
        if foreign:
            raise BadToken(
                f"the token names {sorted(foreign)}, but this view reads {self.source!r}: a "
                "view can wait only for positions of the topic it is projected from"
            )
        found = token.get(self.source, {})
        if self.rekeyed:
            return {(self.source, p): o for p, o in found.items()}
        return {(self.source, partition): found[partition]} if partition in found else {}

    def position(self, status: PartitionStatus | None, partition: int) -> Positions:
        """Where ``partition`` stands, as a token's positions."""
        if status is None:
            return {self.source: {}}
        if self.rekeyed:
            return {
                self.source: {p: o for (t, p), o in status.positions.items() if t == self.source}
            }
        found = status.positions.get((self.source, partition))
        return {self.source: {} if found is None else {partition: found}}

    def combine(self, positions: Iterable[Positions]) -> Positions:
        """The position of several partitions together: each one's own for a view that
        follows its source; the lowest of all for a re-keyed one (what every partition
        has applied)."""
        out: dict[int, int] = {}
        listed = [{int(p): o for p, o in found.get(self.source, {}).items()} for found in positions]
        if not self.rekeyed:
            for mine in listed:
                out.update(mine)
            return {self.source: out}
        every = set().union(*listed) if listed else set()
        for p in every:
            out[int(p)] = min(mine.get(p, 0) for mine in listed)
        return {self.source: out}


def short_of(status: PartitionStatus | None, wanted: Mapping[tuple[str, int], int]) -> bool:
    have = {} if status is None else status.positions
    return any(have.get(tp, -1) < offset for tp, offset in wanted.items())


async def wait_until_applied(
    view: View,
    wanted: Mapping[int, Mapping[tuple[str, int], int]],
    deadline: float,
    hurry: Callable[[int], None] | None = None,
) -> list[int]:
    """Wait until each partition has applied what ``wanted`` says, or the deadline;
    returns the partitions still short (empty: all there). ``hurry(partition)`` asks a
    partition still short to checkpoint as soon as it can, each time it is found short
    (a checkpoint may have come before the awaited events did)."""
    while True:
        short = [p for p, needs in wanted.items() if short_of(view.status.get(p), needs)]
        left = deadline - time.monotonic()
        if not short or left <= 0:
            return short
        if hurry is not None:
            for p in short:
                hurry(p)
        await view.wait_advanced(min(left, 0.5))


def staleness_headers(
    lineage: Lineage,
    partition: int,
    local: LocalPartition,
    status: PartitionStatus | None,
    lag: int | None,
) -> dict[str, str]:
    """Position, lag and last event time of the copy of ``partition`` that answered."""
    headers = {HEADER_SERVED_FROM: local.state}
    if local.state != "serving" or status is None:
        headers[HEADER_LAG] = str(local.behind)
        headers[HEADER_POSITION] = encode_token({lineage.source: {}})
        return headers
    headers[HEADER_POSITION] = _position_token(lineage, status, partition)
    headers[HEADER_LAG] = str(lag or 0)
    if status.last_event_ms is not None:
        headers[HEADER_LAST_EVENT] = format_ms(status.last_event_ms)
    return headers


#: The last token made for each (lineage, partition), and the positions it was made from:
#: a checkpoint replaces a partition's positions, so most reads reuse the token.
_TOKENS: dict[tuple[Lineage, int], tuple[object, str]] = {}


def _position_token(lineage: Lineage, status: PartitionStatus, partition: int) -> str:
    found = _TOKENS.get((lineage, partition))
    if found is not None and found[0] is status.positions:
        return found[1]
    token = encode_token(lineage.position(status, partition))
    _TOKENS[(lineage, partition)] = (status.positions, token)
    return token


@functools.lru_cache(maxsize=1024)
def format_ms(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
