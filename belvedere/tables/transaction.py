"""A view partition's transaction: the writes of one checkpoint, read back by later events.

Handlers read and write Python values; the transaction keeps the latest value per key
(reads see their own writes). A savepoint per event lets a failing handler's writes be
undone, so a bad event goes to the dead letters without leaving half its effects behind.

Each event's writes are encoded (and their index values taken) as the event ends, inside
its savepoint: a state the store cannot hold (an integer past 64 bits, an object JSON has no
form for, a row over the changelog's record size) fails that event, not the checkpoint.
A checkpoint that failed would fail again on every restart: a crash loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from belvedere.streams.partitioner import explain_partition
from belvedere.tables.store import PartitionStore
from belvedere.tables.view import View
from belvedere.tables.windows import window_store_key

__all__ = ["MAX_ROW_BYTES", "PartitionTransaction", "UnencodableState", "WrongPartition"]

_DELETED = object()
_ABSENT = object()


#: The largest encoded row: a changelog record is sent in a record batch of 512 KiB, with
#: its key and headers.
MAX_ROW_BYTES = 500 << 10


class WrongPartition(ValueError):
    """A handler wrote a key that lives in another partition of the view; the message says
    which partitioner would explain the record's partition (its producer's, often)."""


class UnencodableState(ValueError):
    """An event left a row the store cannot hold."""


class PartitionTransaction:
    def __init__(self, view: View, store: PartitionStore, partition: int, partitions: int) -> None:
        self.view = view
        self.store = store
        self.partition = partition
        self.partitions = partitions
        self._values: dict[Any, Any] = {}
        #: Each sealed value's encoding (None: deleted), reused by the checkpoint.
        self._encoded: dict[Any, bytes | None] = {}
        self._reads: dict[Any, Any] = {}
        #: Keys whose partition this checkpoint already checked: a windowed view writes a
        #: new row per window under the same key (hashing it was a tenth of a windowed fold).
        self._owned: set[Any] = set()
        self._undo: list[tuple[Any, Any, Any]] | None = None
        #: What to undo outside the rows when the event rolls back (a projection's buffers).
        self._undo_also: list[Callable[[str], None]] = []
        #: The source record whose event is being handled (offset, headers ...).
        self.record: Any = None
        self._encode_value = view.encode_value
        self._indexer = view.indexer()
        self._always_encodes = view.always_encodes
        #: A windowed view's keys are (key, start, end): its rows are routed by the key.
        windowed = view.window is not None
        self._store_key: Callable[[Any], bytes] = (
            partial(window_store_key, view) if windowed else view.store_key
        )
        self._route: Callable[[Any], Any] = _first if windowed else _same
        #: Bookkeeping rows written as bytes (a windowed partition's stream time), and
        #: those read or written before this checkpoint.
        self._raw: dict[bytes, bytes | None] = {}
        self._raw_reads: dict[bytes, bytes | None] = {}

    def __len__(self) -> int:
        return len(self._values)

    # -- the mapping handlers see ---------------------------------------------------------------

    def get(self, key: Any, default: Any = None) -> Any:
        value = self._values.get(key, _ABSENT)
        if value is _ABSENT:
            value = self._reads.get(key, _ABSENT)
            if value is _ABSENT:
                self.view.check_key(self._route(key))
                data = self.store.get(self._store_key(key))
                value = _DELETED if data is None else self.view.decode_value(data)
                self._reads[key] = value
        return default if value is _DELETED else value

    def __getitem__(self, key: Any) -> Any:
        value = self.get(key, _ABSENT)
        if value is _ABSENT:
            raise KeyError(key)
        return value

    def __contains__(self, key: Any) -> bool:
        return self.get(key, _ABSENT) is not _ABSENT

    def __setitem__(self, key: Any, value: Any) -> None:
        self._write(key, self.view.check_value(value))

    def put_local(self, key: Any, value: Any) -> None:
        """Write bookkeeping that belongs to this partition whatever its key hashes to
        (never read by key through the view's routing)."""
        key = self.view.check_key(key)
        value = self.view.check_value(value)
        self._remember(key, self._values.get(key, _ABSENT))
        self._values[key] = value

    def get_raw(self, store_key: bytes) -> bytes | None:
        """A bookkeeping row's bytes (see :meth:`put_raw`)."""
        if store_key in self._raw:
            return self._raw[store_key]
        if store_key not in self._raw_reads:
            self._raw_reads[store_key] = self.store.get(store_key)
        return self._raw_reads[store_key]

    def put_raw(self, store_key: bytes, data: bytes | None) -> None:
        """Write a bookkeeping row as bytes, under a store key no row of the view has; kept
        by the checkpoint and its changelog whatever the event does (not undone by a
        rollback)."""
        self._raw[store_key] = data

    def __delitem__(self, key: Any) -> None:
        self._write(key, _DELETED)

    def _write(self, key: Any, value: Any) -> None:
        values = self._values
        previous = values.get(key, _ABSENT)
        if previous is _ABSENT:
            routed = self.view.check_key(self._route(key))
            if routed not in self._owned:
                owner = self.view.partition_of(routed, self.partitions)
                if owner != self.partition:
                    raise WrongPartition(self._wrong_partition(routed, owner))
                self._owned.add(routed)
        if self._undo is None:
            self._encoded.pop(key, None)  # written outside an event: encoded at the checkpoint
        else:
            self._undo.append((key, previous, self._encoded.pop(key, _ABSENT)))
        values[key] = value

    def _remember(self, key: Any, previous: Any) -> None:
        if self._undo is None:
            self._encoded.pop(key, None)
        else:
            self._undo.append((key, previous, self._encoded.pop(key, _ABSENT)))

    def _wrong_partition(self, key: Any, owner: int) -> str:
        said = (
            f"view {self.view.name!r}: key {key!r} lives in partition {owner} "
            f"({self.view.partitioner}), but this event is in partition {self.partition}"
        )
        record = self.record
        if record is None or getattr(record, "partition", None) != self.partition:
            return f"{said}; key the source topic by the view's key"
        why = explain_partition(record.key, self.partition, self.partitions, self.view.partitioner)
        return f"{said}; {why}"

    # -- savepoints ----------------------------------------------------------------------------

    def savepoint(self) -> None:
        self._undo = []
        if self._undo_also:
            self._undo_also.clear()

    def on_rollback(self, undo: Callable[[str], None]) -> None:
        """Call ``undo(reason)`` if this event rolls back: what a projection keeps beside the
        rows for the event (events to append, commands to send) goes with it."""
        self._undo_also.append(undo)

    def rollback(self, reason: str = "rolled back") -> None:
        """Undo the writes since the savepoint."""
        for undo in reversed(self._undo_also):
            undo(reason)
        self._undo_also.clear()
        for key, previous, encoded in reversed(self._undo or ()):
            if previous is _ABSENT:
                self._values.pop(key, None)
            else:
                self._values[key] = previous
            if encoded is _ABSENT:
                self._encoded.pop(key, None)
            else:
                self._encoded[key] = encoded
        self._undo = None

    def release(self) -> None:
        """End the savepoint, encoding what the event wrote; UnencodableState (the
        savepoint still open, for the caller to roll back) if the store cannot hold it."""
        undo = self._undo
        if undo and not self._always_encodes:
            encoded, values = self._encoded, self._values
            for key, _, _ in undo:
                if key not in encoded:
                    try:  # the common case inline: a value that encodes, no indexes
                        data = self._encode_value(values[key])
                    except Exception:
                        data = None
                    if data is None or self._indexer is not None or len(data) > MAX_ROW_BYTES:
                        data = self._encode(key)  # a delete, an index, or why it failed
                    encoded[key] = data
        self._undo = None
        if self._undo_also:
            self._undo_also.clear()

    def _encode(self, key: Any) -> bytes | None:
        value = self._values[key]
        if value is _DELETED:
            return None
        try:
            data = self._encode_value(value)
            if self._indexer is not None:
                self._indexer(data)
        except Exception as exc:
            raise UnencodableState(
                f"view {self.view.name!r}: the row for key {key!r} cannot be stored: {exc}"
            ) from exc
        if len(data) > MAX_ROW_BYTES:
            raise UnencodableState(
                f"view {self.view.name!r}: the row for key {key!r} is {len(data)} bytes "
                f"encoded, over the limit of {MAX_ROW_BYTES}"
            )
        return data

    # -- flushing ----------------------------------------------------------------------------

    def encoded(self) -> dict[bytes, bytes | None]:
        """Each changed key once: store key -> encoded value (None for a delete)."""
        store_key, encoded = self._store_key, self._encoded
        rows = {
            store_key(key): encoded[key] if key in encoded else self._encode(key)
            for key in self._values
        }
        if self._raw:
            rows.update(self._raw)
        return rows

    def clear(self) -> None:
        """Start the next checkpoint (after a flush). What it wrote stays cached for reads,
        and only that: hot keys are written every checkpoint, and a cache of everything ever
        read held ~100,000 decoded rows per partition at a million keys."""
        self._owned.clear()
        self._reads = self._values
        self._values = {}
        self._encoded.clear()
        # the same for bookkeeping rows: a sliding window has one, so keeping every one
        # ever read or written would grow with the stream
        self._raw_reads = self._raw
        self._raw = {}

    def items(self) -> Iterator[tuple[Any, Any]]:
        return ((k, v) for k, v in self._values.items() if v is not _DELETED)


def _same(key: Any) -> Any:
    return key


def _first(key: tuple[Any, ...]) -> Any:
    return key[0]
