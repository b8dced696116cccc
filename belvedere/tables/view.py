"""A view: a named, typed, partitioned read model, stored per partition in RocksDB.

The view decides how keys and values become bytes:

- a key has two encodings. Its *wire* bytes (``str(key)`` as UTF-8, what producers use
  as the Kafka key) decide its partition. Its *store* bytes sort in key order: UTF-8 for
  ``str``, and an order-preserving 8-byte form for ``int``, so that scans run in key order.
- a value is encoded once, with orjson, through the same converters as event fields
  (a Record, a number, a Decimal, a dict ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import struct
import sys
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextvars import ContextVar, Token
from dataclasses import FrozenInstanceError, dataclass, field
from typing import Any, ClassVar

import orjson

from belvedere.compat.orjson import dumps
from belvedere.streams.converters import INT_MAX, INT_MIN, converter_for
from belvedere.streams.partitioner import partitioner_named
from belvedere.tables.store import PartitionStore
from belvedere.tables.window_reads import (
    EARLIEST,
    LATEST,
    WindowRow,
    key_windows,
    windows_starting,
)
from belvedere.tables.windows import (
    BOOKKEEPING,
    LATE_COUNT,
    STREAM_TIME,
    decode_ms,
    retention_horizon,
)

__all__ = [
    "LocalPartition",
    "LookupElsewhere",
    "NotLocal",
    "PartitionStatus",
    "UndeclaredRead",
    "View",
    "ViewState",
    "key_codec",
    "reading_only",
]


class NotLocal(LookupError):
    """The key's partition is not on this worker (or not restored yet)."""

    def __init__(self, view: str, partition: int, state: str = "not assigned here") -> None:
        super().__init__(f"view {view!r} partition {partition} is {state}")
        self.partition = partition
        self.state = state


class UndeclaredRead(LookupError):
    """A projection's handler read a view it did not declare in ``reads=``: nothing checked
    that the view is partitioned like the handler's source, so the row it wants may live
    on another worker, and the answer would depend on where the partition happens to be."""

    def __init__(self, view: str, allowed: Collection[str]) -> None:
        super().__init__(
            f"read of view {view!r}, which the projection does not declare "
            f"(reads={sorted(allowed)}): add it to reads= of app.projection"
        )


class LookupElsewhere(LookupError):
    """A projection's handler read a key of a partition other than the one its event is
    in: the row is on this worker only by chance (the lookup is not by the key the source
    is partitioned by)."""


#: While a projection's handler folds: the views it may read, and the partition folded
#: (None: not in such a fold).
_READS: ContextVar[tuple[frozenset[str], int] | None] = ContextVar("belvedere_reads", default=None)
Reads = Token[tuple[frozenset[str], int] | None]


def reading_only(names: frozenset[str] | None, partition: int) -> Reads:
    """Until reset with the token returned, reads of views other than ``names`` (and
    replicated views) raise :class:`UndeclaredRead`, and key reads in another partition
    than ``partition`` :class:`LookupElsewhere`; ``names`` None lifts both checks."""
    return _READS.set(None if names is None else (names, partition))


def stop_reading_only(token: Reads) -> None:
    _READS.reset(token)


@dataclass
class PartitionStatus:
    """Where one local partition of a view stands."""

    state: str = "recovering"  # recovering | serving
    generation: int = 1
    restore_done: int = 0
    restore_total: int = 0
    restore_started: float = 0.0
    restore_finished: float = 0.0
    #: The next offset of each source partition whose effect a read can see (empty until
    #: restored): the folded partition's own, and for a re-keyed view each origin's.
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    #: When the last event a read can see was produced (ms since the epoch; None: unknown).
    last_event_ms: int | None = None

    def restore_rate(self, now: float | None = None) -> float | None:
        """Changelog records restored per second (None before any)."""
        end = self.restore_finished or (now if now is not None else time.monotonic())
        elapsed = end - self.restore_started
        return self.restore_done / elapsed if self.restore_done and elapsed > 0 else None

    def restore_eta(self, now: float | None = None) -> float | None:
        """Seconds left to restore, at the rate so far (0 once serving)."""
        if self.state == "serving":
            return 0.0
        rate = self.restore_rate(now)
        return None if rate is None else max(self.restore_total - self.restore_done, 0) / rate


