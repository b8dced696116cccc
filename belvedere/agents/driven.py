"""Agents on the engine: faust's ``@app.agent`` loop, driven a fetched batch at a time.

::

    @app.agent(orders)
    async def total(stream):
        async for user, order in stream.items():
            revenue[user] += order["amount"]

The agent is a projection (:class:`AgentProjection`) whose one handler steps the agent's
coroutine: the engine calls it per event, inside the partition's savepoint; it hands the
event to the agent's :class:`BatchStream` and sends the coroutine on, which runs the loop
body and stops again at the stream's next ``__anext__``, where no event is pending. No
task, no queue, no ``sleep(0)`` per event: a step is a function call. A body that awaits
something real (``await topic.send(...)``, ``asyncio.sleep``) is awaited as asyncio's Task
would, and the coroutine resumed until it waits for its next event.

What the body writes to its table goes into the partition's transaction (the table is
bound to it for the step), and what it sends or publishes into the partition's outbox
(:mod:`belvedere.streams.outbox`), so the rows, the changelog, the sends and the source
offset are written together at the checkpoint: the table is the fold of every event
exactly once, and each send happens once, whatever kills the worker. A body that raises
rolls its event back, the event goes to the dead letters, and the next event starts the
agent function again. An agent function that
returns has ended: each later event goes to the dead letters (``AgentEnded``).

``stream.group_by(key)`` re-keys exactly, as ``app.projection(..., by=)`` does: the
engine copies each event to an internal topic under its new key (at least once, each copy
marked with its origin), and the agent folds that topic, skipping copies it has applied.
The call is found by starting the agent function once at declaration, up to its first
wait. ``take``, ``through`` and the rest of faust's stream operators are refused on the
engine (``engine=False`` keeps faust's per-event path, which has them).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import types
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

from belvedere.agents.projection import Handler, PartitionState, Projection
from belvedere.tables.table import Table
from belvedere.tables.transaction import PartitionTransaction
from belvedere.tables.view import View

__all__ = ["AgentEnded", "AgentProjection", "BatchStream", "StreamEvent", "StreamMessage"]

logger = logging.getLogger(__name__)

#: faust stream operators that have no exact equivalent here (refused at declaration).
REFUSED = ("take", "through")


class _Wait:
    """What the agent's coroutine yields while no event is pending (never a Future)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "WAIT"


WAIT = _Wait()
_NONE: Any = object()


class AgentEnded(RuntimeError):
    """The agent function returned: nothing is left to handle its events."""


@dataclass(frozen=True, slots=True)
class StreamMessage:
    """Where an event came from (faust's ``event.message``)."""

    topic: str
    partition: int
    offset: int
    #: Seconds since the epoch, as faust gives it.
    timestamp: float
    headers: Any
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """An event with its key and message (faust's ``stream.events()``)."""

    key: Any
    value: Any
    message: StreamMessage


_VALUES, _ITEMS, _EVENTS = 0, 1, 2


class _Cursor:
    """``async for`` over a :class:`BatchStream`: its own awaitable, which yields WAIT up to
    the driver until the step hands it an event."""

    __slots__ = ("_kind", "_stream")

    def __init__(self, stream: BatchStream, kind: int) -> None:
        self._stream = stream
        self._kind = kind

    def __aiter__(self) -> _Cursor:
        return self

    def __anext__(self) -> _Cursor:
        return self

    def __await__(self) -> Generator[Any, None, Any]:
        stream = self._stream
        while (value := stream.pending) is _NONE:
            yield WAIT
        stream.pending = _NONE
        kind = self._kind
        if kind == _VALUES:
            return value
        if kind == _ITEMS:
            return stream.key, value
        return stream.current_event


