"""Rebuilding a view into a new generation while the current one keeps serving.

``start`` writes the view's generation record (see :mod:`belvedere.tables.generations`)
naming a new generation. Every worker follows the control topic, and for each source
partition it owns:

1. *replaying*: folds the source partition's history (from its start, or from a
   timestamp) into the new generation's own store and changelog, a chunk at a time,
   with the projection's side effects suppressed. With helper processes
   (:mod:`belvedere.agents.replay_processes`, Kafka only) the history is folded there,
   on the machine's other cores, and the worker replays what is left once they end;
2. *following*: once caught up with the live position, folds each live batch into both
   generations (the new one still without side effects), and says so;
3. the worker owning partition 0 sees every partition following and writes the switch,
   unless it must refuse it (below);
   each worker then serves the new generation for each of its partitions (a partition
   that moved in the meantime switches as soon as it has caught up here) and deletes the
   old generation's files. When every partition has switched, the coordinator deletes
   the old changelog topic.

Reads never see a partly built generation: a partition serves the new one only once it
holds every event the old one held.

An event the new code fails on, which the old code did not dead-letter, is dead-lettered
with the new generation's number (:mod:`belvedere.streams.dead_letters`); the switch is
refused while there are any, unless the operator accepted them. Each partition's progress
names the fingerprint of the projection code that folded it; the switch is refused when
they differ (workers running different releases, or one restarted with other code in the
middle of the rebuild): that generation cannot be trusted, and a new rebuild replaces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from typing import Any

from faust.types import TP

from belvedere.agents.engine_surface import Decode, EngineSurface
from belvedere.agents.projection import PartitionState, Slot, slot
from belvedere.agents.replay_processes import (
    Replayed,
    ReplayHelpers,
    ReplayShare,
    can_replay_elsewhere,
)
from belvedere.streams.clients import EmbeddedClient, client_for
from belvedere.streams.context import replaying
from belvedere.streams.readers import PartitionReader, reader_for
from belvedere.tables.generations import (
    Generation,
    Generations,
    PartitionProgress,
    control_topic,
    gen_key,
    part_key,
)
from belvedere.tables.view import PartitionStatus

__all__ = ["RebuildConflict", "Rebuilder", "code_fingerprint"]

logger = logging.getLogger(__name__)

#: Seconds between two reads of the control topic, and between two progress reports.
POLL = 0.2
REPORT_EVERY = 1.0
#: Seconds of folding the replay aims at between two turns of the event loop, and the
#: fewest and most events it folds in one go to get there (it starts at 256).
SLICE_SECONDS = 0.01
SLICE_EVENTS = (1, 8192)


def _delete(store: Any, directory: Any) -> None:
    """Delete a retired generation's partition, and its directory once empty."""
    store.destroy()
    with contextlib.suppress(OSError):  # not empty yet, or another partition's did it
        directory.rmdir()


class RebuildConflict(Exception):
    """A rebuild of this view is already under way."""


def code_fingerprint(projection: Any) -> str:
    """A short hash of the source of the projection's handlers: equal on two processes
    when they fold with the same code (as far as the handlers' own text goes)."""
    digest = hashlib.sha256()
    for cls, handler in sorted(projection.handlers.items(), key=lambda item: item[0].__name__):
        fn = getattr(handler.fn, "__func__", handler.fn)
        try:
            source = inspect.getsource(fn).encode()
        except (OSError, TypeError):  # no source file: its compiled code then
            code = getattr(fn, "__code__", None)
            source = code.co_code if code is not None else repr(fn).encode()
        digest.update(b"%s\0%s\0" % (cls.__name__.encode(), source))
    return digest.hexdigest()[:12]


def _shares(
    parts: list[PartitionState], count: int, left: dict[TP, int]
) -> list[list[PartitionState]]:
    """``parts`` in up to ``count`` shares of about as many events each (the largest
    first, each to the least loaded share)."""
    shares: list[list[PartitionState]] = [[] for _ in range(min(count, len(parts)))]
    loads = [0] * len(shares)
    for part in sorted(parts, key=lambda p: left[p.tp], reverse=True):
        lightest = loads.index(min(loads))
        shares[lightest].append(part)
        loads[lightest] += left[part.tp]
    return shares