_INT = struct.Struct(">Q")
#: A page size that is every row (islice's largest stop, less the one more it reads).
_EVERY = sys.maxsize - 1


@dataclass(frozen=True)
class KeyCodec:
    type: type
    to_store: Callable[[Any], bytes]
    from_store: Callable[[bytes], Any]
    parse: Callable[[str], Any]


def _int_to_store(key: int) -> bytes:
    return _INT.pack(key + (1 << 63))


def _int_from_store(data: bytes) -> int:
    return _INT.unpack(data)[0] - (1 << 63)


def _parse_int(text: str) -> int:
    """An ``int`` key given as text; ValueError beyond what a store key holds (64 bits)."""
    key = int(text)
    if not INT_MIN <= key <= INT_MAX:
        raise ValueError(f"{key} is not a signed 64-bit integer")
    return key


def key_codec(key_type: type) -> KeyCodec:
    if key_type is str:
        return KeyCodec(str, str.encode, bytes.decode, str)
    if key_type is int:
        return KeyCodec(int, _int_to_store, _int_from_store, _parse_int)
    raise TypeError(f"view keys must be str or int, not {key_type!r}")


@dataclass(frozen=True)
class LocalPartition:
    """A partition this worker can answer from, and how far behind it may be."""

    store: PartitionStore
    #: serving | recovering | standby
    state: str
    #: Records not yet applied here (0 when serving; a recovering or standby copy's backlog).
    behind: int


@dataclass(eq=False)
class ViewState:
    """What this worker holds of a view: it changes as partitions are assigned, restored,
    rebuilt and revoked, while the view's definition does not."""

    #: The partition count, once the worker knows it (None: the one declared, if any).
    partitions: int | None = None
    #: The generation new partitions are restored to (the control topic says which).
    generation: int = 1
    #: The partitions of this view this worker holds, and where each stands.
    stores: dict[int, PartitionStore] = field(default_factory=dict)
    status: dict[int, PartitionStatus] = field(default_factory=dict)
    #: Partitions this worker keeps as standbys, and how many changelog records each lags.
    standby_lag: dict[int, int] = field(default_factory=dict)
    #: The standby copies, readable by callers that accept their lag.
    standby_stores: dict[int, PartitionStore] = field(default_factory=dict)
    #: Set when a checkpoint makes more of the view readable (None: nobody waits).
    advanced: asyncio.Event | None = None


