"""Event-sourced aggregates: state that is the fold of its own events, and the pure
decision a command handler makes against it.

An aggregate declares its fields (each with a default: a new aggregate has no events yet)
and one apply method per event type, recognised by the event parameter's annotation::

    class Order(belvedere.Aggregate):
        status: str = "new"
        amount: Decimal = Decimal(0)

        def created(self, event: OrderCreated) -> None:
            self.status, self.amount = "created", event.amount

Apply methods only change state: they never refuse (an event is a fact). Refusing is the
command handler's job, by raising :class:`Rejected` before any event exists. Nothing here
touches a broker or a store, so the same code runs in a worker and in the given-when-then
fixtures (:mod:`belvedere.agents.testing`).
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from belvedere.streams.records import Codec, Command, Event, _defining_scope

__all__ = [
    "Aggregate",
    "CommandHandler",
    "Decision",
    "Rejected",
    "Reply",
    "annotated_types",
    "codec_of",
    "decide",
]


class Rejected(Exception):
    """Raised by a command handler: the command is refused, and nothing is emitted.

    The message is what the caller sees (HTTP 422); keep it for humans.
    """


@dataclass(frozen=True)
class Reply:
    """What a handler returns to give its caller a result besides the events it emits."""

    events: Event | Sequence[Event] | None = None
    result: Any = None


def annotated_types(fn: Callable[..., Any], base: type, position: int, what: str) -> list[type]:
    """The classes (a union gives several) annotated on ``fn``'s parameter at ``position``."""
    params = list(inspect.signature(fn).parameters.values())
    if len(params) <= position:
        raise TypeError(f"{fn.__qualname__}: {what}")
    hint = typing.get_type_hints(fn).get(params[position].name)
    if hint is None:
        raise TypeError(f"{fn.__qualname__}: annotate parameter {params[position].name!r}")
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = typing.get_args(hint) if union else (hint,)
    for option in options:
        if not (isinstance(option, type) and issubclass(option, base)):
            raise TypeError(f"{fn.__qualname__}: {option!r} is not a {base.__name__} class")
    return list(options)


