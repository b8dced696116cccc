"""glibc's malloc: a fixed threshold for blocks from ``mmap``, so RocksDB's freed memory goes back.

Works around: glibc serves a block of 128 KiB or more with ``mmap``, and when such a block
is freed it raises that threshold to the block's size (up to 32 MiB), and the trim
threshold to twice it. RocksDB allocates its memtables in blocks of an eighth of the write
buffer (2 MiB here), its table readers and compaction buffers in blocks of hundreds of KiB:
once the first memtable was freed, all of these came from the heap instead, where the
blocks left between live ones are never given back. A windowed view's worker (memtables
flushed every few seconds, level-0 files of tombstones opened and compacted) grew from
342 MB to 408 MB in 3M events, though RocksDB's own usage stayed within its budget; with
the threshold fixed, its resident set follows RocksDB's usage up and down
(docs/benchmarks.md, "Bounded state").

``mallopt(M_MMAP_THRESHOLD, ...)`` sets the threshold and turns its growth off for the
whole process (every arena, and the helpers forked from it), as the environment variable
``MALLOC_MMAP_THRESHOLD_`` would. Other C libraries (musl, macOS) have no ``mallopt`` and
are left alone.
"""

from __future__ import annotations

import ctypes

__all__ = ["MMAP_THRESHOLD", "fix_mmap_threshold"]

#: glibc's own starting threshold: blocks of this size or more are mapped, and unmapped when freed.
MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # malloc.h


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; False where there is no ``mallopt``."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, threshold) == 1
