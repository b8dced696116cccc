"""Command handlers over event-sourced aggregates: the write side of CQRS.

Commands for one aggregate type arrive on its command topic, keyed by aggregate id
(``POST /commands/{name}`` publishes them there too). The worker that holds a command
partition is its only writer. It folds the partition's commands, in order, into the
aggregate's snapshot view ``aggregate-<Type>``. Each row holds an aggregate's state and
version, the offsets of its events, and the outcomes of its recent commands. Each command's
handler runs against the current state. The events it accepts are appended to the
aggregate's events topic, in the same partition number, keyed by aggregate id. That topic
is the write database; the snapshot is only a cache of its fold.

A batch runs as a projection's does (:mod:`belvedere.agents.engine`), with one more step:

1. decide each command against the snapshot rows in the partition's transaction;
2. append the accepted events and wait for the broker;
3. checkpoint the rows with the command offset and the events topic's end offset;
4. only now tell each waiting caller its command's outcome.

A crash between steps 2 and 3 leaves events that the snapshot lacks. On restore, the
partition folds its events topic from the end offset its checkpoint recorded. It records
each event's command (the event's causationId) as done, and moves the command offset past
it. So no command runs twice, and no event is emitted twice.

A command id seen before gets its first outcome back and emits nothing. Outcomes are kept
in the aggregate's row, which makes them co-partitioned with the aggregate and written
atomically with its state. They are bounded per aggregate: the last ``keep_commands``,
for at most ``keep_commands_for`` seconds.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from faust.types import TP

from belvedere.agents.aggregates import Aggregate, CommandHandler, annotated_types, decide
from belvedere.agents.engine import send_all
from belvedere.agents.projection import Handler, PartitionState, Projection
from belvedere.agents.surface import AgentsApp
from belvedere.streams.envelope import BadEvent, new_meta
from belvedere.streams.readers import PartitionReader
from belvedere.streams.records import Command
from belvedere.streams.topics import EventTopic
from belvedere.tables.store import PartitionStore
from belvedere.tables.transaction import UnencodableState
from belvedere.tables.view import View

__all__ = ["HEADER_COMMAND_OFFSET", "CommandProjection", "Outcome"]

logger = logging.getLogger(__name__)

#: On an emitted event: the offset of the command that caused it, in the same partition
#: number of the command topic.
HEADER_COMMAND_OFFSET = "bv-command-offset"

#: What a command came to, as stored and as answered (JSON-ready):
#: status (accepted | rejected | conflict | failed), version, at (ms), events
#: ([{eventId, eventType, offset}]), position ([events topic, partition, next offset]),
#: detail, expected, result.
Outcome = dict[str, Any]


@dataclass
class _Unsent:
    aggregate_id: str
    outcome: Outcome
    records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]


def _now_ms() -> int:
    return int(time.time() * 1000)


class CommandProjection(Projection):
    """One aggregate type: its command handlers, and the projection of its commands into
    its snapshot view (see the module docstring)."""

    eager = True
    not_rebuildable = (
        "it holds an aggregate's snapshots, which follow its events topic; replaying "
        "commands would emit their events again"
    )

    def __init__(
        self,
        app: AgentsApp,
        aggregate: type[Aggregate],
        *,
        commands: EventTopic,
        events: EventTopic,
        view: View,
        keep_commands: int,
        keep_commands_for: float,
    ) -> None:
        super().__init__(source=commands, view=view)
        self.app = app
        self.aggregate = aggregate
        self.events = events
        self.keep_commands = keep_commands
        self.keep_commands_for_ms = int(keep_commands_for * 1000)
        self.command_handlers: dict[type[Command], CommandHandler] = {}
        #: Per partition: events decided but not yet appended, and outcomes not yet told.
        self._unsent: dict[int, list[_Unsent]] = {}
        self._untold: dict[int, list[tuple[str, Outcome]]] = {}
        #: Callers waiting for a command's outcome, by command id.
        self._waiters: dict[str, list[asyncio.Future[Outcome]]] = {}

    @property
    def events_topic(self) -> str:
        return self.events.get_topic_name()

    # -- declaring ----------------------------------------------------------------------------

    def add_handler(self, fn: Callable[..., Any]) -> None:
        carried = set(self.source.codec.types.values())
        what = "a command handler takes (aggregate, command)"
        for cls in annotated_types(fn, Command, 1, what):
            if cls not in carried:
                raise TypeError(
                    f"{fn.__qualname__}: {cls.__name__} is not carried by "
                    f"{self.source.get_topic_name()!r}, {self.aggregate.__name__}'s command topic"
                )
            if cls in self.command_handlers:
                raise TypeError(f"{cls.__name__} already has a handler")
            self.command_handlers[cls] = CommandHandler(
                fn, inspect.iscoroutinefunction(fn), fn.__qualname__, self.aggregate
            )
            self.handlers[cls] = Handler(self._handle, True, fn.__qualname__)

    def aggregate_id_of(self, command: Command) -> str:
        """The aggregate a command is for: its key (ValueError if it has none)."""
        return self.source.key_for(command).decode()

    # -- deciding (inside the engine's batch) ------------------------------------------------

    async def _handle(self, txn: Any, command: Command) -> None:
        command_id = command.meta.event_id
        handler = self.command_handlers[type(command)]
        try:
            await self._decide(txn, command, command_id, handler)
        except Exception as exc:
            failed = {"status": "failed", "detail": f"{handler.name}: {exc!r}"}
            self._untold.setdefault(txn.partition, []).append((command_id, failed))
            raise  # the engine rolls back this command's writes and dead-letters it

    async def _decide(
        self, txn: Any, command: Command, command_id: str, handler: CommandHandler
    ) -> None:
        partition = txn.partition
        aggregate_id = self.aggregate_id_of(command)
        row = txn.get(aggregate_id)
        if row is not None:
            seen = row["commands"].get(command_id)
            if seen is not None:
                self._untold.setdefault(partition, []).append(
                    (command_id, {**seen, "duplicate": True})
                )
                return
            aggregate = self.aggregate.from_data(aggregate_id, row["version"], row["state"])
        else:
            aggregate = self.aggregate.new(aggregate_id)
        decision = await decide(aggregate, handler, command)
        outcome: Outcome = {"status": decision.status, "version": decision.version}
        outcome["at"] = _now_ms()
        if decision.detail is not None:
            outcome["detail"] = decision.detail
        if decision.expected is not None:
            outcome["expected"] = decision.expected
        if decision.result is not None:
            outcome["result"] = decision.result
        records = []
        if decision.events:
            key = aggregate_id.encode()
            cause = command.meta
            producer = self.app.conf.id
            codec = self.events.codec
            offset = b"%d" % txn.record.offset
            outcome["events"] = []
            for event in decision.events:
                if codec.types.get(event.event_type) is not type(event):
                    raise TypeError(
                        f"{handler.name} emitted {type(event).__name__}, which "
                        f"{self.events_topic!r} does not carry"
                    )
                meta = new_meta(event, producer=producer, cause=cause)
                headers = [*codec.headers(event), (HEADER_COMMAND_OFFSET, offset)]
                value = codec.encode(event, meta)
                if len(value) > self.app.conf.producer_max_request_size:
                    raise ValueError(
                        f"{handler.name} emitted a {type(event).__name__} of {len(value)} bytes, "
                        f"over the producer's limit ({self.app.conf.producer_max_request_size})"
                    )
                records.append((key, value, headers))
                outcome["events"].append({"eventId": meta.event_id, "eventType": meta.event_type})
        if row is not None or decision.events:
            txn[aggregate_id] = self._row(aggregate, row, command_id, outcome)
        unsent = self._unsent.setdefault(partition, [])
        untold = self._untold.setdefault(partition, [])
        if records:
            unsent.append(_Unsent(aggregate_id, outcome, records))
        untold.append((command_id, outcome))

        def undo(reason: str) -> None:  # the row could not be stored: nothing happened
            if records:
                unsent.pop()
            untold[-1] = (command_id, {"status": "failed", "detail": reason})

        txn.on_rollback(undo)

    def _row(
        self, aggregate: Aggregate, row: dict | None, command_id: str, outcome: Outcome
    ) -> dict[str, Any]:
        commands = dict(row["commands"]) if row is not None else {}
        commands[command_id] = outcome
        oldest = outcome["at"] - self.keep_commands_for_ms
        excess = len(commands) - self.keep_commands
        for seen_id, seen in list(commands.items()):
            if excess <= 0 and seen["at"] >= oldest:
                break
            del commands[seen_id]
            excess -= 1
        try:
            state = aggregate.to_data()
        except TypeError as exc:
            raise UnencodableState(
                f"aggregate {self.aggregate.aggregate_type} {aggregate.id!r}: its state after "
                f"version {aggregate.version} cannot be stored: {exc}"
            ) from None
        return {
            "type": self.aggregate.aggregate_type,
            "id": aggregate.id,
            "version": aggregate.version,
            "state": state,
            "offsets": list(row["offsets"]) if row is not None else [],
            "commands": commands,
        }

    async def before_checkpoint(self, part: PartitionState) -> None:
        """Append the decided events; their offsets go into the rows and outcomes."""
        unsent = self._unsent.pop(part.tp.partition, None)
        if not unsent:
            return
        partition, topic, txn = part.tp.partition, self.events_topic, part.txn
        sent = await send_all(
            self.app.producer, topic, partition, [r for u in unsent for r in u.records]
        )
        done = iter(sent)
        for item in unsent:
            offsets = [next(done) for _ in item.records]
            for event, offset in zip(item.outcome["events"], offsets, strict=True):
                event["offset"] = offset
            item.outcome["position"] = [topic, partition, offsets[-1] + 1]
            row = txn.get(item.aggregate_id)
            row["offsets"].extend(offsets)
            txn[item.aggregate_id] = row
        part.origins[(topic, partition)] = sent[-1] + 1

    def after_checkpoint(self, part: PartitionState) -> None:
        for command_id, outcome in self._untold.pop(part.tp.partition, ()):
            for waiter in self._waiters.pop(command_id, ()):
                if not waiter.done():
                    waiter.set_result(outcome)

    async def after_restore(self, part: PartitionState, reader: PartitionReader) -> bool:
        """Fold events the last checkpoint did not record (a crash after appending them)."""
        self._unsent.pop(part.tp.partition, None)
        self._untold.pop(part.tp.partition, None)
        topic, partition, txn = self.events_topic, part.tp.partition, part.txn
        tp = TP(topic, partition)
        low, high = (await reader.offsets([tp]))[tp]
        start = max(part.origins.get((topic, partition), 0), low)
        if start >= high:
            return False
        found = 0
        async for _, records in reader.read({tp: (start, high)}):
            for record in records:
                found += 1
                self._refold(part, txn, record)
        part.origins[(topic, partition)] = high
        logger.info(
            "aggregate %s[%d]: %d events appended before a crash were folded into the snapshots",
            self.aggregate.aggregate_type, partition, found,
        )  # fmt: skip
        return True

    def _refold(self, part: PartitionState, txn: Any, record: Any) -> None:
        try:
            event = self.events.codec.decode(record.value, headers=record.headers)
        except BadEvent as exc:
            logger.warning("%s[%d]@%d skipped: %s", self.events_topic, record.partition, record.offset, exc)  # fmt: skip
            return
        aggregate_id = bytes(record.key).decode()
        row = txn.get(aggregate_id)
        if row is None:
            aggregate = self.aggregate.new(aggregate_id)
        else:
            aggregate = self.aggregate.from_data(aggregate_id, row["version"], row["state"])
        aggregate.apply(event)
        meta = event.meta
        command_id = meta.causation_id
        summary = {"eventId": meta.event_id, "eventType": meta.event_type, "offset": record.offset}
        outcome: Outcome = (row or {}).get("commands", {}).get(command_id) or {
            "status": "accepted",
            "events": [],
        }
        outcome = {**outcome, "version": aggregate.version, "at": _now_ms()}
        outcome["events"] = [*outcome["events"], summary]
        outcome["position"] = [self.events_topic, record.partition, record.offset + 1]
        new = self._row(aggregate, row, command_id or meta.event_id, outcome)
        new["offsets"].append(record.offset)
        txn[aggregate_id] = new
        part.dirty += 1
        for name, value in record.headers or ():
            if name == HEADER_COMMAND_OFFSET:
                part.next_offset = max(part.next_offset, int(bytes(value)) + 1)

    async def on_start(self) -> None:
        await self.events.maybe_declare()

    # -- asking (the HTTP side) -------------------------------------------------------------

    def recorded(self, store: PartitionStore, aggregate_id: str, command_id: str) -> Outcome | None:
        """The outcome a command id already had, from a served partition's store."""
        data = store.get(self.view.store_key(aggregate_id))
        if data is None:
            return None
        return self.view.decode_value(data)["commands"].get(command_id)

    async def submit(
        self,
        command: Command,
        *,
        command_id: str,
        partition: int,
        correlation_id: str | None,
        timeout: float,
    ) -> Outcome:
        """Publish ``command`` and wait until this worker has decided it (TimeoutError if
        not within ``timeout``: the caller may send it again with the same id)."""
        waiter: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(command_id, []).append(waiter)
        try:
            await self.source.publish(
                command,
                event_id=command_id,
                correlation_id=correlation_id,
                partition=partition,
            )
            return await asyncio.wait_for(asyncio.shield(waiter), timeout)
        finally:
            left = [w for w in self._waiters.get(command_id, ()) if w is not waiter]
            if left:
                self._waiters[command_id] = left
            else:
                self._waiters.pop(command_id, None)
