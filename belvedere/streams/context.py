"""Which event is being handled right now, so that what a handler publishes inherits from it.

Inside a faust agent the current event is faust's own contextvar (set by the stream for each
event it yields), so correlation propagates with no user code. Elsewhere (an HTTP handler,
a script) ``with caused_by(event):`` sets it explicitly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

from faust.streams import current_event

from belvedere.streams.envelope import EventMeta
from belvedere.streams.records import Event

__all__ = [
    "caused_by",
    "current_cause",
    "enter_cause",
    "leave_cause",
    "rebuild_target",
    "replaying",
    "side_effects_suppressed",
]

_cause: ContextVar[EventMeta | None] = ContextVar("belvedere_cause", default=None)
_replaying: ContextVar[bool] = ContextVar("belvedere_replaying", default=False)
_target: ContextVar[tuple[str, int, int] | None] = ContextVar("belvedere_rebuild", default=None)


def current_cause() -> EventMeta | None:
    """The envelope of the event being handled, if any."""
    meta = _cause.get()
    if meta is not None:
        return meta
    event = current_event()
    if event is None:
        return None
    return getattr(event.value, "meta", None)


@contextmanager
def caused_by(event: Event | EventMeta) -> Iterator[None]:
    meta = getattr(event, "meta", event)
    if meta is None:
        raise ValueError("caused_by() needs an event read from a topic (it has no envelope yet)")
    token = _cause.set(meta)
    try:
        yield
    finally:
        _cause.reset(token)


def enter_cause(meta: EventMeta | None) -> Token[EventMeta | None]:
    """``caused_by`` without the context manager, for the projection engine's per-event
    path (where a ``with`` per event would cost more than the handler)."""
    return _cause.set(meta)


def leave_cause(token: Token[EventMeta | None]) -> None:
    _cause.reset(token)


def side_effects_suppressed() -> bool:
    """True while a projection replays history into a new generation of its view.

    The events it replays had their effects when they were first handled; publishing
    them again would repeat those effects (and so would dead-lettering the ones the old
    code already dead-lettered: see :mod:`belvedere.streams.dead_letters`).
    """
    return _replaying.get()


def rebuild_target() -> tuple[str, int, int] | None:
    """(view, generation being built, generation serving) while a rebuild replays."""
    return _target.get()


@contextmanager
def replaying(view: str | None = None, generation: int = 0, active: int = 0) -> Iterator[None]:
    token = _replaying.set(True)
    target = _target.set((view, generation, active) if view is not None else None)
    try:
        yield
    finally:
        _target.reset(target)
        _replaying.reset(token)