class BatchStream:
    """What an agent on the engine iterates instead of faust's Stream."""

    def __init__(self, topic: Any, agent: str) -> None:
        self.topic = topic
        self.agent = agent
        #: The event handed in by the step, until the agent takes it.
        self.pending: Any = _NONE
        #: The record of the event being handled.
        self.record: Any = None
        #: Its value, decoded.
        self.value: Any = None
        #: The new key of each value, from ``group_by`` (found at declaration).
        self.regroup: Callable[[Any], Any] | None = None
        #: Set while the agent function is started at declaration, to find ``group_by``.
        self.declaring = False

    def __aiter__(self) -> _Cursor:
        return _Cursor(self, _VALUES)

    def items(self) -> _Cursor:
        """``(key, value)`` pairs."""
        return _Cursor(self, _ITEMS)

    def events(self) -> _Cursor:
        """:class:`StreamEvent`\\ s: key, value and message."""
        return _Cursor(self, _EVENTS)

    @property
    def key(self) -> Any:
        return self.topic.key_of(self.record.key)

    @property
    def current_event(self) -> StreamEvent | None:
        record = self.record
        if record is None:
            return None
        message = StreamMessage(
            record.topic,
            record.partition,
            record.offset,
            record.timestamp / 1000.0,
            record.headers,
            record.key,
            record.value,
        )
        return StreamEvent(self.key, self.value, message)

    def group_by(self, key: Any, *, name: str | None = None, partitions: int | None = None) -> Any:
        """Re-key the stream by ``key`` (a function of the value, a field name, or a faust
        field descriptor): each value then reaches the partition its new key hashes to."""
        if self.declaring:
            if self.regroup is not None:
                raise TypeError(f"agent {self.agent}: one group_by per agent on the engine")
            self.regroup = key_function(key)
        elif self.regroup is None:
            raise TypeError(
                f"agent {self.agent}: stream.group_by() must come before the agent's first "
                "await (it is found by starting the agent at declaration); or pass "
                "engine=False to app.agent"
            )
        return self

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise TypeError(_refusal(self.agent, name))


def key_function(key: Any) -> Callable[[Any], Any]:
    """``group_by``'s key as a function of the value."""
    if isinstance(key, str):
        field = key
        return lambda value: value[field] if isinstance(value, dict) else getattr(value, field)
    if hasattr(key, "getattr") and hasattr(key, "field"):  # a faust FieldDescriptor
        return key.getattr  # type: ignore[no-any-return]
    if inspect.iscoroutinefunction(key) or not callable(key):
        raise TypeError(f"group_by takes a function of the value or a field name, not {key!r}")
    return key  # type: ignore[no-any-return]


def declared_regrouping(fn: Callable[[Any], Any], stream: BatchStream) -> None:
    """Start the agent function once, up to its first wait, to find its ``group_by``."""
    if "group_by" not in names_used(fn):
        return
    stream.declaring = True
    coro = fn(stream)
    try:
        coro.send(None)
    except StopIteration:
        pass
    except TypeError as exc:
        if str(exc).startswith(f"agent {stream.agent}: "):
            raise  # a second group_by
    except Exception:  # the agent's own set-up: it runs for real when the agent starts
        pass
    finally:
        coro.close()
        stream.declaring = False


def _refusal(agent: str, operator: str) -> str:
    return (
        f"agent {agent}: stream.{operator}() does not run on the engine; pass "
        "engine=False to app.agent for faust's per-event path"
    )


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def names_used(fn: Callable[..., Any]) -> set[str]:
    """Every global or attribute name ``fn``'s code (and its nested code) names."""
    return {name for code in _code_objects(fn.__code__) for name in code.co_names}


def tables_written(fn: Callable[..., Any]) -> list[Table]:
    """The tables ``fn`` names: globals its code uses, and its closure's cells."""
    found: list[Table] = []
    candidates = [fn.__globals__.get(name) for name in sorted(names_used(fn))]
    for cell in fn.__closure__ or ():
        try:
            candidates.append(cell.cell_contents)
        except ValueError:  # an empty cell
            continue
    for value in candidates:
        if isinstance(value, Table) and value not in found:
            found.append(value)
    return found


def check_agent_function(fn: Callable[..., Any], name: str) -> None:
    """Refuse, at declaration, what the engine cannot run."""
    if inspect.isasyncgenfunction(fn):
        raise TypeError(
            f"agent {name}: an agent that yields (for agent.ask) does not run on the engine; "
            "pass engine=False to app.agent"
        )
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"agent {name}: an agent is an async def taking (stream)")
    used = names_used(fn)
    for operator in REFUSED:
        if operator in used:
            raise TypeError(_refusal(name, operator))