class View:
    """The definition of a view; ``app.view(...)`` makes one and registers it.

    The definition (name, key and value types, indexes, how keys hash) does not change once
    made: assigning to it raises ``FrozenInstanceError``. What this worker holds of the view
    is its :class:`ViewState` (``state``); ``partitions``, ``generation``, ``stores``,
    ``status``, ``standby_lag`` and ``standby_stores`` read and write it.
    """

    #: Assignable after ``__init__``: they are the state's (``generation``, ``partitions``).
    _STATE = frozenset({"partitions", "generation"})
    #: Every worker holds all of it (a global view): readable from any handler.
    replicated: ClassVar[bool] = False

    app_id: str
    name: str
    value_type: Any
    key_type: type
    indexes: Sequence[str]
    #: How its keys are hashed to partitions: its source topic's (``crc32`` for a topic
    #: librdkafka producers write), else Kafka's murmur2.
    partitioner: str
    #: Made by the framework for an aggregate, a saga, a reactor or the trace, not declared
    #: by the app: the status page folds these away below the app's own.
    internal: bool
    #: The partition count declared with ``app.view(partitions=)`` (None: the source's).
    declared_partitions: int | None
    #: Every value written (and checked) encodes: no need to encode each event's.
    always_encodes: bool
    #: A windowed view's window (:mod:`belvedere.tables.windows`); None for a plain view.
    window: Any
    state: ViewState

    def __init__(
        self,
        app_id: str,
        name: str,
        value_type: Any,
        key_type: type = str,
        indexes: Sequence[str] = (),
        partitions: int | None = None,
        generation: int = 1,
        partitioner: str = "murmur2",
        internal: bool = False,
        window: Any = None,
    ) -> None:
        define = super().__setattr__
        define("window", window)
        define("app_id", app_id)
        define("name", name)
        define("value_type", value_type)
        define("key_type", key_type)
        define("indexes", indexes)
        define("declared_partitions", partitions)
        define("internal", internal)
        define("state", ViewState(generation=generation))
        define("_codec", key_codec(key_type))
        converter = converter_for(value_type)
        define("_encode", converter.encode)
        if converter.plain:  # nothing to convert: orjson alone (every event's write)
            define("encode_value", dumps)
        define("always_encodes", converter.always_encodes and not indexes)
        define("_decode", converter.decode)
        define("_check", converter.check)
        define("partitioner", partitioner)
        define("_partition", partitioner_named(partitioner))
        for index in indexes:
            if not index.isidentifier():
                raise ValueError(f"view {name!r}: index {index!r} must name a field")

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._STATE:
            raise FrozenInstanceError(f"view {self.name!r}: cannot assign to {name!r}")
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"view {self.name!r}: cannot delete {name!r}")

    def __repr__(self) -> str:
        return (
            f"View(app_id={self.app_id!r}, name={self.name!r}, value_type={self.value_type!r}, "
            f"key_type={self.key_type!r}, indexes={self.indexes!r}, "
            f"partitions={self.partitions!r}, generation={self.generation!r}, "
            f"partitioner={self.partitioner!r}, internal={self.internal!r}, window={self.window!r})"
        )

    # -- what this worker holds (the state's) -------------------------------------------

    @property
    def partitions(self) -> int | None:
        """The partition count: once the worker knows it, that; until then the declared."""
        known = self.state.partitions
        return known if known is not None else self.declared_partitions

    @partitions.setter
    def partitions(self, count: int) -> None:
        self.state.partitions = count

    @property
    def generation(self) -> int:
        """The generation new partitions are restored to."""
        return self.state.generation

    @generation.setter
    def generation(self, generation: int) -> None:
        self.state.generation = generation

    @property
    def stores(self) -> dict[int, PartitionStore]:
        return self.state.stores

    @property
    def status(self) -> dict[int, PartitionStatus]:
        return self.state.status

    @property
    def standby_lag(self) -> dict[int, int]:
        return self.state.standby_lag

    @property
    def standby_stores(self) -> dict[int, PartitionStore]:
        return self.state.standby_stores

    @property
    def changelog_topic(self) -> str:
        """The changelog of the generation new partitions are restored to."""
        return self.changelog_topic_for(self.generation)

    def changelog_topic_for(self, generation: int) -> str:
        return f"{self.app_id}-view-{self.name}-g{generation}-changelog"

    # -- keys ------------------------------------------------------------------------------

    def check_key(self, key: Any) -> Any:
        if type(key) is not self.key_type:
            raise TypeError(
                f"view {self.name!r} is keyed by {self.key_type.__name__}, not {type(key).__name__}"
            )
        return key

    def store_key(self, key: Any) -> bytes:
        return self._codec.to_store(key)

    def key_from_store(self, data: bytes) -> Any:
        return self._codec.from_store(data)

    def wire_key(self, key: Any) -> bytes:
        return str(key).encode()

    def parse_key(self, text: str) -> Any:
        """A key given as text (a URL path segment), as the view's key type."""
        return self._codec.parse(text)

    def partition_of(self, key: Any, partitions: int) -> int:
        return self._partition(self.wire_key(key), partitions)

    def hash_keys_with(self, partitioner: str) -> None:
        """Hash keys as the topic the view is folded from does (``crc32``, ``murmur2``).

        Part of declaring its projection (``app.projection``), which comes after the view:
        the one change to a definition."""
        super().__setattr__("_partition", partitioner_named(partitioner))
        super().__setattr__("partitioner", partitioner)

    # -- values ----------------------------------------------------------------------------

    def encode_value(self, value: Any) -> bytes:
        return dumps(self._encode(value))

    def decode_value(self, data: bytes) -> Any:
        return self._decode(orjson.loads(data))

    def check_value(self, value: Any) -> Any:
        return self._check(value)

    def indexer(self) -> Callable[[bytes], dict[str, bytes | None]] | None:
        """Index values of an encoded row, for :meth:`PartitionStore.plan` (None: no indexes)."""
        if not self.indexes:
            return None
        return lambda data: self.index_values(self.decode_value(data))

    def index_values(self, value: Any) -> dict[str, bytes | None]:
        """Each index's value for a row, as bytes (None: not indexed)."""
        out: dict[str, bytes | None] = {}
        for index in self.indexes:
            found = value.get(index) if isinstance(value, dict) else getattr(value, index, None)
            out[index] = None if found is None else str(found).encode()
        return out

    # -- local queries -----------------------------------------------------------------------

    def _check_read(self) -> None:
        reads = _READS.get()
        if reads is not None and self.name not in reads[0] and not self.replicated:
            raise UndeclaredRead(self.name, reads[0])

    def _check_lookup(self, key: Any, partition: int) -> None:
        reads = _READS.get()
        if reads is not None and partition != reads[1] and not self.replicated:
            raise LookupElsewhere(
                f"view {self.name!r}: key {key!r} lives in partition {partition} "
                f"({self.partitioner}), but this event is in partition {reads[1]}: a lookup "
                "reads the key its source is partitioned by"
            )

    def _serving(self, partition: int) -> PartitionStore:
        self._check_read()
        store = self.stores.get(partition)
        status = self.status.get(partition)
        if store is None or status is None:
            raise NotLocal(self.name, partition)
        if status.state != "serving":
            raise NotLocal(self.name, partition, status.state)
        return store

    def local(self, partition: int, max_behind: int | None = None) -> LocalPartition:
        """The copy of ``partition`` here to answer from: the serving one, or, for a caller
        that accepts ``max_behind`` records of lag, one being restored or a standby."""
        store = self.stores.get(partition)
        status = self.status.get(partition)
        if store is not None and status is not None:
            if status.state == "serving":
                return LocalPartition(store, "serving", 0)
            behind = max(status.restore_total - status.restore_done, 0)
            if max_behind is not None and behind <= max_behind:
                return LocalPartition(store, status.state, behind)
        standby = self.standby_stores.get(partition)
        if standby is not None and max_behind is not None:
            behind = self.standby_lag.get(partition)
            if behind is not None and behind <= max_behind:
                return LocalPartition(standby, "standby", behind)
        if status is not None and status.state != "serving":
            raise NotLocal(self.name, partition, status.state)
        raise NotLocal(self.name, partition)

    def restoring(self, partition: int, store: PartitionStore, status: PartitionStatus) -> None:
        """Let reads that accept a lag (``local(p, max_behind)``) use ``store`` while it is
        restored, as far behind as ``status`` counts: only for the copy this worker is
        to serve (``status`` is the partition's), not a new generation being built."""
        if self.status.get(partition) is status:
            self.stores[partition] = store

    def replace_store(self, partition: int, old: PartitionStore, new: PartitionStore) -> None:
        """A copy found stale was deleted and started again: reads use the new one."""
        if self.stores.get(partition) is old:
            self.stores[partition] = new
        if self.standby_stores.get(partition) is old:
            self.standby_stores[partition] = new

    def _served(self) -> list[int]:
        return sorted(
            p for p in list(self.stores) if (s := self.status.get(p)) and s.state == "serving"
        )

    def partition_for(self, key: Any) -> int:
        """The partition ``key`` lives in (NotLocal before the view knows its partitions)."""
        if self.partitions is None:
            raise NotLocal(self.name, -1, "not started")
        return self.partition_of(self.check_key(key), self.partitions)

    # -- positions ---------------------------------------------------------------------------

    def advanced(self) -> None:
        """A checkpoint made more of the view readable: wake whoever waits for a position."""
        if self.state.advanced is not None:
            self.state.advanced.set()
            self.state.advanced = None

    async def wait_advanced(self, timeout: float) -> None:
        """Until the next :meth:`advanced`, or ``timeout`` seconds."""
        if self.state.advanced is None:
            self.state.advanced = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.state.advanced.wait(), timeout)

    def get(self, key: Any, default: Any = None) -> Any:
        """The row for ``key`` from this worker; NotLocal if another worker owns it."""
        data = self.get_encoded(key)
        return default if data is None else self.decode_value(data)

    def get_encoded(self, key: Any) -> bytes | None:
        """The row's JSON bytes, as stored (what an HTTP answer sends)."""
        partition = self.partition_for(key)
        self._check_lookup(key, partition)
        return self._serving(partition).get(self.store_key(key))

    def count(self) -> int:
        """Rows in the partitions this worker serves (of a windowed view: its windows)."""
        return sum(self.stored_rows(self._serving(p)) for p in self._served())

    def stored_rows(self, store: PartitionStore) -> int:
        """One partition's rows (of a windowed view: its windows, not its bookkeeping)."""
        rows = store.count()
        if self.window is not None:
            rows -= sum(store.get(k) is not None for k in BOOKKEEPING)
        return rows

    def scan(
        self,
        *,
        prefix: str | None = None,
        start: Any = None,
        end: Any = None,
        limit: int = 100,
        after: bytes | None = None,
    ) -> tuple[list[tuple[Any, Any]], bytes | None]:
        """Rows of the local partitions in key order: ``[start, end)``, under ``prefix``.

        Returns the rows and, when there may be more, the cursor to pass as ``after``.
        """
        page, more = self.scan_encoded(
            self._served(), prefix=prefix, start=start, end=end, limit=limit, after=after
        )
        rows = [(self.key_from_store(k), self.decode_value(v)) for k, v in page]
        return rows, (page[-1][0] if more and page else None)

    def scan_encoded(
        self,
        partitions: Sequence[int],
        *,
        prefix: str | None = None,
        start: Any = None,
        end: Any = None,
        limit: int = 100,
        after: bytes | None = None,
    ) -> tuple[list[tuple[bytes, bytes]], bool]:
        """(store key, stored JSON) of ``partitions``' rows in key order, past the store key
        ``after``; and whether there are more."""
        if self.window is not None:
            raise TypeError(
                f"view {self.name!r} is windowed: read a key's windows, or one window's rows "
                "across keys, not its rows by key"
            )
        if prefix is not None and self.key_type is not str:
            raise TypeError(f"view {self.name!r}: prefix scans need str keys")
        low = self.store_key(start) if start is not None else b""
        if after is not None:
            low = max(low, after + b"\0")
        high = self.store_key(end) if end is not None else None
        bytes_prefix = prefix.encode() if prefix is not None else b""
        streams = [self._serving(p).rows(low, high, bytes_prefix) for p in partitions]
        merged: Iterator[tuple[bytes, bytes]] = heapq.merge(*streams)
        page = list(itertools.islice(merged, limit + 1))
        return page[:limit], len(page) > limit

    def lookup(self, index: str, value: Any, limit: int = 1000) -> list[tuple[Any, Any]]:
        """Rows of the local partitions whose ``index`` field equals ``value``."""
        found = self.lookup_encoded(self._served(), index, value, limit)
        return [(self.key_from_store(k), self.decode_value(v)) for k, v in found]

    def lookup_encoded(
        self,
        partitions: Sequence[int],
        index: str,
        value: Any,
        limit: int = 1000,
        after: bytes | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """(store key, stored JSON) of ``partitions``' rows whose ``index`` field equals
        ``value``, in key order, past the store key ``after``."""
        if index not in self.indexes:
            raise KeyError(
                f"view {self.name!r} has no index {index!r} (its indexes: {list(self.indexes)})"
            )
        wanted = str(value).encode()

        def rows(store: PartitionStore) -> Iterator[tuple[bytes, bytes]]:
            for key in store.index_keys(index, wanted):
                if after is not None and key <= after:
                    continue
                data = store.get(key)
                if data is not None:
                    yield key, data

        merged = heapq.merge(*(rows(self._serving(p)) for p in partitions))
        return list(itertools.islice(merged, limit))

    # -- windows -----------------------------------------------------------------------------

    def _window(self) -> Any:
        if self.window is None:
            raise TypeError(f"view {self.name!r} is not windowed (declare it with window=)")
        return self.window

    def stored_windows(
        self, store: PartitionStore, key: bytes, start: int = EARLIEST, end: int = LATEST
    ) -> list[WindowRow]:
        """The windows of ``key`` (its store bytes) overlapping ``[start, end)`` in
        ``store``, by start, without those past retention: the one read behind
        :meth:`windows`, :meth:`window_at` and ``GET /views/{view}/windows/{key}``, so
        they hide the same expired windows (``store`` may be a copy an HTTP read accepts)."""
        window = self._window()
        horizon = retention_horizon(window, store)
        return key_windows(store, key, start, end, longest=window.longest_ms, horizon=horizon)

    def stored_windows_starting(
        self,
        stores: Sequence[PartitionStore],
        start: int,
        limit: int,
        after: bytes | None = None,
    ) -> tuple[list[WindowRow], bool]:
        """Every key's window starting at ``start`` across ``stores``, in store order past
        the key ``after`` (store bytes), without those past retention: at most ``limit``,
        and whether there are more (behind :meth:`window_rows` and
        ``GET /views/{view}/windows?start=``)."""
        window = self._window()
        horizons = [retention_horizon(window, store) for store in stores]
        return windows_starting(stores, start, limit, after, horizons=horizons)

    def windows(
        self, key: Any, from_ms: int | None = None, to_ms: int | None = None
    ) -> list[tuple[int, int, Any]]:
        """``key``'s windows overlapping ``[from_ms, to_ms)`` (ms since the epoch; ending
        after ``from_ms``, starting before ``to_ms``), oldest first, as ``(start, end,
        value)``: what ``GET /views/{view}/windows/{key}`` answers. NotLocal if another
        worker owns the key. Windows past retention are left out, whether or not a
        checkpoint deleted them yet."""
        self._window()
        store = self._serving(self.partition_for(key))
        start = EARLIEST if from_ms is None else from_ms
        end = LATEST if to_ms is None else to_ms
        found = self.stored_windows(store, self.store_key(key), start, end)
        return [(row.start, row.end, self.decode_value(row.value)) for row in found]

    def window_at(self, key: Any, at_ms: int) -> tuple[int, int, Any] | None:
        """``key``'s window containing the instant ``at_ms`` (the earliest-starting one
        of hopping windows), or None."""
        found = self.windows(key, at_ms, at_ms + 1)
        return found[0] if found else None

    def window_rows(self, start_ms: int) -> list[tuple[Any, Any]]:
        """Every key's row in the window starting at ``start_ms`` (of sessions: each key's
        session starting then), in the partitions this worker serves, in key order:
        ``(key, value)``."""
        self._window()
        stores = [self._serving(p) for p in self._served()]
        found, _ = self.stored_windows_starting(stores, start_ms, _EVERY)
        found.sort(key=lambda row: row.key)  # store order puts "ab" before "a"
        return [(self.key_from_store(row.key), self.decode_value(row.value)) for row in found]

    def stream_time(self, partition: int) -> int | None:
        """The largest event time (ms) a served partition of a windowed view has applied."""
        self._window()
        return decode_ms(self._serving(partition).get(STREAM_TIME))

    def late_count(self) -> int:
        """Late events counted (``on_late="count"``) in the partitions this worker serves."""
        self._window()
        return sum(decode_ms(self._serving(p).get(LATE_COUNT)) or 0 for p in self._served())
