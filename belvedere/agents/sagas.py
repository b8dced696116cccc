"""Orchestrated sagas: a flow across aggregates or services, step by step, with
compensations when a step fails or times out.

::

    app.saga(
        "checkout",
        start=OrderCreated,
        steps=[
            Step("reserve", command=lambda s: ReserveStock(...), done=StockReserved,
                 failed=ReserveFailed, compensate=lambda s: ReleaseStock(...)),
            Step("charge", command=lambda s: ChargePayment(...), done=PaymentCharged,
                 failed=PaymentDeclined, compensate=lambda s: RefundPayment(...), timeout=30),
            Step("confirm", command=lambda s: PayOrder(...), done=OrderPaid),
        ],
        on_failure=lambda s: CancelOrder(...),
    )

A saga instance is one flow: its id is the correlation id of the event that started it.
The commands it sends carry that correlation id, so the events they cause carry it too.
Each event of the saga's types is copied into the saga's inbox topic, keyed by
correlation id (the engine's re-keying stage, from every topic that carries the types).
So each saga lives in one partition of the view ``saga-<name>``, with one owner, and
needs no locks. Its row holds its state and history.

- A step's ``done`` event moves the saga to the next step, which sends its command. After
  the last step the saga is ``completed``.
- A step's ``failed`` event, or its ``timeout`` (wall-clock seconds, durable in the row),
  ends the saga as ``compensated``. First the compensations of the steps already done run
  in reverse order. On a timeout the current step's compensation runs first, since its
  command may have taken effect. Then ``on_failure`` runs.

Commands are sent after the state that decided them is checkpointed locally, before
the changelog. Each command id is derived from the saga, the step and the action
(``checkout/<id>/charge/do``). A crash that makes the saga send again is therefore
deduplicated by the aggregate that handles the command.

The decisions are pure functions of the row and the event (:meth:`Saga.react`,
:meth:`Saga.expire`). The given-when-then fixture runs them without a broker.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from belvedere.agents.projection import Handler, PartitionState, Projection, by_correlation
from belvedere.agents.surface import AgentsApp
from belvedere.streams.converters import format_timestamp
from belvedere.streams.records import Command, Event
from belvedere.streams.topics import EventTopic
from belvedere.tables.view import View

__all__ = ["Saga", "SagaProjection", "SagaState", "Step"]

logger = logging.getLogger(__name__)

Types = type[Event] | tuple[type[Event], ...]


def _types(given: Types) -> tuple[type[Event], ...]:
    return given if isinstance(given, tuple) else (given,)


@dataclass(frozen=True)
class Step:
    """One step: ``command(state)`` is sent; a ``done`` event completes the step, a
    ``failed`` event or ``timeout`` seconds without one fail the saga."""

    name: str
    command: Callable[[SagaState], Command]
    done: Types
    failed: Types = ()
    compensate: Callable[[SagaState], Command] | None = None
    timeout: float | None = None


@dataclass(frozen=True)
class SagaState:
    """What a step's functions see: the saga's id, the event that started it, the event
    that completed each step so far (by step name), and the event that failed one."""

    id: str
    start: Event
    results: dict[str, Event] = field(default_factory=dict)
    #: The event that failed a step (None: none did, or the step timed out).
    failure: Event | None = None

    def __getitem__(self, step: str) -> Event:
        return self.results[step]


@dataclass(frozen=True)
class Sent:
    """A command a decision sends: with its id, and the event that caused it."""

    command: Command
    command_id: str
    saga_id: str
    cause: str | None


def _now_iso(now_ms: int) -> str:
    return format_timestamp(dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC))


@dataclass(eq=False)
class Saga:
    """A saga's definition, and its decisions as pure functions of (row, input)."""

    name: str
    start: type[Event]
    steps: Sequence[Step]
    on_failure: Callable[[SagaState], Command] | None = None
    on_success: Callable[[SagaState], Command] | None = None

    def __post_init__(self) -> None:
        names = [s.name for s in self.steps]
        if not self.steps or len(set(names)) != len(names):
            raise ValueError(f"saga {self.name!r} needs steps with distinct names, not {names}")
        self._by_type: dict[str, type[Event]] = {self.start.event_type: self.start}
        for step in self.steps:
            for cls in (*_types(step.done), *_types(step.failed)):
                self._by_type[cls.event_type] = cls

    @property
    def event_types(self) -> list[type[Event]]:
        return list(self._by_type.values())

    def state(self, row: dict) -> SagaState:
        def event(stored: dict) -> Event:
            return self._by_type[stored["type"]].from_data(stored["data"])

        results = {name: event(stored) for name, stored in row["results"].items()}
        failed = row.get("failure")
        return SagaState(
            row["id"], event(row["start"]), results, None if failed is None else event(failed)
        )

    def _send(self, row: dict, out: list[Sent], make: Callable, step: str, action: str, cause: str | None, now: int) -> None:  # fmt: skip
        command = make(self.state(row))
        command_id = f"{self.name}/{row['id']}/{step}/{action}"
        out.append(Sent(command, command_id, row["id"], cause))
        row["history"].append(
            {"at": _now_iso(now), "what": action, "step": step, "command": command.event_type, "commandId": command_id}
        )  # fmt: skip

    def react(
        self, row: dict | None, saga_id: str, event: Event, event_id: str, now_ms: int
    ) -> tuple[dict | None, list[Sent]]:
        """The saga after ``event`` (None: no saga to start or change) and the commands to send."""
        out: list[Sent] = []
        typed = {"type": event.event_type, "data": event.to_data(), "eventId": event_id}
        if row is None:
            if not isinstance(event, self.start):
                return None, out
            row = {
                "saga": self.name,
                "id": saga_id,
                "status": "running",
                "step": 0,
                "deadline": None,
                "start": typed,
                "results": {},
                "seen": [event_id],
                "history": [{"at": _now_iso(now_ms), "what": "started", "event": event.event_type, "eventId": event_id}],
            }  # fmt: skip
            self._advance(row, 0, out, event_id, now_ms)
            return row, out
        if row["status"] != "running" or event_id in row["seen"]:
            return None, out
        row = dict(row)
        step = self.steps[row["step"]]
        if isinstance(event, _types(step.done)):
            row["results"] = {**row["results"], step.name: typed}
            what, advance = "done", True
        elif isinstance(event, _types(step.failed)):
            row["failure"] = typed
            what, advance = "failed", False
        else:
            return None, out  # not what the current step waits for
        row["seen"] = [*row["seen"], event_id]
        row["history"] = [*row["history"], {"at": _now_iso(now_ms), "what": what, "step": step.name, "event": event.event_type, "eventId": event_id}]  # fmt: skip
        if advance:
            self._advance(row, row["step"] + 1, out, event_id, now_ms)
        else:
            self._compensate(row, row["step"], out, event_id, now_ms)
        return row, out

    def expire(self, row: dict, now_ms: int) -> tuple[dict | None, list[Sent]]:
        """The saga once its current step's deadline has passed (None: not yet)."""
        out: list[Sent] = []
        deadline = row.get("deadline")
        if row["status"] != "running" or deadline is None or deadline > now_ms:
            return None, out
        step = self.steps[row["step"]]
        row = {**row, "history": [*row["history"], {"at": _now_iso(now_ms), "what": "timed-out", "step": step.name}]}  # fmt: skip
        self._compensate(row, row["step"] + 1, out, None, now_ms)
        return row, out

    def _advance(self, row: dict, index: int, out: list[Sent], cause: str | None, now: int) -> None:
        row["step"] = index
        if index == len(self.steps):
            row["status"], row["deadline"] = "completed", None
            if self.on_success is not None:
                self._send(row, out, self.on_success, "saga", "succeeded", cause, now)
            return
        step = self.steps[index]
        self._send(row, out, step.command, step.name, "do", cause, now)
        row["deadline"] = None if step.timeout is None else now + int(step.timeout * 1000)

    def _compensate(
        self, row: dict, upto: int, out: list[Sent], cause: str | None, now: int
    ) -> None:
        """Undo steps ``[0, upto)`` in reverse order, then ``on_failure``."""
        row["status"], row["deadline"] = "compensated", None
        for step in reversed(self.steps[:upto]):
            if step.compensate is not None:
                self._send(row, out, step.compensate, step.name, "undo", cause, now)
        if self.on_failure is not None:
            self._send(row, out, self.on_failure, "saga", "failed", cause, now)


