"""The outbox: what a fold sends, held until its checkpoint and written with it.

A send awaited one at a time costs a round trip per event, and a send made before the
checkpoint that records its cause is repeated when a crash lands between the two. Inside a
fold whose projection buffers its sends, ``EventTopic.publish`` (and a plain topic's send)
add the record here instead; the engine writes the lot with the checkpoint: on Kafka in the
source partition's transaction, on the embedded broker in the same atomic append as the
changelog. Either way each output is written exactly once with the state and the offsets
that say its cause was handled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar

__all__ = ["Outbox", "OutboxRecord", "current_outbox", "sending_to"]

#: (key, value, headers), as the engine's ``send_all`` takes them.
OutboxRecord = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


class Outbox:
    """One source partition's unsent records since its last checkpoint.

    ``on_rollback(undo)`` is the partition transaction's: an event rolled back (its handler
    raised) takes back what it added here, as it takes back its rows.
    """

    def __init__(self, on_rollback: Callable[[Callable[[str], None]], None] | None = None) -> None:
        self._records: list[tuple[str, int, OutboxRecord]] = []
        self._on_rollback = on_rollback

    def __len__(self) -> int:
        return len(self._records)

    def add(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        mark = len(self._records)
        self._records.append((topic, partition, (key, value, list(headers))))
        if self._on_rollback is not None:
            self._on_rollback(lambda _reason: self._truncate(mark))

    def _truncate(self, mark: int) -> None:
        del self._records[mark:]

    def take(self) -> list[tuple[str, int, list[OutboxRecord]]]:
        """Empty the outbox: its records grouped by (topic, partition), each in order."""
        groups: dict[tuple[str, int], list[OutboxRecord]] = {}
        for topic, partition, record in self._records:
            groups.setdefault((topic, partition), []).append(record)
        self._records = []
        return [(topic, partition, records) for (topic, partition), records in groups.items()]


_current: ContextVar[Outbox | None] = ContextVar("belvedere_outbox", default=None)


def current_outbox() -> Outbox | None:
    """The outbox of the fold running now (None outside one, or for a projection that
    sends at once)."""
    return _current.get()


@contextlib.contextmanager
def sending_to(outbox: Outbox | None) -> Iterator[None]:
    token = _current.set(outbox)
    try:
        yield
    finally:
        _current.reset(token)
