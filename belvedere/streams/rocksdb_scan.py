"""Iterating one key prefix of a rocksdict database, in key order."""

from collections.abc import Iterator

import rocksdict

__all__ = ["scan_prefix"]


def scan_prefix(
    db: rocksdict.Rdict, prefix: bytes, start: bytes | None = None
) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) pairs under ``prefix``, from ``start`` (default: the prefix itself).

    An iterator that meets a damaged block just stops being valid; ``status()`` then raises
    (RocksDB's ``Corruption``), so a damaged database fails loudly instead of looking short.
    """
    it = db.iter()
    it.seek(start or prefix)
    while it.valid():
        key = it.key()
        if not key.startswith(prefix):
            return
        yield key, it.value()
        it.next()
    it.status()
