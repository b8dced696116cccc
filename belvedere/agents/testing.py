"""Given-when-then fixtures: test an aggregate's handlers, or a saga's decisions, without a
broker or a worker.

::

    orders = belvedere.AggregateFixture(Order, app)
    orders.given(OrderCreated(order_id="o-1", amount=Decimal("99.99"))) \\
          .when(PayOrder(order_id="o-1")) \\
          .then(OrderPaid(order_id="o-1"))
    orders.given().when(PayOrder(order_id="o-1")).then_rejected("not awaiting payment")

The fixture runs the very functions a worker runs (:func:`belvedere.agents.aggregates.decide`
and the aggregate's apply methods); a failed expectation is an AssertionError saying what
happened instead.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from belvedere.agents.aggregates import (
    Aggregate,
    CommandHandler,
    Decision,
    annotated_types,
    decide,
)
from belvedere.agents.declared import DeclaredApp
from belvedere.agents.sagas import Saga, Sent
from belvedere.streams.records import Command, Event
from belvedere.streams.stamp import stamped

__all__ = [
    "AggregateFixture",
    "Outcome",
    "SagaFixture",
    "SagaOutcome",
    "SagaScenario",
    "Scenario",
    "run",
]


def run(coroutine: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop | None = None) -> Any:
    """Run to completion on ``loop`` (default: a new one), also from inside a running event
    loop (an async test): on a thread then, the caller's loop waiting."""

    def complete() -> Any:
        return asyncio.run(coroutine) if loop is None else loop.run_until_complete(coroutine)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        in_loop = False  # (run below, not here: its errors are not this one's)
    else:
        in_loop = True
    if not in_loop:
        return complete()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = complete()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class AggregateFixture:
    """The handlers of one aggregate type, from an app or given directly."""

    def __init__(
        self,
        aggregate: type[Aggregate],
        app: DeclaredApp | None = None,
        *,
        handlers: Iterable[Callable[..., Any]] = (),
        aggregate_id: str = "fixture-1",  # for commands without a key field
    ) -> None:
        self.aggregate = aggregate
        self.aggregate_id = aggregate_id
        self.handlers: dict[type[Command], CommandHandler] = {}
        if app is not None:
            found = app.aggregates.get(aggregate.aggregate_type)
            if found is None:
                raise LookupError(f"{aggregate.__name__} is not declared on {app.conf.id!r}")
            self.handlers.update(found.command_handlers)
        for fn in handlers:
            for cls in annotated_types(
                fn, Command, 1, "a command handler takes (aggregate, command)"
            ):
                self.handlers[cls] = CommandHandler(
                    fn, asyncio.iscoroutinefunction(fn), fn.__qualname__, aggregate
                )

    def given(self, *events: Event) -> Scenario:
        """The aggregate's history so far (none: a new aggregate). Each event has the
        envelope :func:`belvedere.testing.event` gave it, or a default one."""
        return Scenario(self, [stamped(e) for e in events])


class Scenario:
    def __init__(self, fixture: AggregateFixture, history: list[Event]) -> None:
        self.fixture = fixture
        self.history = history

    def when(self, command: Command) -> Outcome:
        """Decide ``command`` (with the envelope ``event()`` gave it, or a default one)."""
        command = stamped(command)
        fixture = self.fixture
        handler = fixture.handlers.get(type(command))
        if handler is None:
            known = ", ".join(sorted(c.__name__ for c in fixture.handlers)) or "none"
            raise LookupError(f"no handler for {type(command).__name__} (handlers: {known})")
        key = type(command).event_key
        aggregate_id = str(getattr(command, key)) if key else fixture.aggregate_id
        aggregate = fixture.aggregate.replay(aggregate_id, self.history)
        decision = run(decide(aggregate, handler, command))
        return Outcome(decision, aggregate)


