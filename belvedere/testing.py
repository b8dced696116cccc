"""A test driver for every kind of agent: given events, when the app runs, then its rows
and the events it sent, in process, with no broker and no worker::

    from belvedere.testing import TestDriver, event

    with TestDriver(app) as driver:
        driver.send(orders, OrderPlaced(order_id="o-1", amount=5), timestamp=noon)
        driver.run()
        assert driver.view(revenue)["o-1"] == 5
        assert [e.event_type for e in driver.sent(receipts)] == ["ReceiptSent"]

Every kind of agent is a projection of ``app.engine``, and the driver runs the engine's own
code on them: the given events are encoded by their topic's codec into an embedded log in
a temporary directory, fetched into ``ProjectionEngine.on_batch`` as a worker's tap hands
them over (re-keying, decoding, upcasting and dead letters included), folded into real
RocksDB stores and checkpointed, changelogs and all. What handlers publish lands in that
log; events published to topics the app's projections read are folded in turn, until
nothing is left to fold. For the duration the app's broker is that log and its data dir
the temporary one; both are put back on exit.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import tempfile
import time
import warnings
from collections.abc import Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from faust.exceptions import AlreadyConfiguredWarning
from faust.types import TP
from yarl import URL

from belvedere.agents.projection import Projection, slot
from belvedere.agents.testing import AggregateFixture, SagaFixture, run
from belvedere.app import App
from belvedere.compat.faust import clients, set_clients
from belvedere.streams.dead_letters import DeadLetter, DeadLetters, dead_letter_topic
from belvedere.streams.embedded.log import Log
from belvedere.streams.embedded.producer import Producer
from belvedere.streams.readers import EmbeddedReader
from belvedere.streams.records import Event
from belvedere.streams.stamp import event, given_key
from belvedere.streams.topics import EventTopic
from belvedere.tables.store import StoreBudget
from belvedere.tables.view import NotLocal, PartitionStatus, View

__all__ = [
    "AggregateFixture",
    "DriverProducer",
    "Rows",
    "SagaFixture",
    "TestDriver",
    "event",
]

T = TypeVar("T")

#: Records handed to the engine per batch, as a fetch would.
BATCH = 500


class DriverProducer(Producer):
    """The embedded producer, noting the order of every append across topics, so that
    ``sent`` lists events in the order they were published."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.appended: list[tuple[str, int, int]] = []

    def _append(self, topic: str, key: Any, value: Any, partition: Any, timestamp: Any, headers: Any) -> Any:  # fmt: skip
        meta = super()._append(topic, key, value, partition, timestamp, headers)
        self.appended.append((topic, meta.partition, meta.offset))
        return meta

    def send_batches(self, batches: Any) -> Any:
        sent = super().send_batches(batches)
        for metas in sent:
            self.appended.extend((meta.topic, meta.partition, meta.offset) for meta in metas)
        return sent


class Rows(Mapping[Any, Any]):
    """A view's rows as the driver's stores hold them, read anew on each access."""

    def __init__(self, view: View) -> None:
        self.view = view

    def __getitem__(self, key: Any) -> Any:
        try:
            data = self.view.get_encoded(key)
        except NotLocal:  # no event ever reached that partition
            data = None
        if data is None:
            raise KeyError(key)
        return self.view.decode_value(data)

    def __iter__(self) -> Iterator[Any]:
        after = None
        while True:
            page, after = self.view.scan(limit=1000, after=after)
            for key, _ in page:
                yield key
            if after is None:
                return

    def __len__(self) -> int:
        return self.view.count()