class AgentProjection(Projection):
    """An ``@app.agent`` function folded by the engine into its table (or, when it writes
    no table, a progress view ``agent-<name>``: one row per partition). What it sends or
    publishes waits in the partition's outbox and is written with the checkpoint."""

    buffers_sends = True

    def __init__(
        self,
        source: Any,
        view: View,
        fn: Callable[[Any], Any],
        name: str,
        table: Table | None,
        stream: BatchStream,
        repartition: Any = None,
    ) -> None:
        super().__init__(source=source, view=view, by=stream.regroup, repartition=repartition)
        self.fn = fn
        self.name = name
        self.table = table
        self.stream = stream
        if repartition is not None:  # the keys it sees are the copies' (the new keys)
            stream.topic = repartition
        self._coro: Any = None
        #: Set while a step awaits something real: other steps wait for it.
        self._busy: asyncio.Event | None = None
        self.ended = False
        self.every_event = Handler(self._step, True, name)
        if table is None:
            self.not_rebuildable = (  # type: ignore[misc]
                "an agent without a table keeps nothing to rebuild; its effects happened "
                "when it first handled its events"
            )

    def __repr__(self) -> str:
        return f"<agent {self.name} on {self.source.get_topic_name()!r} into {self.view.name!r}>"

    async def send(self, *, key: Any = None, value: Any = None, **kwargs: Any) -> Any:
        """Send to the agent's topic (faust's ``agent.send``)."""
        return await self.source.send(key=key, value=value, **kwargs)

    async def before_checkpoint(self, part: PartitionState) -> None:
        if self.table is None:  # so that the changelog carries the offset to the next owner
            part.txn.put_local(part.tp.partition, {"nextOffset": part.next_offset})

    # -- stepping the coroutine --------------------------------------------------------

    def _step(self, txn: PartitionTransaction, event: Any) -> Any:
        """Hand ``event`` to the agent and run it to its next wait (None), or return what
        to await when the body awaits something real."""
        if self._busy is not None:
            return self._after_busy(txn, event)
        stream = self.stream
        stream.record = txn.record
        stream.value = event
        coro = self._coro
        if coro is None:
            if self.ended:
                raise AgentEnded(f"agent {self.name} returned; it handles no more events")
            coro = self._coro = self.fn(stream)
            signal = self._send(coro, txn)
            if self._coro is None:
                raise AgentEnded(f"agent {self.name} returned before taking an event")
            if signal is not WAIT:
                return self._drive(coro, signal, txn, event)
        stream.pending = event
        signal = self._send(coro, txn)
        if signal is WAIT:
            return None
        return self._drive(coro, signal, txn, _NONE)

    def _send(self, coro: Any, txn: PartitionTransaction) -> Any:
        table = self.table
        if table is not None:
            table.bind(txn)
        try:
            return coro.send(None)
        except StopIteration:
            self._coro = None
            self.ended = True
            logger.warning("agent %s returned: its later events go to the dead letters", self.name)
            if self.stream.pending is not _NONE:
                self.stream.pending = _NONE
                raise AgentEnded(f"agent {self.name} returned before taking this event") from None
            return WAIT
        except BaseException:
            self._coro = None
            self.stream.pending = _NONE
            raise
        finally:
            if table is not None:
                table.bind(None)

    async def _drive(self, coro: Any, signal: Any, txn: PartitionTransaction, event: Any) -> None:
        """Await what the body awaits, resuming it until it waits for its next event (and
        hand it ``event`` then, if it is still to be handled)."""
        busy = self._busy = asyncio.Event()
        try:
            while True:
                if signal is WAIT:
                    if event is _NONE or self._coro is None:
                        return
                    self.stream.pending, event = event, _NONE
                elif signal is None:  # a bare yield: asyncio.sleep(0)
                    await asyncio.sleep(0)
                elif asyncio.isfuture(signal):
                    await asyncio.wait((signal,))  # the body reads its result when resumed
                else:
                    coro.close()
                    self._coro = None
                    raise RuntimeError(f"agent {self.name} awaited {signal!r}, not a future")
                signal = self._send(coro, txn)
        except asyncio.CancelledError:
            if self._coro is coro:  # the worker stops: the event is rolled back
                coro.close()
                self._coro = None
                self.stream.pending = _NONE
            raise
        finally:
            self._busy = None
            busy.set()

    async def _after_busy(self, txn: PartitionTransaction, event: Any) -> None:
        while self._busy is not None:
            await self._busy.wait()
        result = self._step(txn, event)
        if result is not None:
            await result
