"""Reading a windowed view's rows from one partition's store, by the layout of
:mod:`belvedere.tables.window_keys`.

A key's windows are one prefix ordered by start, so a key's reads seek to that prefix and
stop at the first window starting at or after the range's end: they never read another
key's rows. The scan for one window start across keys has no index to use; it seeks once
per key (to that start within the key's windows, then past the key), so a key with many
windows costs one seek, not a read of each.

Each read yields :class:`WindowRow`: the key's store bytes, the window ``[start, end)`` in
milliseconds since the epoch, and the row's stored JSON. Rows that are not a window's (a
partition's bookkeeping beside them) are never read as one. Given a ``horizon``, windows
ending at or before it (past retention, not deleted yet) are left out.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from belvedere.tables.store import PartitionStore
from belvedere.tables.window_keys import SEPARATOR, parse_window_key, window_key, windows_prefix

__all__ = ["WindowRow", "key_windows", "windows_starting"]

#: The earliest and latest instants a window key holds.
EARLIEST = -(1 << 63)
LATEST = (1 << 63) - 1
#: Past every window of a key: a window key is the key's bytes, the separator and 16 bytes.
_PAST_WINDOWS = SEPARATOR + b"\xff" * 16 + b"\x00"


class WindowRow(NamedTuple):
    key: bytes
    start: int
    end: int
    value: bytes


def key_windows(
    store: PartitionStore,
    key: bytes,
    start: int = EARLIEST,
    end: int = LATEST,
    *,
    longest: int | None = None,
    horizon: int | None = None,
) -> list[WindowRow]:
    """The windows of ``key`` (its store bytes) overlapping ``[start, end)``, by start.

    ``longest``: no window is longer than that (ms), so none starting before
    ``start - longest`` can overlap and the read seeks past them; None reads the key's
    windows from its first (sessions have no bound)."""
    prefix = windows_prefix(key)
    seek = prefix
    if longest is not None and start > EARLIEST + longest:
        seek = window_key(key, start - longest, EARLIEST)
    if horizon is not None:
        start = max(start, horizon)
    found, length = [], len(prefix) + 16
    for row_key, value in store.rows(seek, prefix=prefix):
        if len(row_key) != length:
            continue  # not a window of this key
        _, first, last = parse_window_key(row_key)
        if first >= end:
            break
        if last > start:
            found.append(WindowRow(key, first, last, value))
    return found


def _starting(store: PartitionStore, start: int, after: bytes | None) -> Iterator[WindowRow]:
    """One partition's windows starting at ``start``, one per key in key order, for keys
    past ``after`` (store bytes)."""
    seek = b"" if after is None else after + _PAST_WINDOWS
    while True:
        first = next(store.rows(seek), None)
        if first is None:
            return
        try:
            key, _, _ = parse_window_key(first[0])
        except ValueError:  # not a window's row: none of this layout's business
            seek = first[0] + b"\x00"
            continue
        prefix = windows_prefix(key)
        found = next(store.rows(window_key(key, start, EARLIEST), prefix=prefix), None)
        if found is not None:
            _, first_start, first_end = parse_window_key(found[0])
            if first_start == start:
                yield WindowRow(key, first_start, first_end, found[1])
        seek = key + _PAST_WINDOWS


def windows_starting(
    stores: Sequence[PartitionStore],
    start: int,
    limit: int,
    after: bytes | None = None,
    *,
    horizons: Sequence[int | None] | None = None,
) -> tuple[list[WindowRow], bool]:
    """Every key's window starting at ``start`` across ``stores`` (partitions), in key
    order past the key ``after`` (store bytes): at most ``limit``, and whether there are
    more. A key has one window per start, whatever the kind: the shortest is taken if the
    store holds several. ``horizons``: each store's (None: keep every window)."""
    kept = horizons or [None] * len(stores)
    streams = [
        _kept(_starting(store, start, after), h) for store, h in zip(stores, kept, strict=True)
    ]
    merged = heapq.merge(*streams, key=_store_order)
    page = list(itertools.islice(merged, limit + 1))
    return page[:limit], len(page) > limit


def _kept(rows: Iterator[WindowRow], horizon: int | None) -> Iterator[WindowRow]:
    return rows if horizon is None else (row for row in rows if row.end > horizon)


def _store_order(row: WindowRow) -> bytes:
    """A key's place among a store's windows: after every longer key it begins (``ab``
    before ``a``: 0xFF sorts after every byte of a text key)."""
    return windows_prefix(row.key)
