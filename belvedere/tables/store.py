"""One view partition's RocksDB database: rows, index entries, and the offsets they reflect.

Rows, their index entries, the count, the source offsets applied and the changelog offset
written are all changed by one write batch, so the database is always a consistent state
"as of" the offsets it records. That is what makes a projection effectively-once.

Layout (one rocksdict database per view partition, raw mode)::

    r<key>                          a row: the value, orjson-encoded
    x<index>\\0<value>\\0<key>        an index entry (empty value)
    m:count                         number of rows (8 bytes, big-endian)
    m:changelog                     offset of the last changelog record reflected
    m:source:<topic>\\0<partition>  next source offset to apply (committed position)
    m:epoch                         the changelog reset this state belongs to
    p<key>                          a row written locally whose changelog record is not yet acked

Memory: every database of a worker shares one block cache and one write-buffer budget
(:class:`StoreBudget`), so memory is bounded per worker, not per partition (faust gives
each partition database its own 2 GiB cache).

Damage: a database whose files were lost or corrupted (a bad disk, a half-copied backup)
is a cache of its changelog, not the truth. Opening one reads every block once (checksums
verified, ~0.2 s per million entries); if RocksDB refuses it or a block does not check
out, the folder is moved aside to ``<n>.db.corrupt`` (replacing an older one) and an empty
database opened in its place, which the restore then fills from the changelog. Opening a
damaged copy would otherwise crash the worker on every start, or serve rows silently
cut short.
"""

from __future__ import annotations

import logging
import shutil
import struct
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import rocksdict

from belvedere.streams.rocksdb_scan import scan_prefix

__all__ = ["PartitionStore", "StoreBudget"]

logger = logging.getLogger(__name__)

_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
ROW = b"r"
INDEX = b"x"
COUNT = b"m:count"
CHANGELOG = b"m:changelog"
SOURCE = b"m:source:"
EPOCH = b"m:epoch"
PENDING = b"p"


class StoreBudget:
    """The RocksDB memory one worker may use for all its view partitions."""

    def __init__(
        self, block_cache_bytes: int = 64 << 20, write_buffer_bytes: int = 64 << 20
    ) -> None:
        #: Bytes of block cache and memtables (charged to the cache) the worker may use.
        self.capacity = block_cache_bytes
        self.cache = rocksdict.Cache(block_cache_bytes)
        self.write_buffers = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
            write_buffer_bytes, False, self.cache
        )

    def usage(self) -> int:
        """Bytes in use now: cached blocks, index and filter blocks, and memtables."""
        return self.cache.get_usage()

    def options(self) -> rocksdict.Options:
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_write_buffer_manager(self.write_buffers)
        options.set_write_buffer_size(16 << 20)
        options.set_max_write_buffer_number(2)
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(self.cache)
        table.set_bloom_filter(10, False)
        table.set_cache_index_and_filter_blocks(True)
        # Every read searches the level-0 files; pinned, their filter and index blocks stay
        # in the cache the memtables are charged to (a windowed view's deletes pile up
        # level-0 files of tombstones: 3M windowed events folded 1.3-1.6x faster pinned).
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        options.set_block_based_table_factory(table)
        return options


def _damaged(exc: Exception) -> bool:
    """Whether RocksDB refused a database for its files (not for a lock or a permission)."""
    message = str(exc)
    return message.startswith("Corruption") or "No such file or directory" in message


def _verify(db: rocksdict.Rdict) -> None:
    """Read every block once, checksums verified, without filling the shared cache."""
    options = rocksdict.ReadOptions()
    options.fill_cache(False)
    options.set_verify_checksums(True)
    options.set_readahead_size(2 << 20)
    it = db.iter(options)
    try:
        it.seek_to_first()
        valid, advance = it.valid, it.next
        while valid():
            advance()
        it.status()
    finally:
        del it


def _source_key(topic: str, partition: int) -> bytes:
    return SOURCE + topic.encode() + b"\0" + _U64.pack(partition)


def index_prefix(index: str, value: bytes) -> bytes:
    return INDEX + index.encode() + b"\0" + value + b"\0"