class Outcome:
    """What the command came to; each ``then_*`` asserts one thing and returns self."""

    def __init__(self, decision: Decision, aggregate: Aggregate) -> None:
        self.decision = decision
        #: The aggregate after the command (unchanged unless accepted).
        self.aggregate = aggregate

    def _expect(self, status: str) -> None:
        d = self.decision
        if d.status != status:
            said = f": {d.detail}" if d.detail else f" with {d.events!r}"
            raise AssertionError(
                f"expected the command to be {status}, but it was {d.status}{said}"
            )

    def then(self, *events: Event) -> Outcome:
        """Accepted, emitting exactly these events (compared by type and fields)."""
        self._expect("accepted")
        if list(events) != self.decision.events:
            raise AssertionError(
                f"expected events {list(events)!r}, but it emitted {self.decision.events!r}"
            )
        return self

    def then_rejected(self, match: str | None = None) -> Outcome:
        """Rejected; with ``match``, a regular expression its reason must contain."""
        self._expect("rejected")
        detail = self.decision.detail or ""
        if match is not None and not re.search(match, detail):
            raise AssertionError(f"expected a rejection matching {match!r}, got {detail!r}")
        return self

    def then_conflict(self) -> Outcome:
        """Refused because the command expected another version."""
        self._expect("conflict")
        return self

    def then_state(self, **fields: Any) -> Outcome:
        """The aggregate's fields (and ``version``) after the command."""
        for name, wanted in fields.items():
            actual = getattr(self.aggregate, name)
            if actual != wanted:
                raise AssertionError(f"expected {name}={wanted!r}, but it is {actual!r}")
        return self

    def then_result(self, wanted: Any) -> Outcome:
        """The result the handler gave with ``belvedere.Reply``."""
        if self.decision.result != wanted:
            raise AssertionError(f"expected result {wanted!r}, got {self.decision.result!r}")
        return self


#: The fixture's clock: given events happen at this time (ms); ``after`` moves on from it.
T0 = 1_700_000_000_000


class SagaFixture:
    """One saga's decisions, fed events and the passing of time, without a broker::

    checkout = belvedere.SagaFixture(app, "checkout")
    checkout.given(created).when(StockReserved(...)).then_sent(ChargePayment(...))
    checkout.given(created, reserved).after(31).then_sent(RefundPayment(...), ...)
    """

    def __init__(self, app: DeclaredApp, name: str, *, saga_id: str = "flow-1") -> None:
        found = app.sagas.get(name)
        if found is None:
            raise LookupError(f"{app.conf.id!r} has no saga {name!r} (sagas: {sorted(app.sagas)})")
        self.saga: Saga = found.saga
        self.saga_id = saga_id

    def given(self, *events: Event) -> SagaScenario:
        """What already happened in this flow, in order (the first starts the saga). An
        event without the envelope ``event()`` gives is in the fixture's flow, at its
        clock's start, with the id ``given-<i>``."""
        row = None
        for i, event in enumerate(events):
            event, cause = self.stamp(event, f"given-{i}")
            row = self.saga.react(row, self.saga_id, event, cause, T0)[0] or row
        return SagaScenario(self, row)

    def stamp(self, event: Event, name: str) -> tuple[Event, str]:
        """``event`` with an envelope, and the id the saga records it by."""
        if event.meta is not None:
            return event, event.meta.event_id
        return stamped(event, correlation_id=self.saga_id, event_id=name, timestamp=T0 / 1000), name


class SagaScenario:
    def __init__(self, fixture: SagaFixture, row: dict | None) -> None:
        self.fixture = fixture
        self.row = row

    def when(self, event: Event) -> SagaOutcome:
        saga, row = self.fixture.saga, self.row
        event, cause = self.fixture.stamp(event, "when")
        new, sent = saga.react(row, self.fixture.saga_id, event, cause, T0)
        return SagaOutcome(new or row, sent)

    def after(self, seconds: float) -> SagaOutcome:
        """Time passes with no event: the current step may time out."""
        if self.row is None:
            raise LookupError("no saga started: give its start event first")
        new, sent = self.fixture.saga.expire(self.row, T0 + int(seconds * 1000))
        return SagaOutcome(new or self.row, sent)


class SagaOutcome:
    def __init__(self, row: dict | None, sent: list[Sent]) -> None:
        #: The saga's row afterwards (None: never started).
        self.row = row
        #: The commands this step sent, in order.
        self.sent = [s.command for s in sent]

    def then_sent(self, *commands: Command) -> SagaOutcome:
        """Exactly these commands, in this order (none: nothing sent)."""
        if list(commands) != self.sent:
            raise AssertionError(
                f"expected {list(commands)!r} to be sent, but it sent {self.sent!r}"
            )
        return self

    def then_status(self, status: str) -> SagaOutcome:
        """running | completed | compensated"""
        actual = None if self.row is None else self.row["status"]
        if actual != status:
            raise AssertionError(f"expected the saga to be {status}, but it is {actual}")
        return self