def _now_ms() -> int:
    return int(time.time() * 1000)


class SagaProjection(Projection):
    """A saga run by the projection engine: its inbox folded into its view, its commands
    sent before each checkpoint, its deadlines checked on the engine's timer."""

    eager = True
    not_rebuildable = "a saga's commands were sent when it first ran"

    def __init__(self, app: AgentsApp, saga: Saga, sources: Sequence[EventTopic], view: View, inbox: EventTopic) -> None:  # fmt: skip
        super().__init__(view=view, **by_correlation(sources, inbox))
        self.app = app
        self.saga = saga
        handler = Handler(self._on_event, False, f"saga {saga.name}")
        for cls in saga.event_types:
            self.handlers[cls] = handler
        self._unsent: dict[int, list[Sent]] = {}
        #: Running sagas' deadlines (ms), per partition: their rows hold them durably.
        self._deadlines: dict[int, dict[str, int]] = {}

    def _apply(self, txn: Any, saga_id: str, row: dict | None, sent: list[Sent]) -> None:
        if row is None:
            return
        txn[saga_id] = row
        deadlines = self._deadlines.setdefault(txn.partition, {})
        before = deadlines.get(saga_id)
        if row["deadline"] is None:
            deadlines.pop(saga_id, None)
        else:
            deadlines[saga_id] = row["deadline"]
        unsent = self._unsent.setdefault(txn.partition, [])
        unsent.extend(sent)

        def undo(reason: str) -> None:  # the row could not be stored: send nothing
            del unsent[len(unsent) - len(sent) :]
            if before is None:
                deadlines.pop(saga_id, None)
            else:
                deadlines[saga_id] = before

        txn.on_rollback(undo)

    def _on_event(self, txn: Any, event: Event) -> None:
        saga_id = event.meta.correlation_id
        row, sent = self.saga.react(
            txn.get(saga_id), saga_id, event, event.meta.event_id, _now_ms()
        )
        for command in sent:
            self._topic_of(type(command.command))  # none to send it on: dead-letter the event
        self._apply(txn, saga_id, row, sent)

    async def on_tick(self, part: PartitionState) -> None:
        deadlines = self._deadlines.get(part.tp.partition)
        if not deadlines:
            return
        now = _now_ms()
        for saga_id in [s for s, when in deadlines.items() if when <= now]:
            stored = part.txn.get(saga_id)
            try:
                row, sent = (None, []) if stored is None else self.saga.expire(stored, now)
                for command in sent:
                    self._topic_of(type(command.command))
            except Exception as exc:  # a compensation that cannot be made or sent
                logger.error("saga %s %r: its timeout failed: %r", self.saga.name, saga_id, exc)
                row = None
            if row is None:
                deadlines.pop(saga_id, None)
                continue
            self._apply(part.txn, saga_id, row, sent)
            part.dirty += 1

    async def before_checkpoint(self, part: PartitionState) -> None:
        for sent in self._unsent.pop(part.tp.partition, ()):
            topic = self._topic_of(type(sent.command))
            await topic.publish(
                sent.command,
                event_id=sent.command_id,
                correlation_id=sent.saga_id,
                causation_id=sent.cause,
            )

    def _topic_of(self, cls: type[Command]) -> EventTopic:
        return self.app.topic_carrying([cls], f"saga {self.saga.name!r} sending {cls.__name__}")

    async def after_restore(self, part: PartitionState, reader: Any) -> bool:
        """Find the running sagas' deadlines again (the timers survive restarts)."""
        self._unsent.pop(part.tp.partition, None)
        deadlines = self._deadlines[part.tp.partition] = {}
        for _, data in part.store.rows():
            row = self.view.decode_value(data)
            if row["status"] == "running" and row["deadline"] is not None:
                deadlines[row["id"]] = row["deadline"]
        return False
