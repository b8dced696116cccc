"""The changelog of a view: its records, and how a partition is restored from them.

Each checkpoint produces one record per changed key (value, or None for a delete). Its
last record carries two headers: ``bv-end`` (the checkpoint is complete) and
``bv-source`` (the source offsets the state reflects after it). A restore applies records
only up to the last complete checkpoint; records after it belong to a checkpoint that did
not finish (a crash between the changelog and the local write) and are dropped, because
their source events will be processed again from the offsets the restore ends at.

Dropped records stay in the log, so the restoring worker writes those keys again (with
their restored values) in a repair checkpoint before anything else: a later restore then
applies the stale records and, before the next end marker, their corrections. A
checkpoint is written locally first, with its keys marked pending until the changelog
acknowledges it, so a crash between the two is repaired the same way on restart; if the
checkpoint did reach the log whole, the restore finds it there and the rows need nothing.

If compaction removed a key's last complete value in favour of a dropped record, the
repair would write the wrong value; changelog topics therefore carry
``min.compaction.lag.ms`` (``CHANGELOG_CONFIG``), far longer than a restart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from belvedere.tables.store import PartitionStore
from belvedere.tables.view import View

__all__ = [
    "CHANGELOG_CONFIG",
    "HEADER_END",
    "HEADER_REPAIR",
    "HEADER_RESET",
    "HEADER_SOURCE",
    "RESET_KEY",
    "Restorer",
    "changelog_records",
    "header",
    "reset_epoch",
]

HEADER_END = "bv-end"
HEADER_SOURCE = "bv-source"
HEADER_RESET = "bv-reset"
#: On the end of a checkpoint that only undoes an unfinished one before it.
HEADER_REPAIR = "bv-repair"
#: The key of the record a reset writes first in each changelog partition.
RESET_KEY = b"__belvedere_reset__"
#: Keys an empty store's restore keeps in memory before it reads existence from the store.
PRESENT_LIMIT = 2_000_000
CHANGELOG_CONFIG = {"min.compaction.lag.ms": str(10 * 60 * 1000)}

Offsets = Mapping[tuple[str, int], int]
Headers = Sequence[tuple[str, bytes]]


def encode_offsets(offsets: Offsets) -> bytes:
    return orjson.dumps(
        [[topic, partition, offset] for (topic, partition), offset in offsets.items()]
    )


def decode_offsets(data: bytes) -> dict[tuple[str, int], int]:
    return {(topic, partition): offset for topic, partition, offset in orjson.loads(data)}


def changelog_records(
    rows: Mapping[bytes, bytes | None], source_offsets: Offsets, *, repair: bool = False
) -> list[tuple[bytes, bytes | None, list[tuple[str, bytes]]]]:
    """(key, value, headers) for each changed row; the last one closes the checkpoint.

    A ``repair`` checkpoint only puts back values that an unfinished checkpoint before it
    overwrote: it changes nothing a reader of complete checkpoints saw (a change feed
    skips both).
    """
    records: list[tuple[bytes, bytes | None, list[tuple[str, bytes]]]] = [
        (k, v, []) for k, v in rows.items()
    ]
    if records:
        key, value, _ = records[-1]
        headers = [(HEADER_END, b"1"), (HEADER_SOURCE, encode_offsets(source_offsets))]
        if repair:
            headers.append((HEADER_REPAIR, b"1"))
        records[-1] = (key, value, headers)
    return records


def reset_epoch(record: Any) -> bytes | None:
    """The epoch a reset marker record names, or None for any other record."""
    return header(record.headers, HEADER_RESET)


def header(headers: Headers | None, name: str) -> bytes | None:
    for key, value in headers or ():
        if key == name:
            return bytes(value)
    return None


class Restorer:
    """Applies a partition's changelog records, in offset order, to its store."""

    def __init__(self, view: View, store: PartitionStore) -> None:
        self.view = view
        self.store = store
        self.pending: dict[bytes, bytes | None] = {}
        self.applied = 0
        self.dropped = 0
        self._index_values = view.indexer()
        # Into an empty store without indexes, which keys exist is known without reading
        # them back (a third of a restore's time), up to a bound on memory.
        fresh = self._index_values is None and store.count() == 0
        self._present: set[bytes] | None = set() if fresh else None
        # Rows written locally whose checkpoint may have reached the log before a crash.
        self._unconfirmed = set(store.pending_keys())

    def feed(self, records: Iterable[Any]) -> None:
        """Records with ``.offset``, ``.key``, ``.value``, ``.headers``."""
        pending = self.pending
        for record in records:
            headers = record.headers
            if not headers:  # most records: a row of a checkpoint that goes on
                pending[bytes(record.key)] = record.value and bytes(record.value)
                continue
            epoch = header(headers, HEADER_RESET)
            if epoch is not None:
                self.store.set_epoch(epoch)
                continue
            pending[bytes(record.key)] = record.value and bytes(record.value)
            if header(headers, HEADER_END) is not None:
                source = header(headers, HEADER_SOURCE)
                self._commit(decode_offsets(source) if source else {}, record.offset)
                pending = self.pending

    def _commit(self, source_offsets: Offsets, changelog_offset: int) -> None:
        if self._present is not None:
            index_changes, delta = {}, self._count_change()
        else:
            index_changes, delta = self.store.plan(self.pending, self._index_values)
        self.store.write(self.pending, index_changes, delta, source_offsets, changelog_offset)
        if self._unconfirmed:
            # The log holds a complete checkpoint of these rows: writing them again would
            # show a change feed the same change twice.
            confirmed = self._unconfirmed.intersection(self.pending)
            self.store.confirm(None, confirmed)
            self._unconfirmed -= confirmed
        self.applied += len(self.pending)
        self.pending = {}

    def _count_change(self) -> int:
        present = self._present
        assert present is not None
        delta = 0
        for key, value in self.pending.items():
            if value is None:
                if key in present:
                    present.discard(key)
                    delta -= 1
            elif key not in present:
                present.add(key)
                delta += 1
        if len(present) > PRESENT_LIMIT:
            self._present = None
        return delta

    def finish(self) -> set[bytes]:
        """Drop the records of an unfinished checkpoint; returns their keys, which the
        caller must write again with their restored values (see the module docstring)."""
        dropped = set(self.pending)
        self.dropped = len(dropped)
        self.pending = {}
        return dropped
