"""orjson's ``dumps``, its result in a block of its own size.

Works around: ``orjson.dumps`` writes into a buffer of at least 4 KiB and hands that
buffer back as the ``bytes``. glibc shrinks it in place, which leaves the freed tail too
small for the next 4 KiB buffer, so every result kept alive pins about 4 KiB: the rows a
checkpoint holds encoded (100,000 and more at a million keys) took 400 MB more than their
size. A copy costs about 80 ns and lives in a block of its own size.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["dumps"]

_dumps = orjson.dumps


def dumps(value: Any, default: Any = None, option: int | None = None) -> bytes:
    """``orjson.dumps(value, default, option)`` for results that are kept (rows until a
    checkpoint, records in an outbox)."""
    return bytes(memoryview(_dumps(value, default, option)))
