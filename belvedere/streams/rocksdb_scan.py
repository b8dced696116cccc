"""Iterating one key prefix of a rocksdict database, in key order."""

from collections.abc import Iterator

import rocksdict

__all__ = ["scan_prefix"]


def scan_prefix(
    db: rocksdict.Rdict, prefix: bytes, start: bytes | None = None
) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) pairs under ``prefix``, from ``start`` (default: the prefix itself)."""
    it = db.iter()
    it.seek(start or prefix)
    while it.valid():
        key = it.key()
        if not key.startswith(prefix):
            return
        yield key, it.value()
        it.next()