class TestDriver:
    """Runs ``app``'s projections, reactors, sagas, aggregates and whatever else is a
    projection of its engine, on events a test gives.

    Use it as a context manager (``with TestDriver(app) as driver``), or call ``close()``.
    ``run()`` folds until nothing is left, at most ``max_rounds`` rounds of the app's
    topics (a chain of agents feeding each other takes one round per link)."""

    __test__ = False  # not a pytest test class

    def __init__(
        self, app: App, *, max_rounds: int = 100, data_dir: str | Path | None = None
    ) -> None:
        self.app = app
        self.max_rounds = max_rounds
        self._made_dir = data_dir is None
        self.data_dir = Path(
            tempfile.mkdtemp(prefix="belvedere-test-") if data_dir is None else data_dir
        )
        self._loop = asyncio.new_event_loop()
        self._open = False
        self._saved: dict[str, Any] = {}
        self._producer: DriverProducer | None = None
        self._log: Log | None = None
        self._given: set[tuple[str, int, int]] = set()
        #: Per topic partition: the next offset to hand to the engine.
        self._position: dict[TP, int] = {}
        self._served: set[tuple[str, TP]] = set()
        #: What the global views read their topics with.
        self._globals: EmbeddedReader | None = None
        try:
            self._call(self._start())
        except BaseException:
            self.close()  # the app as it was
            raise

    # -- running -------------------------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run on the driver's loop, also when called from an async test."""
        result: T = run(coroutine, self._loop)
        return result

    def __enter__(self) -> TestDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def engine(self) -> Any:
        return self.app.engine

    async def _start(self) -> None:
        app, engine = self.app, self.app.engine
        if engine.partitions.all():
            raise RuntimeError(
                f"app {app.conf.id!r} is running (its engine folds partitions): a test "
                "driver takes an app no worker runs"
            )
        self._saved = {
            "broker": app.conf.broker,
            "datadir": app.conf.datadir,
            "clients": clients(app),
            "dead_letters": app.dead_letters,
            "budget": engine.budget,
            "partitions": {view.name: view.state.partitions for view in app.views.values()},
        }
        self._open = True  # from here on, close() puts back what was saved
        broker = self.data_dir / "broker"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AlreadyConfiguredWarning)
            app.conf.broker = [URL.build(scheme="embedded", path=str(broker))]
            app.conf.datadir = self.data_dir
        set_clients(app, (None, None, None, None))
        app.dead_letters = DeadLetters(app)  # counts of this driver's run only
        engine.budget = StoreBudget(8 << 20, 8 << 20)
        self._log = Log.acquire(broker)
        producer = self._producer = DriverProducer(app.transport, loop=asyncio.get_running_loop())
        app.producer = producer
        await producer.start()
        topics: dict[str, EventTopic] = dict(app.event_topics)
        for projection in engine.projections.values():
            for topic in (*projection.sources, projection.fold_topic):
                topics[topic.get_topic_name()] = topic
        for topic in topics.values():
            await topic.maybe_declare()
        await app.global_views.on_start()  # opened here, read before each round's fold
        self._globals = EmbeddedReader(Log.acquire(broker))
        for projection in engine.projections.values():
            engine.size_view(projection)
            view = projection.view
            changelog = view.changelog_topic_for(view.generation)
            self._log.create_topic(changelog, view.partitions or 1, compacting=True)
            await projection.on_start()

    def close(self) -> None:
        """Close the stores, give the app back its broker and data dir, and delete the
        driver's directory (unless it was given)."""
        if self._open:
            try:
                self._call(self._stop())
            finally:
                self._open = False
        if not self._loop.is_closed():
            self._loop.close()
        if self._made_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    async def _stop(self) -> None:
        app, engine, saved = self.app, self.app.engine, self._saved
        try:
            await engine.on_stop()
            await app.global_views.on_shutdown()
            if self._globals is not None:
                await self._globals.close()
            for name, tp in self._served:
                view = app.views[name]
                view.stores.pop(tp.partition, None)
                view.status.pop(tp.partition, None)
            if self._producer is not None:
                await self._producer.stop()
        finally:
            if self._log is not None:
                self._log.release()
            for view in app.views.values():
                view.state.partitions = saved["partitions"].get(view.name)
            engine.budget = saved["budget"]
            app.dead_letters = saved["dead_letters"]
            set_clients(app, saved["clients"])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", AlreadyConfiguredWarning)
                app.conf.broker = saved["broker"]
                app.conf.datadir = saved["datadir"]

    # -- given ---------------------------------------------------------------------------

    def send(
        self,
        topic: EventTopic,
        evt: Event,
        *,
        key: str | None = None,
        timestamp: dt.datetime | float | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        event_id: str | None = None,
        partition: int | None = None,
    ) -> Event:
        """Append ``evt`` to ``topic`` as a producer would: in its envelope, under its key
        (``key``, else its key field), in the partition the topic's partitioner gives.
        Metadata not given is :func:`event`'s default, unless ``evt`` was made by
        :func:`event` (then its metadata is kept). Returns the event as handlers get it."""
        self._check_open()
        if topic.codec.types.get(type(evt).event_type) is not type(evt):
            raise TypeError(
                f"{type(evt).__name__} is not one of {topic.get_topic_name()!r}'s event types "
                "(send_raw sends anything)"
            )
        meta = getattr(evt, "meta", None)
        if meta is None:
            evt = event(
                evt,
                timestamp=timestamp,
                correlation_id=correlation_id,
                causation_id=causation_id,
                event_id=event_id,
            )
            meta = evt.meta
        elif any(v is not None for v in (timestamp, correlation_id, causation_id, event_id)):
            raise ValueError("give the metadata either to event() or to send(), not both")
        wire_key = topic.key_for(evt, key if key is not None else given_key(evt))
        value = topic.codec.encode(evt, meta)
        headers = topic.codec.headers(evt, meta)
        if partition is None:
            partition = topic.partition_for(wire_key)
        self._append(topic.get_topic_name(), wire_key, value, partition, meta.timestamp.timestamp(), headers)  # fmt: skip
        return evt

    def send_raw(
        self,
        topic: EventTopic | str,
        value: bytes | None,
        *,
        key: str | bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> None:
        """Append a record as a foreign producer wrote it: any bytes, valid or not."""
        self._check_open()
        name = topic if isinstance(topic, str) else topic.get_topic_name()
        wire_key = key.encode() if isinstance(key, str) else key
        self._append(name, wire_key, value, partition, time.time(), headers or [])

    def _append(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None, timestamp: float, headers: Any) -> None:  # fmt: skip
        assert self._producer is not None
        producer = self._producer

        async def append() -> Any:
            return await producer.send_and_wait(topic, key, value, partition, timestamp, headers)

        sent = self._call(append())
        self._given.add((topic, sent.partition, sent.offset))

    # -- when ----------------------------------------------------------------------------

    def run(self) -> None:
        """Fold everything sent so far, and what that publishes to the app's own topics,
        until nothing is left; every partition checkpointed."""
        self._check_open()
        self._call(self._run())

    async def _run(self) -> None:
        engine = self.engine
        names = sorted(
            {
                topic.get_topic_name()
                for projection in engine.projections.values()
                for topic in (*projection.sources, projection.fold_topic)
            }
        )
        for _ in range(self.max_rounds):
            assert self._globals is not None
            moved = await self.app.global_views.catch_up(self._globals) > 0
            for name in names:
                for tp in self._partitions(name):
                    while records := self._read(tp):
                        await self._serve(engine.projections_of(name), tp)
                        await engine.on_batch({tp: records})
                        self._position[tp] = records[-1].offset + 1
                        moved = True
            await engine.flush()
            if not moved:
                return
        raise RuntimeError(
            f"still folding after {self.max_rounds} rounds: do the app's agents publish to "
            "each other's topics in a loop?"
        )

    def _partitions(self, name: str) -> list[TP]:
        assert self._log is not None
        return [TP(name, p) for p in range(self._log.partitions(name) or 0)]

    def _read(self, tp: TP) -> list[Any]:
        assert self._log is not None
        return self._log.read(tp.topic, tp.partition, self._position.get(tp, 0), BATCH)

    async def _serve(self, projections: list[Projection], tp: TP) -> None:
        """Restore and serve the view partitions ``tp`` is folded into, as an assignment
        does (from the changelog: empty, in a driver's new log)."""
        entries = []
        for projection in projections:
            view = projection.view
            if slot(projection, tp) in self.engine.partitions.active:
                continue
            status = view.status[tp.partition] = PartitionStatus(
                generation=view.generation, restore_started=time.monotonic()
            )
            entries.append((projection, tp, view.generation, status))
        for part in await self.engine.restore(entries):
            self.engine.partitions.serve(part)
            self._served.add(part.slot)

    # -- then ----------------------------------------------------------------------------

    def view(self, view: View | str) -> Rows:
        """``view``'s rows: ``driver.view(balances)["acct-1"]``."""
        self._check_open()
        return Rows(self.app.views[view] if isinstance(view, str) else view)

    def rows(self, view: View | str) -> dict[Any, Any]:
        """``view``'s rows, all of them, as a dict."""
        return dict(self.view(view))

    def sent(self, topic: EventTopic | str) -> list[Event]:
        """The events the app published to ``topic`` (not those the test sent), decoded
        with their metadata, in the order they were published."""
        self._check_open()
        assert self._producer is not None and self._log is not None
        found = topic if isinstance(topic, EventTopic) else self._topic(topic)
        name = found.get_topic_name()
        out = []
        for where in self._producer.appended:
            if where[0] != name or where in self._given:
                continue
            (record,) = self._log.read(name, where[1], where[2], 1)
            out.append(
                found.codec.decode(
                    record.value,
                    headers=record.headers,
                    timestamp=record.timestamp / 1000,
                    source=f"{name}-{where[1]}-{where[2]}",
                )
            )
        return out

    def _topic(self, name: str) -> EventTopic:
        for projection in self.engine.projections.values():
            for topic in (*projection.sources, projection.fold_topic):
                if topic.get_topic_name() == name:
                    return topic
        found = self.app.event_topics.get(name)
        if found is None:
            raise LookupError(f"{name!r} is no event topic of {self.app.conf.id!r}")
        return found

    def dead_letters(self) -> list[DeadLetter]:
        """What was set aside since the driver started, in order: each with its ``kind``,
        ``reason``, source ``topic``/``partition``/``offset`` and, for a handler's
        failure, its ``view``."""
        self._check_open()
        assert self._producer is not None and self._log is not None
        names = {dead_letter_topic(self.app.conf.id, s) for s in self.app.dead_letters.sources()}
        out = []
        for name, partition, offset in self._producer.appended:
            if name in names:
                (record,) = self._log.read(name, partition, offset, 1)
                out.append(DeadLetter.from_record(record.key, record.value, record.headers))
        return out

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError("the test driver is closed")
