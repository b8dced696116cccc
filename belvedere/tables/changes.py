"""A view's changes, read back from its changelog one complete checkpoint at a time.

A checkpoint's records are only a change once its end marker is in the log: records of
an unfinished checkpoint (a crash mid-write) are held back, and a repair checkpoint, which
puts back what such records overwrote, is dropped together with them (see
:mod:`belvedere.tables.changelog`). So a reader sees each change of the view once, in
offset order per partition, whoever wrote it and however often workers restarted.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from faust.types import TP

from belvedere.streams.readers import PartitionReader
from belvedere.tables.changelog import (
    HEADER_END,
    HEADER_REPAIR,
    HEADER_RESET,
    HEADER_SOURCE,
    decode_offsets,
    header,
)

__all__ = ["Checkpoint", "Truncated", "checkpoint_ends", "checkpoints"]


class Truncated(LookupError):
    """The changelog no longer holds the position asked for (compacted, expired or
    recreated): the reader must start again from a snapshot."""


@dataclass(frozen=True)
class Checkpoint:
    partition: int
    #: Offsets of its first record and past its last.
    start: int
    end: int
    #: (store key, stored JSON or None for a delete), in the order keys were first written.
    changes: list[tuple[bytes, bytes | None]]


async def checkpoints(
    reader: PartitionReader, topic: str, positions: Mapping[int, int]
) -> AsyncIterator[Checkpoint | None]:
    """Complete checkpoints of ``topic``'s partitions from ``positions`` on (each a
    checkpoint's first offset), for as long as the caller iterates; None each time the
    log has nothing new (the caller decides how long to wait)."""
    tps = {p: TP(topic, p) for p in positions}
    start = dict(positions)
    read_from = dict(positions)
    held: dict[int, dict[bytes, bytes | None]] = {p: {} for p in positions}
    while True:
        bounds = await reader.offsets(list(tps.values()))
        ranges = {}
        for p, tp in tps.items():
            low, high = bounds[tp]
            if start[p] < low or start[p] > high:
                raise Truncated(
                    f"{topic}[{p}] holds offsets [{low}, {high}); position {start[p]} is gone"
                )
            if high > read_from[p]:
                ranges[tp] = (read_from[p], high)
        if not ranges:
            yield None
            continue
        async with contextlib.aclosing(reader.read(ranges)) as batches:  # the caller may leave
            async for tp, batch in batches:  # at a yield: the read stops then, not when collected
                p = tp.partition
                pending = held[p]
                for record in batch:
                    headers = record.headers
                    if headers and header(headers, HEADER_RESET) is not None:
                        if not pending:
                            start[p] = record.offset + 1
                        continue
                    pending[bytes(record.key)] = (
                        None if record.value is None else bytes(record.value)
                    )
                    if headers and header(headers, HEADER_END) is not None:
                        repair = header(headers, HEADER_REPAIR) is not None
                        changes = [] if repair else list(pending.items())
                        yield Checkpoint(p, start[p], record.offset + 1, changes)
                        held[p] = pending = {}
                        start[p] = record.offset + 1
                read_from[p] = batch[-1].offset + 1


async def checkpoint_ends(
    reader: PartitionReader, tp: TP, start: int, stop: int
) -> list[tuple[int, dict[tuple[str, int], int]]]:
    """Each checkpoint ending in ``tp``'s offsets [start, stop): the offset right after it
    (where the next one starts) and the source offsets the view had applied then. Compaction
    may have removed some (a later change of the same key supersedes the record)."""
    found: list[tuple[int, dict[tuple[str, int], int]]] = []
    if start >= stop:
        return found
    async with contextlib.aclosing(reader.read({tp: (start, stop)})) as batches:
        async for _, batch in batches:
            for record in batch:
                headers = record.headers
                if headers and header(headers, HEADER_END) is not None:
                    source = header(headers, HEADER_SOURCE)
                    if source is not None:
                        found.append((record.offset + 1, decode_offsets(source)))
    return found
