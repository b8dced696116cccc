"""The embedded broker's durable log: partitioned topics in one RocksDB database.

Everything lives in one rocksdict database so that an append (records plus the partition's
new end offset) and a commit are each one atomic write batch.

Durability: every write goes through RocksDB's write-ahead log before the call returns, so
a process that is killed (even with SIGKILL) loses nothing it was told was written. With
``fsync="always"`` each write batch is also fsynced, which survives a power loss at the
cost of one fsync per produce; the default (``"never"``) leaves that to the OS.

Key layout (``tp`` = topic name, NUL, partition as 4 bytes big-endian):

    t<topic>                 topic metadata (JSON)
    r<tp><offset:8>          a record
    e<tp>                    the partition's end offset (next offset to write)
    s<tp>                    the partition's start offset, when retention moved it
    c<group>\\0<tp>           a consumer group's committed offset
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

import orjson
import rocksdict

from belvedere.datadir import lock_holder
from belvedere.streams.errors import BrokerError, BrokerLocked, TopicMismatch
from belvedere.streams.rocksdb_scan import scan_prefix

__all__ = ["Log", "LogSource", "NewRecord", "StoredRecord", "TopicMeta"]

_PARTITION = struct.Struct(">I")
_OFFSET = struct.Struct(">Q")
_HEADER = struct.Struct(">qiiH")
_NAME = struct.Struct(">H")
_LEN = struct.Struct(">i")

Headers = Sequence[tuple[str, bytes]]

#: Compact a partition when it has this many records appended since it was last compacted,
#: or as many as it had live records then, whichever is larger (amortised O(1) per append).
COMPACT_MIN_DIRTY = 10_000


@dataclass(frozen=True, slots=True)
class NewRecord:
    """A record to append."""

    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: Headers = ()


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record read back, with the fields faust's ConsumerMessage wants."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Headers

    @property
    def timestamp(self) -> int:
        """Milliseconds, as aiokafka's ConsumerRecord has it."""
        return self.timestamp_ms


@dataclass(slots=True)
class TopicMeta:
    name: str
    partitions: int
    compacting: bool = False
    config: dict[str, str] = field(default_factory=dict)


def _tp(topic: str, partition: int) -> bytes:
    return topic.encode() + b"\0" + _PARTITION.pack(partition)


def _encode(record: NewRecord) -> bytes:
    key, value = record.key, record.value
    parts = [
        _HEADER.pack(
            record.timestamp_ms,
            -1 if key is None else len(key),
            -1 if value is None else len(value),
            len(record.headers),
        )
    ]
    if key is not None:
        parts.append(key)
    if value is not None:
        parts.append(value)
    for name, hvalue in record.headers:
        bname = name.encode()
        parts += (_NAME.pack(len(bname)), bname, _LEN.pack(len(hvalue)), hvalue)
    return b"".join(parts)


def _decode(topic: str, partition: int, offset: int, data: bytes) -> StoredRecord:
    ts, klen, vlen, nheaders = _HEADER.unpack_from(data)
    pos = _HEADER.size
    key = value = None
    if klen >= 0:
        key, pos = data[pos : pos + klen], pos + klen
    if vlen >= 0:
        value, pos = data[pos : pos + vlen], pos + vlen
    headers = []
    for _ in range(nheaders):
        (nlen,) = _NAME.unpack_from(data, pos)
        pos += _NAME.size
        name, pos = data[pos : pos + nlen].decode(), pos + nlen
        (hlen,) = _LEN.unpack_from(data, pos)
        pos += _LEN.size
        headers.append((name, data[pos : pos + hlen]))
        pos += hlen
    return StoredRecord(topic, partition, offset, ts, key, value, tuple(headers))