class _Delegation:
    """Partitions of a new generation a helper process replays."""

    def __init__(self, parts: list[PartitionState], run: asyncio.Future[Replayed]) -> None:
        self.parts = parts
        #: The helper's run (needs no lock), then the worker taking the partitions back.
        self.run = run
        self.take_back: asyncio.Future[None] | None = None


class Rebuilder:
    """A worker's part in its views' rebuilds (one per projection engine)."""

    def __init__(self, engine: EngineSurface) -> None:
        self.engine = engine
        self.partitions = engine.partitions
        self.app = engine.app
        self.state = Generations()
        self.reader: PartitionReader | None = None
        self._replay_reader: PartitionReader | None = None
        self._control_offset = 0
        self._poll_lock = asyncio.Lock()
        #: Set when this worker wrote a control record: act on it without waiting a poll.
        self._wake = asyncio.Event()
        #: Set when a partition starts replaying: read it without waiting a poll.
        self._adopted = asyncio.Event()
        self._reported: dict[tuple[str, int, int], str] = {}
        self._last_report: dict[TP, float] = {}
        self._retiring: set[asyncio.Future[None]] = set()
        #: Partitions a helper process replays (each one's delegation).
        self._delegated: dict[Slot, _Delegation] = {}
        self._fingerprints: dict[str, str] = {}
        #: Events the replay folds between two turns of the event loop (see ``_sliced``).
        self._slice = 256

    @property
    def topic(self) -> str:
        return control_topic(self.app.conf.id)

    def generation(self, view: str) -> Generation:
        return self.state.of(view)

    def report(self, view: str) -> dict[str, Any]:
        return self.state.report(view, self.app.views[view].partitions or 1)

    async def status(self, view: str) -> dict[str, Any]:
        """``report``, with the events the generation being built (else the one serving, if
        a rebuild made it) failed on, by kind, and the fingerprints of the code folding it."""
        report = self.report(view)
        gen = self.generation(view)
        generation = gen.building if gen.building is not None else gen.active
        failures = await self.failures(view, generation) if generation > 1 else {}
        # no partition has reported its code yet (or the switch came): the code this worker runs
        code = report["code"] or [self.fingerprint(view)]
        return {**report, "code": code, "failures": failures, "failed": sum(failures.values())}

    async def failures(self, view: str, generation: int) -> dict[str, int]:
        topic = self.engine.projections[view].fold_topic.get_topic_name()
        return await self.app.dead_letters.failures(topic, view, generation)

    def fingerprint(self, view: str) -> str:
        found = self._fingerprints.get(view)
        if found is None:
            found = self._fingerprints[view] = code_fingerprint(self.engine.projections[view])
        return found

    # -- the control topic ------------------------------------------------------------------

    async def load(self) -> None:
        """Read the whole control topic: which generation of each view to restore."""
        await self.app.topic(
            self.topic, partitions=1, compacting=True, internal=True
        ).maybe_declare()
        self.reader = reader_for(self.app)
        await self._poll()

    async def _poll(self) -> None:
        assert self.reader is not None
        ctp = TP(self.topic, 0)
        async with self._poll_lock:
            start, end = (await self.reader.offsets([ctp]))[ctp]
            low = max(self._control_offset, start)
            if end > low:
                async for _, batch in self.reader.read({ctp: (low, end)}):
                    self.state.apply((bytes(r.key), r.value) for r in batch)
                self._control_offset = end

    async def _write(self, key: bytes, value: bytes) -> None:
        await self.app.producer.send_and_wait(self.topic, key, value, 0, None, None)
        self._wake.set()

    async def follow_control(self) -> None:
        """Act on what the control topic says, for as long as the worker runs."""
        engine = self.engine
        while not engine.should_stop:
            try:
                await self._poll()
                for name in list(self.state.views):
                    if name in engine.projections and not self._settled(name):
                        await self._act(name)
            except Exception:  # the next poll tries again; the rebuild waits meanwhile
                logger.exception("views control topic: poll failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL)
            self._wake.clear()

    def _settled(self, name: str) -> bool:
        """Nothing to do for this view here: no rebuild, and this worker is on its generation
        (so the control loop does not take the engine's lock, which live batches need)."""
        gen = self.generation(name)
        view = self.app.views[name]
        return (
            gen.building is None
            and gen.previous is None
            and view.generation == gen.active
            and not any(p.projection.view is view for p in self.partitions.building.values())
        )

    async def _act(self, name: str) -> None:
        view = self.app.views[name]
        gen = self.generation(name)
        partitions = self.partitions
        async with partitions.lock:
            if gen.building is not None:
                await self._start_building(view, gen.building)
            if view.generation != gen.active:
                logger.info("view %s: switching to generation %d", name, gen.active)
                view.generation = gen.active
            for key, part in list(partitions.building.items()):
                if part.projection.view is not view:
                    continue
                if part.generation == gen.active and part.mode == "following":
                    await self._switch(part)
                elif part.generation not in (gen.active, gen.building):  # abandoned
                    partitions.abandon(key)
                    part.store.destroy()
            if gen.previous is not None:  # retiring the old generation waits for these
                for part in list(partitions.active.values()):
                    if part.projection.view is view and part.generation == gen.active:
                        await self._progress(part, "switched")
        if self._coordinates(view):
            await self._coordinate(view, gen)

    def _coordinates(self, view: Any) -> bool:
        projection = self.engine.projections[view.name]
        tp = TP(projection.fold_topic.get_topic_name(), 0)
        return slot(projection, tp) in self.partitions.active

    async def _coordinate(self, view: Any, gen: Generation) -> None:
        partitions = view.partitions or 1
        following = {"following", "switched"}
        if gen.building is not None and self.state.all_in(
            view.name, gen.building, partitions, following
        ):
            refusal = await self._refusal(view.name, gen)
            if refusal is None:
                logger.info("view %s: every partition caught up; switching", view.name)
                await self._write(gen_key(view.name), gen.switched().encode())
            elif refusal != gen.refused:
                logger.warning(
                    "view %s: not switching to generation %d: %s", view.name, gen.building, refusal
                )
                await self._write(gen_key(view.name), gen.refuse(refusal).encode())
        elif gen.previous is not None and self.state.all_in(
            view.name, gen.active, partitions, {"switched"}
        ):
            old = view.changelog_topic_for(gen.previous)
            client = client_for(
                self.app.conf.broker, self.app.conf.datadir, self.app.broker_security
            )
            if isinstance(client, EmbeddedClient):  # this process's own log: not from a thread
                client.delete_topic(old)
            else:
                await asyncio.to_thread(client.delete_topic, old)
            await self._write(gen_key(view.name), gen.cleaned().encode())
            logger.info("view %s: generation %d retired (%s deleted)", view.name, gen.previous, old)

    async def _refusal(self, view: str, gen: Generation) -> str | None:
        """Why the view must not switch to the generation being built (None: it may)."""
        assert gen.building is not None
        codes = self.state.codes(view, gen.building)
        if len(codes) > 1:
            return (
                f"the partitions of generation {gen.building} were folded by different "
                f"projection code (fingerprints {', '.join(sorted(codes))}): run one release "
                "on every worker, then rebuild again"
            )
        if gen.accept_failures:
            return None
        failures = await self.failures(view, gen.building)
        if not failures:
            return None
        kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(failures.items()))
        return (
            f"{sum(failures.values())} event(s) failed under the new code ({kinds}); they are "
            f"dead letters of generation {gen.building}. Fix the code and rebuild again, or "
            "accept them (belvedere rebuild --accept-failures)"
        )

    async def start(
        self, name: str, from_timestamp: int | None = None, *, accept_failures: bool = False
    ) -> Generation:
        """Begin rebuilding view ``name``; returns its new generation record.

        With ``accept_failures``, a rebuild of the view already under way may switch even
        though events failed under its code; a refused one is replaced by a new rebuild."""
        if name not in self.engine.projections:
            raise LookupError(f"view {name!r} has no projection to rebuild it from")
        refusal = self.engine.projections[name].not_rebuildable
        if refusal:
            raise RebuildConflict(f"view {name!r} cannot be rebuilt: {refusal}")
        await self._poll()
        gen = self.generation(name)
        if gen.building is not None and accept_failures:
            accepted = gen.accepted()
            await self._write(gen_key(name), accepted.encode())
            await self._poll()
            return accepted
        if gen.building is not None and not gen.refused:
            raise RebuildConflict(f"view {name!r} is already rebuilding generation {gen.building}")
        if gen.previous is not None:
            raise RebuildConflict(
                f"view {name!r} is still retiring generation {gen.previous}; try again shortly"
            )
        new = gen.start(from_timestamp, accept_failures)
        assert new.building is not None
        await self.engine.declare_changelog(self.app.views[name], new.building)
        await self._write(gen_key(name), new.encode())
        await self._poll()
        return new

    # -- one partition's new generation -------------------------------------------------------

    async def _start_building(self, view: Any, generation: int) -> None:
        """Open the new generation of each live partition of ``view`` here (lock held)."""
        engine = self.engine
        entries = [
            (part.projection, part.tp, generation, PartitionStatus(generation=generation))
            for key, part in self.partitions.active.items()
            if part.projection.view is view
            and part.generation != generation
            and key not in self.partitions.building
            and key not in self._delegated
        ]
        if not entries:
            return
        connecting = asyncio.ensure_future(self._reader().connect())  # the replay reads next
        try:
            await engine.declare_changelog(view, generation)
            fold = engine.projections[view.name].fold_topic.get_topic_name()
            await self.app.dead_letters.declare(fold)  # the replay's (and its helpers') own
            parts = await engine.restore(entries)
        finally:
            await connecting
        await self.replay_parts(parts)

    async def replay_parts(self, parts: list[PartitionState]) -> None:
        """Replay these restored partitions of a new generation (lock held): in helper
        processes when there are some, else in this one."""
        helpers: ReplayHelpers | None = self.app.replay_helpers
        if not parts:
            return
        if helpers is None or not all(can_replay_elsewhere(p.projection) for p in parts):
            for part in parts:
                self.adopt(part)
            return
        await self._position(parts)
        ends = {p.tp: self.partitions.active[p.slot].next_offset for p in parts}
        left = {p.tp: ends[p.tp] - p.next_offset for p in parts}  # events to replay
        todo: dict[str, list[PartitionState]] = {}  # by view
        for part in parts:
            if left[part.tp] > 0:
                todo.setdefault(part.projection.view.name, []).append(part)
            else:
                self.adopt(part)
        for group in (g for view in todo.values() for g in _shares(view, helpers.processes, left)):
            self._delegate(helpers, group, ends)
        # Said once the helpers are on their way: ~5 ms a record, one after another.
        delegated = [part for view in todo.values() for part in view]
        await asyncio.gather(*(self._progress(p, "replaying", force=True) for p in delegated))

    def _delegate(
        self, helpers: ReplayHelpers, parts: list[PartitionState], ends: dict[TP, int]
    ) -> None:
        """Have a helper process replay ``parts`` up to ``ends`` (lock held); the worker
        takes them back when it ends, however it ends."""
        for part in parts:
            part.status.state = "rebuilding"
            part.store.close()  # the helper opens it
        view = parts[0].projection.view
        shares = [
            ReplayShare(p.tp.partition, p.next_offset, ends[p.tp], str(p.store.path)) for p in parts
        ]
        by_partition = {part.tp.partition: part for part in parts}

        async def progress(offsets: dict[int, int]) -> None:
            for partition, offset in offsets.items():
                by_partition[partition].next_offset = offset
                await self._progress(by_partition[partition], "replaying", force=True)

        run = helpers.replay(
            view.name, parts[0].generation, view.generation, view.partitions or 1, shares, progress
        )
        delegation = _Delegation(parts, asyncio.ensure_future(run))
        for part in parts:
            self._delegated[slot(part.projection, part.tp)] = delegation
        delegation.take_back = asyncio.ensure_future(self._take_back(delegation))
        logger.info(
            "view %s g%d: partitions %s replayed by a helper process",
            view.name, parts[0].generation, sorted(by_partition),
        )  # fmt: skip

    async def _take_back(self, delegation: _Delegation) -> None:
        """Once a helper ended, open its partitions here: they replay whatever it left."""
        engine = self.engine
        parts = delegation.parts
        first = parts[0]
        view, generation = first.projection.view, first.generation
        try:
            done = await asyncio.shield(delegation.run)
            engine.count_fold(view.name, "rebuild", done.fold_seconds, done.fold_events)
            self.app.dead_letters.suppressed.update(done.suppressed)
            for (topic, kind), n in done.sent.items():
                self.app.dead_letters.count(view.name, topic, kind, n)
            logger.info(
                "view %s g%d: the helper replayed partitions %s up to %s (peak RSS %.0f MB)",
                view.name, generation, sorted(p.tp.partition for p in parts), done.reached,
                done.peak_rss_mb,
            )  # fmt: skip
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if engine.should_stop or (task is not None and task.cancelling()):
                raise  # the worker is stopping
            # A partition was revoked: the helper was stopped; the others come back here.
        except Exception as exc:
            logger.warning(
                "view %s g%d: replaying partitions %s in this process (%s)",
                view.name, generation, sorted(p.tp.partition for p in parts), exc,
            )  # fmt: skip
        async with self.partitions.lock:
            mine = [
                part
                for part in parts
                if self._delegated.get(slot(part.projection, part.tp)) is delegation
            ]
            for part in mine:
                del self._delegated[slot(part.projection, part.tp)]
            if engine.should_stop or self.generation(view.name).building != generation:
                return  # stopping, or the rebuild was abandoned: its files go at the next start
            still = [part for part in mine if part.slot in self.partitions.active]
            restored = {
                part.tp: part
                for part in await engine.restore(
                    [(p.projection, p.tp, p.generation, p.status) for p in still]
                )
            }
            for old in still:
                self.adopt(restored[old.tp], positioned_like=old)

    async def revoked(self, tps: set[TP]) -> None:
        """Stop the helpers replaying any of ``tps`` (lock held): the partition's next
        owner writes its changelog from now on. Their other partitions go on here."""
        stopping = {d for (_, tp), d in self._delegated.items() if tp in tps}
        for delegation in stopping:
            delegation.run.cancel()
            first = delegation.parts[0]
            logger.info(
                "view %s g%d: partitions %s revoked; their replay helper stopped",
                first.projection.view.name, first.generation,
                sorted(p.tp.partition for p in delegation.parts if p.tp in tps),
            )  # fmt: skip
        if stopping:
            await asyncio.wait([d.run for d in stopping])

    def adopt(self, part: PartitionState, positioned_like: PartitionState | None = None) -> None:
        """A restored partition of a generation being built: replay into it (from where
        it is, its replay's start kept from ``positioned_like``: a helper's partition)."""
        part.mode = "replaying"
        part.positioned = positioned_like is not None
        if positioned_like is not None:
            part.replay_start = positioned_like.replay_start
            part.replay_from = positioned_like.replay_from
            part.replay_began = positioned_like.replay_began
        part.status.state = "rebuilding"
        self.partitions.build(part)
        self._adopted.set()

    async def follow(
        self, part: PartitionState, records: Any, live_next: int, decode: Decode | None = None
    ) -> None:
        """Fold a live batch into a caught-up new generation, up to where the live one got."""
        done = [r for r in records if r.offset < live_next]
        if not done:
            return
        if done[0].offset > part.next_offset:
            part.mode = "replaying"  # a gap: let the replay fill it
            return
        view = part.projection.view
        with replaying(view.name, part.generation, view.generation):
            await self.engine.fold(part, done, decode)
        part.next_offset = max(part.next_offset, live_next)

    def _reader(self) -> PartitionReader:
        if self._replay_reader is None:
            self._replay_reader = reader_for(self.app)
        return self._replay_reader

    async def _position(self, parts: list[PartitionState]) -> None:
        """Where each replay starts: the log start, or the given timestamp (one offsets
        request for them all, and one per timestamp)."""
        reader = self._reader()
        bounds = await reader.offsets([part.tp for part in parts])
        since: dict[int, list[TP]] = {}  # the timestamps asked for, and of which partitions
        for part in parts:
            stamp = self.generation(part.projection.view.name).from_timestamp
            if stamp is not None:
                since.setdefault(stamp, []).append(part.tp)
        found = {
            (stamp, tp): offset
            for stamp, tps in since.items()
            for tp, offset in (await reader.offsets_for_time(tps, stamp)).items()
        }
        for part in parts:
            gen = self.generation(part.projection.view.name)
            start, _ = bounds[part.tp]
            if gen.from_timestamp is not None:
                start = max(start, found[gen.from_timestamp, part.tp])
            fresh = not part.store.source_offsets()
            if fresh or part.next_offset < start:
                part.next_offset = start
            part.replay_start = start
            part.replay_began = time.monotonic()
            part.replay_from = part.next_offset
            part.positioned = True
            logger.info(
                "view %s[%d] g%d: replaying from offset %d (history from %d%s)",
                part.projection.view.name, part.tp.partition, part.generation, part.next_offset,
                start, "" if gen.from_timestamp is None else f", at or after {gen.from_timestamp} ms",
            )  # fmt: skip

    async def _caught_up(self, part: PartitionState) -> None:
        if part.generation == part.projection.view.generation:
            await self._switch(part)
        else:
            part.mode = "following"
            await self._progress(part, "following")
            logger.info(
                "view %s[%d] g%d: caught up at offset %d; following live events",
                part.projection.view.name, part.tp.partition, part.generation, part.next_offset,
            )  # fmt: skip

    async def _switch(self, new: PartitionState) -> None:
        """Serve ``new`` instead of the live partition (lock held, both at one offset)."""
        engine = self.engine
        old = await self.partitions.switch(new)
        view = new.projection.view
        # Closing a database flushes it: off the event loop, the partition serves already.
        retire = asyncio.ensure_future(
            asyncio.to_thread(_delete, old.store, engine.store_dir(view, old.generation))
        )
        self._retiring.add(retire)
        retire.add_done_callback(self._retiring.discard)
        await self._progress(new, "switched")
        logger.info(
            "view %s[%d]: now serving generation %d (generation %d deleted)",
            view.name, new.tp.partition, new.generation, old.generation,
        )  # fmt: skip

    async def _progress(self, part: PartitionState, state: str, *, force: bool = False) -> None:
        view, partition = part.projection.view.name, part.tp.partition
        if not force and self._reported.get((view, partition, part.generation)) == state:
            return
        live = self.partitions.active.get(part.slot)
        replayed = part.next_offset - part.replay_from
        elapsed = time.monotonic() - part.replay_began if part.positioned else 0.0
        known = self.state.progress.get(view, {}).get(partition)
        codes = set(known.codes) if known and known.generation == part.generation else set()
        codes.add(self.fingerprint(view))
        progress = PartitionProgress(
            generation=part.generation,
            state=state,
            start=part.replay_start if part.positioned else part.next_offset,
            offset=part.next_offset,
            end=max(live.next_offset if live is not None else 0, part.next_offset),
            rate=replayed / elapsed if elapsed > 0 and state == "replaying" else 0.0,
            codes=tuple(sorted(codes)),
        )
        await self._write(part_key(view, partition), progress.encode())
        self._reported[(view, partition, part.generation)] = state

    # -- the replay ----------------------------------------------------------------------

    async def replay(self) -> None:
        """Fold history into every partition still replaying, batch by batch as it is read
        (the reader fetches the next batches while one is folded)."""
        engine, partitions = self.engine, self.partitions
        while not engine.should_stop:
            self._adopted.clear()
            ranges, parts = await self._next_ranges()
            if not ranges:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._adopted.wait(), POLL / 2)
                continue
            assert self._replay_reader is not None
            read_to = {tp: low for tp, (low, _) in ranges.items()}
            async for tp, batch in self._replay_reader.read(ranges):
                for piece in self._sliced(batch):
                    previous, read_to[tp] = read_to[tp], piece[-1].offset + 1
                    async with partitions.lock:
                        part = parts[tp]
                        if (
                            partitions.building.get(part.slot) is not part
                            or part.mode != "replaying"
                        ):
                            continue  # revoked (or replaced) while it was read
                        if part.next_offset < previous:
                            continue  # it missed an earlier batch: read again from it later
                        view = part.projection.view
                        began = time.thread_time()  # not the time other processes ran
                        with replaying(view.name, part.generation, view.generation):
                            await engine.fold(part, piece)
                        self._resize(len(piece), time.thread_time() - began)
                        now = time.monotonic()
                        ended = read_to[tp] >= ranges[tp][1]  # the next partition's turn
                        if ended or now - self._last_report.get(tp, 0.0) >= REPORT_EVERY:
                            self._last_report[tp] = now
                            await self._progress(part, "replaying", force=True)
                    # Folding never waits on the embedded broker: let reads, live batches,
                    # progress polls and a stop have their turn between two slices.
                    await asyncio.sleep(0)
            async with partitions.lock:
                for tp, (low, high) in ranges.items():
                    part = parts[tp]
                    if partitions.building.get(part.slot) is part and part.next_offset >= low:
                        part.next_offset = max(part.next_offset, high)  # gaps left by compaction

    def _sliced(self, batch: Sequence[Any]) -> Iterator[Sequence[Any]]:
        start = 0
        while start < len(batch):
            end = start + self._slice
            yield batch[start:end]
            start = end

    def _resize(self, events: int, seconds: float) -> None:
        """Fold about SLICE_SECONDS' worth of events next time: handlers differ a thousandfold
        in cost, and a slow one must not hold the loop for a fixed count's time. Measured in
        CPU time: on a busy machine wall time would shrink the slices to single events."""
        if events < self._slice:
            return  # a batch's tail says little
        low, high = SLICE_EVENTS
        if seconds > 2 * SLICE_SECONDS:
            self._slice = max(low, self._slice // 2)
        elif seconds < SLICE_SECONDS / 2:
            self._slice = min(high, self._slice * 2)

    async def _next_ranges(self) -> tuple[dict[TP, tuple[int, int]], dict[TP, PartitionState]]:
        """What each replaying partition still has to read: up to the live position now.
        Two views rebuilding from one source partition take turns reading it."""
        partitions = self.partitions
        ranges, parts = {}, {}
        async with partitions.lock:
            unpositioned = [
                part
                for key, part in partitions.building.items()
                if part.mode == "replaying" and not part.positioned and key in partitions.active
            ]
            if unpositioned:
                await self._position(unpositioned)
                for part in unpositioned:
                    await self._progress(part, "replaying", force=True)
            for key, part in list(partitions.building.items()):
                live = partitions.active.get(key)
                tp = part.tp
                if part.mode != "replaying" or live is None or tp in ranges:
                    continue
                if part.next_offset >= live.next_offset:
                    await self._caught_up(part)
                    continue
                ranges[tp] = (part.next_offset, live.next_offset)
                parts[tp] = part
        return ranges, parts

    async def close(self) -> None:
        running = [f for d in self._delegated.values() for f in (d.run, d.take_back) if f]
        for future in running:
            future.cancel()
        if running:
            await asyncio.wait(running)
        self._delegated.clear()
        if self._retiring:
            await asyncio.gather(*self._retiring)
        for reader in (self.reader, self._replay_reader):
            if reader is not None:
                await reader.close()
        await self.app.dead_letters.close()
        self.reader = self._replay_reader = None

    # -- files ---------------------------------------------------------------------------

    def remove_stale_files(self, view: Any) -> None:
        """Delete this machine's files of the view's retired or abandoned generations."""
        gen = self.generation(view.name)
        keep = {self.engine.store_dir(view, g).name for g in (gen.active, gen.building) if g}
        root = self.engine.store_dir(view, gen.active).parent
        if not root.exists():
            return
        for path in root.glob(f"{view.name}-g*"):
            if path.name not in keep and path.name[len(view.name) + 2 :].isdigit():
                logger.info("view %s: removing retired files %s", view.name, path)
                shutil.rmtree(path, ignore_errors=True)
