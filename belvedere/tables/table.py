"""``app.Table``: faust's table API on a view, written by one agent on the engine.

::

    revenue = app.Table("revenue", default=float, partitions=4)

    @app.agent(orders)
    async def total(stream):
        async for user, order in stream.items():
            revenue[user] += order["amount"]

A ``Table`` is a :class:`~belvedere.tables.view.View` (served over HTTP, rebuilt and reset
like any view) with faust's mapping API and a ``default`` for missing keys. Inside its
agent's fold, the engine binds the table to the partition's transaction: reads see the
checkpoint's own writes, writes go into it, and the state, the changelog and the source
offset become durable together. Outside (a timer, a web page), reads answer from the
partitions this worker serves, and writes are refused: nothing would make them durable
with an offset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from belvedere.tables.transaction import PartitionTransaction
from belvedere.tables.view import View

__all__ = ["Table", "TableWriteOutsideAgent"]

_ABSENT = object()


class TableWriteOutsideAgent(RuntimeError):
    """A table was written outside its agent's fold."""


class _Binding:
    __slots__ = ("txn",)

    def __init__(self) -> None:
        self.txn: PartitionTransaction | None = None


class Table(View):
    """A view with faust's table API; ``default`` makes a missing key's value."""

    default: Callable[[], Any] | None
    _binding: _Binding

    def __init__(
        self,
        app_id: str,
        name: str,
        value_type: Any,
        *,
        default: Callable[[], Any] | None = None,
        key_type: type = str,
        partitions: int | None = None,
    ) -> None:
        super().__init__(app_id, name, value_type, key_type, (), partitions)
        object.__setattr__(self, "default", default)
        object.__setattr__(self, "_binding", _Binding())

    # -- the fold's binding ------------------------------------------------------------------

    def bind(self, txn: PartitionTransaction | None) -> None:
        """Route reads and writes to ``txn`` (the agent's fold), or back to the served
        view (None)."""
        self._binding.txn = txn

    @property
    def bound(self) -> PartitionTransaction | None:
        return self._binding.txn

    def _writable(self) -> PartitionTransaction:
        txn = self._binding.txn
        if txn is None:
            raise TableWriteOutsideAgent(
                f"table {self.name!r} is written by its agent only, in its fold, where the "
                "write is durable with the event's offset (an agent whose code does not name "
                "the table passes table= to app.agent); elsewhere, read it or send an event"
            )
        return txn

    # -- faust's mapping API ---------------------------------------------------------------

    def get(self, key: Any, default: Any = None) -> Any:
        txn = self._binding.txn
        if txn is not None:
            return txn.get(key, default)
        return super().get(key, default)

    def __getitem__(self, key: Any) -> Any:
        txn = self._binding.txn
        value = txn.get(key, _ABSENT) if txn is not None else super().get(key, _ABSENT)
        if value is _ABSENT:
            if self.default is None:
                raise KeyError(key)
            return self.default()
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        self._writable()[key] = value

    def __delitem__(self, key: Any) -> None:
        txn = self._writable()
        if key not in txn:
            raise KeyError(key)
        del txn[key]

    def __contains__(self, key: Any) -> bool:
        return self.get(key, _ABSENT) is not _ABSENT

    def pop(self, key: Any, default: Any = _ABSENT) -> Any:
        txn = self._writable()
        value = txn.get(key, _ABSENT)
        if value is _ABSENT:
            if default is _ABSENT:
                raise KeyError(key)
            return default
        del txn[key]
        return value

    def setdefault(self, key: Any, default: Any = None) -> Any:
        txn = self._writable()
        value = txn.get(key, _ABSENT)
        if value is _ABSENT:
            txn[key] = value = default
        return value

    # -- the rows this worker serves (outside the fold) -------------------------------------

    def items(self) -> Iterator[tuple[Any, Any]]:  # type: ignore[override]
        """Every row of the partitions this worker serves, in key order per partition."""
        for partition in self._served():
            after: bytes | None = None
            while True:
                page, more = self.scan_encoded([partition], limit=1000, after=after)
                for key, data in page:
                    yield self.key_from_store(key), self.decode_value(data)
                if not more or not page:
                    break
                after = page[-1][0]

    def keys(self) -> Iterator[Any]:
        return (key for key, _ in self.items())

    def values(self) -> Iterator[Any]:
        return (value for _, value in self.items())

    def __iter__(self) -> Iterator[Any]:
        return self.keys()

    def __len__(self) -> int:
        return self.count()

    def __bool__(self) -> bool:
        return True  # a declaration, not a collection: ``table or x`` means the table
