"""How a windowed view keys its rows: the row's key, then its window.

::

    <the key's store bytes> 0xFF <start> <end>

``start`` and ``end`` are milliseconds since the epoch, 8 bytes big-endian each, offset by
2**63 so negative instants sort first. 0xFF never occurs in UTF-8 and int keys are 8 bytes,
so a key's windows are one prefix, ordered by start: a key's windows in a time range, or the
one containing an instant, is a short seek. The window is ``[start, end)``.
"""

from __future__ import annotations

import struct

__all__ = ["SEPARATOR", "parse_window_key", "window_key", "windows_prefix"]

SEPARATOR = b"\xff"
_BOUNDS = struct.Struct(">QQ")
_OFFSET = 1 << 63


def windows_prefix(key: bytes) -> bytes:
    """The prefix every window of ``key`` (its store bytes) starts with."""
    return key + SEPARATOR


def window_key(key: bytes, start_ms: int, end_ms: int) -> bytes:
    return key + SEPARATOR + _BOUNDS.pack(start_ms + _OFFSET, end_ms + _OFFSET)


def parse_window_key(data: bytes) -> tuple[bytes, int, int]:
    """(the key's store bytes, start, end) of a windowed row's store key."""
    if len(data) < 17 or data[-17:-16] != SEPARATOR:
        raise ValueError(f"not a windowed row key: {data!r}")
    start, end = _BOUNDS.unpack(data[-16:])
    return data[:-17], start - _OFFSET, end - _OFFSET