class Log:
    """One durable, partitioned log; one instance per database path in a process.

    ``Log.acquire(path)`` returns the process's instance for that path (the consumer and
    the producer share it); another process gets :class:`BrokerLocked`.
    """

    _instances: ClassVar[dict[Path, Log]] = {}

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        try:
            self._db = rocksdict.Rdict(str(path), options=options)
        except Exception as exc:
            if "lock" in str(exc).lower():
                pid = lock_holder(path / "LOCK")
                holder = "another process" if pid is None else f"process {pid}"
                raise BrokerLocked(
                    f"the embedded broker log at {path} is in use by {holder}", pid
                ) from None
            raise BrokerError(f"cannot open the embedded broker log at {path}: {exc}") from exc
        self._write_options = rocksdict.WriteOptions()
        self._write_options.sync = fsync
        self._refs = 0
        self._waiters: set[asyncio.Future[None]] = set()
        self.topics: dict[str, TopicMeta] = {}
        self._end: dict[tuple[str, int], int] = {}
        self._start: dict[tuple[str, int], int] = {}
        self._dirty: dict[tuple[str, int], int] = {}
        self._live: dict[tuple[str, int], int] = {}
        self._load()

    @classmethod
    def acquire(cls, path: Path | str, *, fsync: bool = False) -> Log:
        path = Path(path).resolve()
        log = cls._instances.get(path)
        if log is None:
            log = cls._instances[path] = cls(path, fsync=fsync)
        log._refs += 1
        return log

    def release(self) -> None:
        self._refs -= 1
        if self._refs <= 0:
            self.close()

    def close(self) -> None:
        if self._instances.get(self.path) is self:
            del self._instances[self.path]
            self._db.flush_wal(True)
            self._db.close()

    def _load(self) -> None:
        for _key, value in self._scan(b"t"):
            meta = orjson.loads(value)
            self.topics[meta["name"]] = TopicMeta(**meta)
        for prefix, target in ((b"e", self._end), (b"s", self._start)):
            for key, value in self._scan(prefix):
                (partition,) = _PARTITION.unpack(key[-4:])
                target[(key[1:-5].decode(), partition)] = _OFFSET.unpack(value)[0]

    def _scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        return scan_prefix(self._db, prefix, start)

    # -- topics ------------------------------------------------------------------------

    def create_topic(
        self,
        name: str,
        partitions: int,
        *,
        compacting: bool = False,
        config: Mapping[str, str] | None = None,
    ) -> TopicMeta:
        """Create a topic, or check that an existing one has this partition count."""
        if partitions < 1:
            raise BrokerError(f"topic {name!r}: partitions must be >= 1, not {partitions}")
        existing = self.topics.get(name)
        if existing is not None:
            if existing.partitions != partitions:
                raise TopicMismatch(
                    f"topic {name!r} exists with {existing.partitions} partition(s), "
                    f"but {partitions} were declared"
                )
            return existing
        meta = TopicMeta(name, partitions, compacting, dict(config or {}))
        self._db.put(b"t" + name.encode(), orjson.dumps(asdict(meta)))
        self.topics[name] = meta
        return meta

    def delete_topic(self, name: str) -> None:
        """Remove a topic: its records, offsets and every group's commits on it."""
        meta = self.topics.pop(name, None)
        if meta is None:
            raise BrokerError(f"unknown topic {name!r}")
        for partition in range(meta.partitions):
            tp = _tp(name, partition)
            self._db.delete_range(b"r" + tp, b"r" + tp + b"\xff" * 9)
            self._db.delete(b"e" + tp)
            self._db.delete(b"s" + tp)
            for key in (self._end, self._start, self._dirty, self._live):
                key.pop((name, partition), None)
        commits = [
            k
            for k, _ in self._scan(b"c")
            if k[1:].split(b"\0", 1)[1].startswith(name.encode() + b"\0")
        ]
        for key in commits:
            self._db.delete(key)
        self._db.delete(b"t" + name.encode())

    def partitions(self, topic: str) -> int | None:
        meta = self.topics.get(topic)
        return meta.partitions if meta else None

    def _check(self, topic: str, partition: int) -> TopicMeta:
        meta = self.topics.get(topic)
        if meta is None:
            raise BrokerError(f"unknown topic {topic!r}")
        if not 0 <= partition < meta.partitions:
            raise BrokerError(
                f"topic {topic!r} has {meta.partitions} partition(s), no partition {partition}"
            )
        return meta

    # -- offsets -----------------------------------------------------------------------

    def end_offset(self, topic: str, partition: int) -> int:
        """The offset the next record will get (Kafka's log end offset, "highwater")."""
        return self._end.get((topic, partition), 0)

    def start_offset(self, topic: str, partition: int) -> int:
        return self._start.get((topic, partition), 0)

    def committed(self, group: str, topic: str, partition: int) -> int | None:
        value = self._db.get(b"c" + group.encode() + b"\0" + _tp(topic, partition))
        return None if value is None else _OFFSET.unpack(value)[0]

    def commit(self, group: str, offsets: Mapping[tuple[str, int], int]) -> None:
        batch = rocksdict.WriteBatch(raw_mode=True)
        prefix = b"c" + group.encode() + b"\0"
        for (topic, partition), offset in offsets.items():
            self._check(topic, partition)
            batch.put(prefix + _tp(topic, partition), _OFFSET.pack(offset))
        self._db.write(batch, self._write_options)

    # -- records -----------------------------------------------------------------------

    def append(self, topic: str, partition: int, records: Sequence[NewRecord]) -> int:
        """Append records atomically; returns the offset of the first."""
        return self.append_atomic([(topic, partition, records)])[0]

    def append_atomic(self, appends: Sequence[tuple[str, int, Sequence[NewRecord]]]) -> list[int]:
        """Append to several partitions in one write batch: all of it or, after a crash,
        none of it (a checkpoint's changelog with the events its fold sent). Returns the
        offset of each append's first record."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        ends: dict[tuple[str, int], int] = {}
        bases, compacting = [], []
        for topic, partition, records in appends:
            meta = self._check(topic, partition)
            tp = _tp(topic, partition)
            base = ends.get((topic, partition), self.end_offset(topic, partition))
            for i, record in enumerate(records):
                if meta.compacting and record.key is None:
                    raise BrokerError(f"compacted topic {topic!r} cannot take a record without a key")  # fmt: skip
                batch.put(b"r" + tp + _OFFSET.pack(base + i), _encode(record))
            end = ends[(topic, partition)] = base + len(records)
            batch.put(b"e" + tp, _OFFSET.pack(end))
            bases.append(base)
            if meta.compacting:
                compacting.append((topic, partition, len(records)))
        self._db.write(batch, self._write_options)
        self._end.update(ends)
        for topic, partition, appended in compacting:
            self._maybe_compact(topic, partition, appended)
        self._wake()
        return bases

    def read(
        self, topic: str, partition: int, offset: int, max_records: int = 500
    ) -> list[StoredRecord]:
        """Records at ``offset`` and after, up to ``max_records``; compaction leaves gaps."""
        self._check(topic, partition)
        if offset >= self.end_offset(topic, partition):
            return []
        prefix = b"r" + _tp(topic, partition)
        start = prefix + _OFFSET.pack(max(offset, 0))
        out = []
        for key, value in self._scan(prefix, start):
            (off,) = _OFFSET.unpack(key[len(prefix) :])
            out.append(_decode(topic, partition, off, value))
            if len(out) >= max_records:
                break
        return out

    # -- compaction ----------------------------------------------------------------------

    def _maybe_compact(self, topic: str, partition: int, appended: int) -> None:
        key = (topic, partition)
        dirty = self._dirty[key] = self._dirty.get(key, 0) + appended
        if dirty >= max(COMPACT_MIN_DIRTY, self._live.get(key, 0)):
            self.compact(topic, partition)

    def compact(self, topic: str, partition: int) -> int:
        """Keep only the latest record of each key (tombstones included); returns removed.

        Offsets are kept, so readers see gaps; the start offset does not move, as in Kafka.
        """
        prefix = b"r" + _tp(topic, partition)
        latest: dict[bytes | None, bytes] = {}
        stale: list[bytes] = []
        for dbkey, value in self._scan(prefix):
            rkey = _decode(topic, partition, 0, value).key
            previous = latest.get(rkey)
            if previous is not None:
                stale.append(previous)
            latest[rkey] = dbkey
        if stale:
            batch = rocksdict.WriteBatch(raw_mode=True)
            for dbkey in stale:
                batch.delete(dbkey)
            self._db.write(batch, self._write_options)
        self._dirty[(topic, partition)] = 0
        self._live[(topic, partition)] = len(latest)
        return len(stale)

    # -- waiting for appends -----------------------------------------------------------

    def _wake(self) -> None:
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()

    async def wait_for_append(self, timeout: float) -> None:
        """Return after the next append, or after ``timeout`` seconds."""
        fut = asyncio.get_running_loop().create_future()
        self._waiters.add(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(fut)


class LogSource(Protocol):
    """What hands the embedded consumer and producer the log: the embedded transport,
    which makes them (so they name it by what they use of it, not by its class)."""

    def acquire_log(self) -> Log: ...
