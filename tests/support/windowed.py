"""Test-only: a view whose rows are stored as a windowed view's, for the HTTP tests of
windows until windowed views are declared with ``app.view`` (then the test app declares a
real one and this goes).

Its handler writes ``view[(key, start, end)]``; the row is stored through the view's normal
path (transaction, checkpoint, changelog) under ``window_key(store_key(key), start, end)``
and lives in the partition of ``key``. ``window`` is :class:`Tumbling`, standing in for the
window a windowed view declares (with its ``size_ms`` and ``step_ms``).
"""

from __future__ import annotations

from typing import Any

from belvedere.tables.view import View
from belvedere.tables.window_keys import window_key

__all__ = ["Tumbling", "WindowedRows"]


class Tumbling:
    def __init__(self, size_ms: int) -> None:
        self.size_ms = self.step_ms = size_ms

    def bounds(self, ms: int) -> tuple[int, int]:
        start = ms - ms % self.size_ms
        return start, start + self.size_ms


class WindowedRows(View):
    """A view keyed in its handlers by ``(key, start, end)``; read by ``key`` elsewhere."""

    def __init__(self, app_id: str, name: str, value: Any, key: type, window: Any) -> None:
        super().__init__(app_id, name, value, key)
        object.__setattr__(self, "window", window)

    def check_key(self, key: Any) -> Any:
        if isinstance(key, tuple):
            super().check_key(key[0])
            return key
        return super().check_key(key)

    def store_key(self, key: Any) -> bytes:
        if isinstance(key, tuple):
            return window_key(super().store_key(key[0]), key[1], key[2])
        return super().store_key(key)

    def wire_key(self, key: Any) -> bytes:
        return super().wire_key(key[0] if isinstance(key, tuple) else key)
