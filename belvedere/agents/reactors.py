"""Reactors: pub/sub subscribers that act on events (send an email, call a service,
publish further events), each receiving every event of its types.

::

    @app.reactor(OrderPaid)
    async def send_receipt(event: OrderPaid) -> None:
        await notifications.publish(ReceiptSent(order_id=event.order_id))

Every reactor is its own subscriber: several reactors of one event type in one app each
get every event (fan-out), and so do reactors in other apps, which are other consumer
groups. A reactor that raises sends the event to the dead letters with its reason; the
event's other readers carry on, and so does the reactor.

A reactor runs in the projection engine's batch path, so it shares the fetch and the
decoding of its topic with the projections reading it. Its progress is the source offset
of a small bookkeeping view (``reactor-<name>``, one row per partition), so a restart or
a rebalance resumes where it left off. Delivery is at least once: events handled after the
last checkpoint (half a second, by default) are handled again after a crash. What a
reactor publishes inherits the event's correlation, and is caused by it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from belvedere.agents.aggregates import annotated_types
from belvedere.agents.projection import Handler, PartitionState, Projection
from belvedere.streams.context import caused_by
from belvedere.streams.records import Event
from belvedere.streams.topics import EventTopic
from belvedere.tables.view import View

__all__ = ["ReactorProjection"]


class ReactorProjection(Projection):
    """One reactor function, subscribed to ``source``."""

    not_rebuildable = "a reactor's effects happened when it first handled its events"

    def __init__(
        self, source: EventTopic, view: View, fn: Callable[[Any], Any], types: list[type[Event]]
    ) -> None:
        super().__init__(source=source, view=view)
        self.fn = fn
        self.is_async = inspect.iscoroutinefunction(fn)
        handler = Handler(self._react, True, fn.__qualname__)
        for cls in types:
            self.handlers[cls] = handler
        #: Events handled per partition since the worker started.
        self.handled: dict[int, int] = {}

    @staticmethod
    def event_types(fn: Callable[..., Any]) -> list[type[Event]]:
        return annotated_types(fn, Event, 0, "a reactor takes (event)")

    async def _react(self, txn: Any, event: Event) -> None:
        with caused_by(event):
            result = self.fn(event)
            if self.is_async:
                await result
        self.handled[txn.partition] = self.handled.get(txn.partition, 0) + 1

    async def before_checkpoint(self, part: PartitionState) -> None:
        # A row per checkpoint, so that the changelog carries the source offset to
        # whichever worker has the partition next.
        part.txn.put_local(part.tp.partition, {"handled": self.handled.get(part.tp.partition, 0)})
