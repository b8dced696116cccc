"""A view partition's transaction: the writes of one checkpoint, read back by later events.

Handlers read and write Python values; the transaction keeps the latest value per key
(reads see their own writes) and encodes each changed key once, when the checkpoint is
flushed. A savepoint per event lets a failing handler's writes be undone, so a bad event
goes to the dead letters without leaving half its effects behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from belvedere.streams.partitioner import explain_partition
from belvedere.tables.store import PartitionStore
from belvedere.tables.view import View

__all__ = ["PartitionTransaction", "WrongPartition"]

_DELETED = object()
_ABSENT = object()


class WrongPartition(ValueError):
    """A handler wrote a key that lives in another partition of the view; the message says
    which partitioner would explain the record's partition (its producer's, often)."""


class PartitionTransaction:
    def __init__(self, view: View, store: PartitionStore, partition: int, partitions: int) -> None:
        self.view = view
        self.store = store
        self.partition = partition
        self.partitions = partitions
        self._values: dict[Any, Any] = {}
        self._reads: dict[Any, Any] = {}
        self._undo: list[tuple[Any, Any]] | None = None
        #: The source record whose event is being handled (offset, headers ...).
        self.record: Any = None

    def __len__(self) -> int:
        return len(self._values)

    # -- the mapping handlers see ---------------------------------------------------------------

    def get(self, key: Any, default: Any = None) -> Any:
        value = self._values.get(key, _ABSENT)
        if value is _ABSENT:
            value = self._reads.get(key, _ABSENT)
            if value is _ABSENT:
                data = self.store.get(self.view.store_key(self.view.check_key(key)))
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
        self._values[self.view.check_key(key)] = self.view.check_value(value)

    def __delitem__(self, key: Any) -> None:
        self._write(key, _DELETED)

    def _write(self, key: Any, value: Any) -> None:
        values = self._values
        previous = values.get(key, _ABSENT)
        if previous is _ABSENT:
            self.view.check_key(key)
            owner = self.view.partition_of(key, self.partitions)
            if owner != self.partition:
                raise WrongPartition(self._wrong_partition(key, owner))
        if self._undo is not None:
            self._undo.append((key, previous))
        values[key] = value

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

    def rollback(self) -> None:
        """Undo the writes since the savepoint."""
        for key, previous in reversed(self._undo or ()):
            if previous is _ABSENT:
                self._values.pop(key, None)
            else:
                self._values[key] = previous
        self._undo = None

    def release(self) -> None:
        self._undo = None

    # -- flushing ----------------------------------------------------------------------------

    def encoded(self) -> dict[bytes, bytes | None]:
        """Each changed key once: store key -> encoded value (None for a delete)."""
        view = self.view
        return {
            view.store_key(key): None if value is _DELETED else view.encode_value(value)
            for key, value in self._values.items()
        }

    def clear(self) -> None:
        """Start the next checkpoint (after a flush); what was read stays cached."""
        for key, value in self._values.items():
            self._reads[key] = value
        self._values.clear()
        if len(self._reads) > 100_000:
            self._reads.clear()

    def items(self) -> Iterator[tuple[Any, Any]]:
        return ((k, v) for k, v in self._values.items() if v is not _DELETED)