class PartitionStore:
    """A view partition's database. Reads are direct; writes go through a batch."""

    def __init__(self, path: Path, budget: StoreBudget) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        #: Where a damaged copy found on opening was moved (None: it opened intact).
        self.moved_aside: Path | None = None
        self._db = self._open(budget)
        self.write_options = rocksdict.WriteOptions()

    def _open(self, budget: StoreBudget) -> rocksdict.Rdict:
        try:
            db = rocksdict.Rdict(str(self.path), options=budget.options())
            try:
                _verify(db)
            except Exception:
                db.close()
                raise
            return db
        except Exception as exc:
            if not _damaged(exc):
                raise
            problem = str(exc).splitlines()[0]
        aside = self.path.with_name(self.path.name + ".corrupt")
        shutil.rmtree(aside, ignore_errors=True)
        self.path.rename(aside)
        self.moved_aside = aside
        logger.warning(
            "view store %s is damaged (%s): moved aside to %s; rebuilding it from the changelog",
            self.path, problem, aside,
        )  # fmt: skip
        return rocksdict.Rdict(str(self.path), options=budget.options())

    def close(self) -> None:
        self._db.close()

    def destroy(self) -> None:
        """Close and delete the files (a stale or superseded partition)."""
        self._db.close()
        shutil.rmtree(self.path, ignore_errors=True)

    # -- reads -------------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(ROW + key)

    def count(self) -> int:
        value = self._db.get(COUNT)
        return 0 if value is None else _I64.unpack(value)[0]

    def changelog_offset(self) -> int | None:
        value = self._db.get(CHANGELOG)
        return None if value is None else _I64.unpack(value)[0]

    def source_offsets(self) -> dict[tuple[str, int], int]:
        """Next offset to apply, per source topic partition."""
        out = {}
        for key, value in self._scan(SOURCE):
            topic, partition = key[len(SOURCE) : -9], key[-8:]
            out[(topic.decode(), _U64.unpack(partition)[0])] = _U64.unpack(value)[0]
        return out

    def epoch(self) -> bytes | None:
        """Which reset of the changelog this state belongs to (None: never reset)."""
        return self._db.get(EPOCH)

    def set_epoch(self, epoch: bytes | None) -> None:
        if epoch is None:
            self._db.delete(EPOCH)
        else:
            self._db.put(EPOCH, epoch)

    def pending_keys(self) -> list[bytes]:
        """Rows written locally whose changelog records were not confirmed (a crash between)."""
        return [key[len(PENDING) :] for key, _ in self._scan(PENDING)]

    def rows(
        self, start: bytes = b"", end: bytes | None = None, prefix: bytes = b""
    ) -> Iterator[tuple[bytes, bytes]]:
        """Rows in key order from ``start`` (inclusive) to ``end`` (exclusive), under ``prefix``."""
        lower = ROW + max(start, prefix)
        for key, value in self._scan(ROW + prefix, lower):
            row_key = key[1:]
            if end is not None and row_key >= end:
                return
            yield row_key, value

    def index_keys(self, index: str, value: bytes) -> Iterator[bytes]:
        prefix = index_prefix(index, value)
        for key, _ in self._scan(prefix):
            yield key[len(prefix) :]

    def _scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        return scan_prefix(self._db, prefix, start)

    # -- writes ------------------------------------------------------------------------------

    def plan(
        self, rows: Mapping[bytes, bytes | None], index_values: Any
    ) -> tuple[dict[bytes, bool], int]:
        """Index entries to add or remove, and the change in row count, for writing ``rows``.

        ``index_values(value_bytes) -> {index: bytes | None}``, or None for a view without
        indexes.
        """
        changes: dict[bytes, bool] = {}
        delta = 0
        get = self._db.get
        for key, value in rows.items():
            old = get(ROW + key)
            if old is None and value is not None:
                delta += 1
            elif old is not None and value is None:
                delta -= 1
            if index_values is None or old == value:
                continue
            before = index_values(old) if old is not None else {}
            after = index_values(value) if value is not None else {}
            for index in before.keys() | after.keys():
                was, now = before.get(index), after.get(index)
                if was == now:
                    continue
                if was is not None:
                    changes[index_prefix(index, was) + key] = False
                if now is not None:
                    changes[index_prefix(index, now) + key] = True
        return changes, delta

    def write(
        self,
        rows: Mapping[bytes, bytes | None],
        index_changes: Mapping[bytes, bool],
        count_delta: int,
        source_offsets: Mapping[tuple[str, int], int],
        changelog_offset: int | None,
        *,
        pending: bool = False,
    ) -> None:
        """Apply one consistent step atomically: rows (None deletes), index entries
        (True adds, False removes), the count, and the offsets they reflect. With
        ``pending``, the rows are also marked as not yet in the changelog."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        if pending:
            for key in rows:
                batch.put(PENDING + key, b"")
        for key, value in rows.items():
            if value is None:
                batch.delete(ROW + key)
            else:
                batch.put(ROW + key, value)
        for entry, present in index_changes.items():
            if present:
                batch.put(entry, b"")
            else:
                batch.delete(entry)
        if count_delta:
            batch.put(COUNT, _I64.pack(self.count() + count_delta))
        for (topic, partition), offset in source_offsets.items():
            batch.put(_source_key(topic, partition), _U64.pack(offset))
        if changelog_offset is not None:
            batch.put(CHANGELOG, _I64.pack(changelog_offset))
        self._db.write(batch, self.write_options)

    def confirm(self, changelog_offset: int | None, keys: Iterable[bytes] | None = None) -> None:
        """The pending rows (or those of ``keys``) are in the changelog, up to
        ``changelog_offset``."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key in self.pending_keys() if keys is None else keys:
            batch.delete(PENDING + key)
        if changelog_offset is not None:
            batch.put(CHANGELOG, _I64.pack(changelog_offset))
        self._db.write(batch, self.write_options)