class Aggregate:
    """The base of event-sourced aggregates (see the module docstring).

    ``id`` and ``version`` (how many events it has) are kept by Belvedere, not declared
    as fields. Class keyword: ``type``, the stable name used in URLs and stores (the class
    name by default).
    """

    aggregate_type: ClassVar[str]
    #: event class -> apply method name
    appliers: ClassVar[dict[type[Event], str]]
    __belvedere_codec__: ClassVar[Codec | None] = None

    id: str
    version: int

    def __init_subclass__(cls, *, type: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.aggregate_type = type or cls.__name__
        cls.__belvedere_codec__ = None
        cls.__belvedere_localns__ = _defining_scope(__file__)
        dataclass(kw_only=True, eq=True)(cls)
        for f in dataclasses.fields(cls):
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise TypeError(
                    f"{cls.__qualname__}.{f.name} needs a default: an aggregate with no events "
                    "yet is built from its defaults"
                )
        cls.appliers = {}

    @classmethod
    def _collect_appliers(cls) -> dict[type[Event], str]:
        found: dict[type[Event], str] = {}
        for name, fn in inspect.getmembers(cls, inspect.isfunction):
            if name.startswith("_") or name in Aggregate.__dict__:
                continue
            for event_type in annotated_types(fn, Event, 1, "an apply method takes (self, event)"):
                if event_type in found:
                    raise TypeError(
                        f"{cls.__qualname__}: {event_type.__name__} is applied by both "
                        f"{found[event_type]} and {name}"
                    )
                found[event_type] = name
        return found

    @classmethod
    def new(cls, aggregate_id: str) -> Aggregate:
        """The aggregate before its first event (version 0)."""
        aggregate = cls()
        aggregate.id = aggregate_id
        aggregate.version = 0
        return aggregate

    def apply(self, event: Event) -> None:
        """Fold one more event into the state; the version counts every event."""
        cls = type(self)
        if not cls.appliers:
            cls.appliers = cls._collect_appliers()
        name = cls.appliers.get(type(event))
        if name is not None:
            getattr(self, name)(event)
        self.version += 1

    def to_data(self) -> dict[str, Any]:
        """The state as JSON-ready data (camelCase keys), as stored in its snapshot; its
        fields checked first (TypeError), so that what is stored can be loaded again (a
        level summed past 64 bits would otherwise make every later command fail)."""
        codec = codec_of(type(self))
        codec.check(self)  # type: ignore[arg-type]
        return codec.encode(self)  # type: ignore[arg-type]

    @classmethod
    def from_data(cls, aggregate_id: str, version: int, data: Any) -> Aggregate:
        aggregate = codec_of(cls).decode(data)
        aggregate.id = aggregate_id  # type: ignore[attr-defined]
        aggregate.version = version  # type: ignore[attr-defined]
        return aggregate  # type: ignore[return-value]

    def copy(self) -> Aggregate:
        """An independent copy (through its data: fields may be read-only mappings)."""
        return type(self).from_data(self.id, self.version, self.to_data())

    @classmethod
    def replay(cls, aggregate_id: str, events: Iterable[Event]) -> Aggregate:
        aggregate = cls.new(aggregate_id)
        for event in events:
            aggregate.apply(event)
        return aggregate


def codec_of(cls: type[Aggregate]) -> Codec:
    """The codec of an aggregate class's state, made on first use (a module function: a
    method would share the namespace of the user's fields)."""
    codec = cls.__dict__.get("__belvedere_codec__")
    if codec is None:
        codec = cls.__belvedere_codec__ = Codec(cls)  # type: ignore[arg-type]
    return codec


@dataclass(frozen=True)
class CommandHandler:
    fn: Callable[[Any, Any], Any]
    is_async: bool
    name: str
    aggregate: type[Aggregate]


@dataclass
class Decision:
    """What a command came to: the events to emit (accepted), or why not."""

    status: str  # accepted | rejected | conflict
    events: list[Event]
    result: Any = None
    detail: str | None = None
    expected: int | None = None
    #: The aggregate's version after the decision.
    version: int = 0


def _events_of(returned: Any, handler: CommandHandler) -> tuple[list[Event], Any]:
    result = None
    if isinstance(returned, Reply):
        returned, result = returned.events, returned.result
    if returned is None:
        events: list[Event] = []
    elif isinstance(returned, Event):
        events = [returned]
    elif isinstance(returned, list | tuple):
        events = list(returned)
    else:
        raise TypeError(
            f"{handler.name} returned {type(returned).__name__}: return an event, a list of "
            "events, None or belvedere.Reply"
        )
    for event in events:
        if not isinstance(event, Event) or isinstance(event, Command):
            raise TypeError(f"{handler.name} returned {event!r}, which is not an event")
    return events, result


async def decide(aggregate: Aggregate, handler: CommandHandler, command: Any) -> Decision:
    """Run ``handler`` on a copy of ``aggregate``: on acceptance the events are applied to
    ``aggregate`` itself; on a rejection or a conflict it is left as it was."""
    expected = getattr(command, "expected_version", None)
    if expected is not None and expected != aggregate.version:
        return Decision(
            "conflict",
            [],
            detail=f"expected version {expected}, but the aggregate is at version {aggregate.version}",
            expected=expected,
            version=aggregate.version,
        )
    try:
        returned = handler.fn(aggregate.copy(), command)
        if handler.is_async:
            returned = await returned
    except Rejected as exc:
        return Decision(
            "rejected", [], detail=str(exc) or type(exc).__name__, version=aggregate.version
        )
    events, result = _events_of(returned, handler)
    for event in events:
        aggregate.apply(event)
    return Decision("accepted", events, result=result, version=aggregate.version)
