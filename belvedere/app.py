"""``belvedere.App``: a faust App with Belvedere's defaults, wired to Belvedere's parts."""

from __future__ import annotations

import inspect
import logging
import operator
import textwrap
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import faust
from faust.transport.base import Transport
from faust.web.base import Web
from mode.utils.objects import cached_property

from belvedere import settings
from belvedere.agents.aggregates import Aggregate
from belvedere.agents.commands import CommandProjection
from belvedere.agents.driven import (
    AgentProjection,
    BatchStream,
    check_agent_function,
    declared_regrouping,
    tables_written,
)
from belvedere.agents.engine import ProjectionEngine
from belvedere.agents.flows import TransformProjection
from belvedere.agents.global_views import GlobalView, GlobalViews
from belvedere.agents.projection import Projection
from belvedere.agents.reactors import ReactorProjection
from belvedere.agents.replay_processes import ReplayHelpers
from belvedere.agents.sagas import Saga, SagaProjection, SagaState, Step
from belvedere.agents.stream_joins import (
    HOWS,
    LEFT,
    RIGHT,
    JoinInput,
    StreamJoinProjection,
    side_types,
)
from belvedere.agents.trace import TraceProjection
from belvedere.agents.windowed import WindowedProjection
from belvedere.compat import faust as compat
from belvedere.streams.assignor import BalancedPartitionAssignor
from belvedere.streams.dead_letters import DeadLetters
from belvedere.streams.envelope import DEFAULT_MAX_EVENT_BYTES
from belvedere.streams.records import Event
from belvedere.streams.security import BrokerSecurity
from belvedere.streams.tap import Tap, transport_for
from belvedere.streams.topics import DeadLetteringTopic, EventTopic
from belvedere.tables.table import Table as EngineTable
from belvedere.tables.view import View
from belvedere.tables.windows import Tumbling, Window, _ms
from belvedere.views_api.auth import EXPOSURE_REMEDY, exposure_problem
from belvedere.views_api.connections import WebLimits, default_max_connections
from belvedere.views_api.http_publish import Publishing, declared
from belvedere.views_api.routes import install as install_routes
from belvedere.views_api.server import Web as BelvedereWeb
from belvedere.views_api.tls import WebTLS
from belvedere.worker import TableManager, Worker

__all__ = ["DEFAULT_BROKER", "DEFAULT_WEB_HOST", "DEFAULT_WEB_PORT", "App"]

logger = logging.getLogger(__name__)

DEFAULT_BROKER: str = settings.BY_NAME["broker"].default
DEFAULT_WEB_HOST: str = settings.BY_NAME["web_host"].default
DEFAULT_WEB_PORT: int = settings.BY_NAME["web_port"].default


def _key_function(by: str | Callable[[Any], Any] | None) -> Callable[[Any], Any] | None:
    if by is None or callable(by):
        return by
    return operator.attrgetter(by)


def _event_key(topic: EventTopic) -> Callable[[Any], Any]:
    """The view key of an event on a topic whose producers' partitioner is unknown: its
    key field, as Belvedere would key it."""

    def key_of(event: Any) -> Any:
        name = type(event).event_key or topic.key_field
        if name is None:
            raise ValueError(
                f"{type(event).__name__} has no key field to re-key {topic.get_topic_name()!r} "
                "(partitioner='any') by: declare key= on the event class or the topic, or pass by="
            )
        return getattr(event, name)

    return key_of


class App(compat.App):
    """A faust App whose defaults suit a single laptop and scale out to Kafka unchanged.

    Each setting (:mod:`belvedere.settings`) comes from, in order: its ``belvedere worker``
    flag, its ``BELVEDERE_*`` environment variable, the keyword given here, then the default:

    {settings}

    The ``web_*`` limits and ``max_change_feeds`` bound what HTTP clients may hold of a
    worker (:mod:`belvedere.views_api.connections`): beyond ``web_max_connections`` a new
    connection closes the one idle the longest, and is refused (503) only when all are
    busy. A change feed or a long poll is busy for as long as it lasts: no timeout ends it.

    ``web_allowed_hosts`` and ``web_allowed_origins`` are lists (comma-separated in the
    environment): more names the worker answers to in ``Host`` (``*``: any), and origins
    (``https://app.example``) whose pages may write and read across origins
    (:mod:`belvedere.views_api.browsers`).

    ``topic_replication_factor`` (faust's setting; ``BELVEDERE_TOPIC_REPLICATION_FACTOR``
    wins over it, default 1) is the number of copies of every topic the app creates: its
    changelogs, control topic, dead letters and repartition topics. On a replicated cluster
    set it to the cluster's replication factor: a topic with one copy is offline while
    its broker is down.

    Tables default to RocksDB (``store="rocksdb://"``) under the data dir. JSON goes
    through orjson (faust's codec picks it up when installed, and Belvedere requires it).
    Any other faust setting is passed through; a keyword neither knows raises TypeError. ``max_event_bytes`` bounds an event's size
    on event topics (larger ones go to the dead letters). Projections write a checkpoint
    (state, changelog, offsets) every ``checkpoint_interval`` seconds or
    ``checkpoint_events`` events per partition, whichever comes first: views lag their
    source by up to that, and fewer, larger checkpoints write fewer changelog records.
    On Kafka, ``belvedere worker`` replays a rebuild's history in up to
    ``rebuild_processes`` helper processes, on the machine's other cores
    (:mod:`belvedere.agents.replay_processes`).

    The ``broker_*`` security settings (:class:`~belvedere.streams.security.BrokerSecurity`)
    reach faust's clients and Belvedere's own alike; give them instead of faust's
    ``broker_credentials``, which Belvedere's own clients would not see.

    HTTP requests need the token of their route's scope (:mod:`belvedere.views_api.auth`):
    ``read`` (views, aggregates, sagas, traces, metrics), ``write`` (``POST /events``,
    ``POST /commands``), ``admin`` (rebuilds). The admin token opens every scope and the
    write token also reads; ``api_token`` is the read and the write token where those are
    not set. A worker binding an address other than loopback refuses to start unless every
    scope has a token, or ``insecure_open`` is set (then it logs a warning). Workers sign
    the requests they forward to each other with ``forward_secret``: give every worker the
    same one (by default it is derived from the tokens, which they share anyway).

    On Kafka, a worker that stops heartbeating (killed, or paused) loses its partitions
    ``broker_session_timeout`` seconds later (``BELVEDERE_BROKER_SESSION_TIMEOUT``, 6 s:
    Kafka's lowest by default), and heartbeats every ``broker_heartbeat_interval`` seconds
    (``BELVEDERE_BROKER_HEARTBEAT_INTERVAL``, 0.5 s: the others learn of the rebalance at
    their next one). faust's 60 s left a dead worker's partitions unserved for a minute;
    6 s gives them to their standbys within 10 s, at the cost of a rebalance whenever a live
    worker pauses longer than that (docs/operations.md).
    """

    def __init__(
        self,
        id: str,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        checkpoint_interval: float = 0.5,
        checkpoint_events: int = 20_000,
        **options: Any,
    ) -> None:
        # faust's own settings, kept for faust; Belvedere's are taken out of options
        given = settings.resolve(id, options, keep=("topic_replication_factor",))
        self.max_event_bytes = max_event_bytes
        #: Stop the worker at the first projection handler error instead of dead-lettering.
        self.strict: bool = given["strict"]
        #: Dead letters a minute past which ``/ready`` answers 503 (None: no limit).
        self.ready_max_dead_letter_rate: int | None = given["ready_max_dead_letter_rate"]
        #: Helper processes a rebuild's replay may use (None: as many as usable cores).
        self.rebuild_processes: int | None = given["rebuild_processes"]
        #: Set by ``belvedere worker``: forks the helpers that replay a rebuild.
        self.replay_helpers: ReplayHelpers | None = None
        #: The bearer token of the admin scope (rebuilds); it opens every scope.
        self.admin_token: str | None = given["admin_token"]
        #: The read and the write token, where those are not set.
        self.api_token: str | None = given["api_token"]
        #: The bearer token of the read scope.
        self.read_token: str | None = given["read_token"]
        #: The bearer token of the write scope (``POST /events``, ``POST /commands``).
        self.write_token: str | None = given["write_token"]
        #: What workers sign forwarded requests with (None: derived, see ``forward_key``).
        self.forward_secret: str | None = given["forward_secret"]
        #: Start on a non-loopback bind even with a scope no token guards.
        self.insecure_open: bool = given["insecure_open"]
        #: Log faust's and Belvedere's start-up lines too, not only one when serving
        #: (:mod:`belvedere.console`).
        self.verbose: bool = given["verbose"]
        #: Per event topic name: what ``POST /events`` may publish to it.
        self.http_publishing: dict[str, Publishing] = {}
        #: More names than web_host and loopback that ``Host`` may give (``*``: any).
        self.web_allowed_hosts: tuple[str, ...] = given["web_allowed_hosts"]
        #: Origins whose pages may call this worker (CORS), and write to it.
        self.web_allowed_origins: tuple[str, ...] = given["web_allowed_origins"]
        #: The event topics declared with :meth:`event_topic`, by name.
        self.event_topics: dict[str, EventTopic] = {}
        #: The views declared with :meth:`view`, by name.
        self.views: dict[str, View] = {}
        #: The aggregate types declared with :meth:`aggregate`, by type name.
        self.aggregates: dict[str, CommandProjection] = {}
        #: The sagas declared with :meth:`saga`, by name.
        self.sagas: dict[str, SagaProjection] = {}
        #: The correlation index, once :meth:`trace_flows` has turned it on.
        self.flow_trace: TraceProjection | None = None
        self.engine = ProjectionEngine(self)
        #: The global views, each followed from its topic on this worker.
        self.global_views = GlobalViews(self)
        self.engine.checkpoint_interval = checkpoint_interval
        self.engine.checkpoint_events = checkpoint_events
        #: Set by the projection engine: takes fetched batches of its partitions.
        self.batch_tap: Tap | None = None
        #: TLS and SASL for every Kafka client of this app (faust's and Belvedere's).
        self.broker_security = BrokerSecurity(
            cafile=given["broker_ssl_cafile"],
            certfile=given["broker_ssl_certfile"],
            keyfile=given["broker_ssl_keyfile"],
            mechanism=given["broker_sasl_mechanism"],
            username=given["broker_username"],
            password=given["broker_password"],
        )
        if "broker_credentials" in options or "ssl_context" in options:
            raise ValueError(
                "give belvedere.App the broker_ssl_*/broker_sasl_* settings rather than faust's "
                "broker_credentials or ssl_context: Belvedere's own Kafka clients use them too"
            )
        options["broker_credentials"] = self.broker_security.faust_credentials()
        session = options["broker_session_timeout"] = given["broker_session_timeout"]
        heartbeat = options["broker_heartbeat_interval"] = given["broker_heartbeat_interval"]
        if heartbeat >= session:
            raise ValueError(
                f"broker_heartbeat_interval ({heartbeat:g} s) must be shorter than "
                f"broker_session_timeout ({session:g} s): Kafka would drop the worker between "
                "two heartbeats"
            )
        #: What HTTP clients may hold of this worker (connections, time, change feeds).
        self.web_limits = WebLimits(
            max_connections=given["web_max_connections"] or default_max_connections(),
            keepalive_timeout=given["web_keepalive_timeout"],
            header_timeout=given["web_header_timeout"],
            body_timeout=given["web_body_timeout"],
            max_change_feeds=given["max_change_feeds"],
        )
        host, port = given["web_host"], given["web_port"]
        #: HTTPS for the query layer (see :mod:`belvedere.views_api.tls`).
        self.web_tls = WebTLS(
            certfile=given["web_ssl_certfile"],
            keyfile=given["web_ssl_keyfile"],
            cafile=given["web_ssl_cafile"],
        )
        if self.web_tls.enabled:
            options["web_ssl_context"] = self.web_tls.server_context
            options.setdefault("canonical_url", f"https://{host}:{port}")
        # faust's own setting, for every topic the app creates (changelogs, control topic,
        # dead letters, repartition topics): a replicated cluster wants its copies there too
        replicas = given["topic_replication_factor"]
        if replicas:
            options["topic_replication_factor"] = replicas
        options.setdefault("store", "rocksdb://")
        # faust fetches with a fixed 1.5 s max wait and 1 MiB per partition: batches of ~17k
        # records, then an idle wait; larger fetches keep projections busy (docs/benchmarks.md).
        # 6 MiB: as fast as 8 MiB, and at a million keys the worker peaks at 468 MB, not 554.
        options.setdefault("consumer_max_fetch_size", 6 << 20)
        # aiokafka makes a Python object of every record a poll returns: with tiny records a
        # 6 MiB fetch is ~90,000 of them per partition (a count at a million keys peaked at
        # 626 MB); 200,000 a poll bounds that (423 MB) and leaves projections' speed as it was.
        options.setdefault("broker_max_poll_records", 200_000)
        options.setdefault("web_bind", host)
        # faust's own leaves a joining worker without partitions when standbys are kept
        options.setdefault("PartitionAssignor", BalancedPartitionAssignor)
        # faust's, without a fixed second's wait on every start and every stop
        options.setdefault("TableManager", TableManager)
        options.setdefault("Worker", Worker)
        # faust drops what it cannot deserialize on an app.topic and stops its agent
        options.setdefault("Topic", DeadLetteringTopic)
        problem = settings.unknown(options, _FAUST_KEYWORDS)
        if problem:
            raise TypeError(problem)
        super().__init__(
            id,
            broker=given["broker"],
            datadir=given["data_dir"],
            web_host=host,
            web_port=port,
            **options,
        )

    def event_topic(
        self,
        name: str,
        *event_types: type[Event],
        key: str | None = None,
        partitions: int | None = None,
        partitioner: str = "murmur2",
        http_publish: bool | Sequence[type[Event]] = False,
        http_publish_owned: bool = False,
        **options: Any,
    ) -> EventTopic:
        """A topic carrying these event types in the envelope; agents get typed events.

        ``key`` names the event field used as the Kafka key when an event class declares
        none. ``partitioner`` is how the topic's producers hash keys: ``murmur2`` (Kafka's
        default), ``crc32`` (librdkafka's default: kcat, confluent-kafka), or ``any`` (the
        projections re-key its events by their key field). ``http_publish`` lets
        ``POST /events`` publish to it: ``True`` (every type it carries) or a list of its
        types; an aggregate's topics and the event types aggregates own stay refused unless
        ``http_publish_owned`` (:mod:`belvedere.views_api.publishing`). Other options are
        faust's ``app.topic`` options.
        """
        if name in self.event_topics:
            raise ValueError(f"event topic {name!r} is already declared")
        topic = self.event_topics[name] = EventTopic(
            self,
            topics=[name],
            event_types=event_types,
            key=key,
            partitions=partitions,
            max_event_bytes=self.max_event_bytes,
            partitioner=partitioner,
            **options,
        )
        publishing = declared(topic, http_publish, http_publish_owned)
        if publishing is not None:
            self.http_publishing[name] = publishing
        return topic

    @property
    def event_types(self) -> list[type[Event]]:
        """Every event type this app's event topics carry."""
        found: dict[str, type[Event]] = {}
        for topic in self.event_topics.values():
            found.update(topic.codec.types)
        return list(found.values())

    def view(
        self,
        name: str,
        *,
        value: Any,
        key: type = str,
        indexes: Sequence[str] = (),
        partitions: int | None = None,
        window: Window | None = None,
    ) -> View:
        """A read model kept in RocksDB per partition, with a compacted changelog.

        ``value`` is the row type (a Record, a number, ``dict`` ...); ``key`` is ``str`` or
        ``int``; ``indexes`` names fields to look rows up by. Fill it with
        :meth:`projection`; query it with ``get``/``scan``/``lookup``/``count``.

        ``window`` (``belvedere.Tumbling``, ``Hopping``, ``Sliding``, ``Session``)
        keeps a row per key and window, by event time: its projection's handlers run once per window an event
        falls in; read it with ``windows``/``window_at``/``window_rows`` (docs/windows.md).
        """
        if window is not None:
            if not isinstance(window, Window):
                raise TypeError(
                    f"view {name!r}: window must be belvedere.Tumbling, belvedere.Hopping, "
                    f"belvedere.Sliding or belvedere.Session, not {window!r}"
                )
            if indexes:
                raise ValueError(f"view {name!r}: a windowed view has no indexes")
        made = View(self.conf.id, name, value, key, tuple(indexes), partitions, window=window)
        return self._declare_view(made)

    def global_view(
        self,
        name: str,
        *,
        topic: EventTopic,
        value: Any,
        key: type = str,
        by: str | Callable[[Any], Any] | None = None,
    ) -> GlobalView:
        """A view every worker holds in full, read from every partition of ``topic``
        (reference data: products, prices): readable under any key from any handler,
        without ``reads=``, and over HTTP from the worker asked.

        Its rows are the latest event of each key (``by``: a field name or a function;
        by default the event's key field), unless handlers fold ``topic`` into it:
        ``@app.projection(topic, view=...)``, as for a view. Each worker keeps its copy
        in RocksDB with the offsets it reflects, and is ready once it has read the topic
        to its end (:mod:`belvedere.agents.global_views`).
        """
        if not isinstance(topic, EventTopic):
            raise TypeError(f"global view {name!r}: topic= takes an app.event_topic")
        key_of = _key_function(by) or _event_key(topic)
        view = GlobalView(self.conf.id, name, value, key, topic, key_of)
        self._declare_view(view)
        self.global_views.add(view)
        return view

    def Table(
        self,
        name: str,
        *,
        default: Callable[[], Any] | None = None,
        partitions: int | None = None,
        key_type: type = str,
        value_type: Any = None,
        engine: bool = True,
        **options: Any,
    ) -> Any:
        """A table one ``@app.agent`` writes with faust's mapping API (``table[k] += v``),
        on the engine: exact under kill -9, and served like a view (``/views``, key reads,
        scans, change feeds, rebuild, reset). ``default`` makes a missing key's value;
        ``key_type`` is ``str`` or ``int``; ``value_type`` any row type a view takes
        (None: plain JSON values). ``engine=False`` makes faust's table instead (with
        faust's ``options``: windows and the rest; per event, at least once, not served).
        """
        if not engine:
            return super().Table(
                name,
                default=default,
                partitions=partitions,
                key_type=key_type,
                value_type=value_type,
                **options,
            )
        if options.get("window") is not None:
            raise TypeError(
                f"table {name!r}: windows are declared on a view: "
                "app.view(..., window=belvedere.Tumbling(...)) filled by app.projection "
                "(engine=False gives faust's windowed table)"
            )
        refused = sorted(k for k, v in options.items() if v is not None and k != "help")
        if refused:
            raise TypeError(
                f"table {name!r}: {', '.join(refused)} are faust table options (windows, "
                "changelogs...): pass engine=False for faust's table"
            )
        table = EngineTable(
            self.conf.id,
            name,
            Any if value_type is None else value_type,
            default=default,
            key_type=key_type,
            partitions=partitions,
        )
        self._declare_view(table)
        return table

    def agent(  # type: ignore[override]
        self,
        channel: Any = None,
        *,
        name: str | None = None,
        engine: bool = True,
        table: EngineTable | None = None,
        concurrency: int = 1,
        **options: Any,
    ) -> Callable[[Any], Any]:
        """faust's ``@app.agent``, run by the engine a fetched batch at a time
        (:mod:`belvedere.agents.driven`): what it writes to its ``app.Table`` is exact
        under kill -9. Its table is found from the names its code uses, or given with
        ``table=``. ``engine=False`` keeps faust's per-event agent (``concurrency``,
        ``sink``, ``take``, ``through``, async generators for ``ask``); ``stream.group_by``
        runs on the engine, exactly.
        """
        if not engine or (name or "").startswith("faust."):  # faust's own (SetTable)
            if table is not None:
                raise TypeError("table= is for agents on the engine (engine=True)")
            return super().agent(channel, name=name, concurrency=concurrency, **options)

        def register(fn: Any) -> AgentProjection:
            return self._engine_agent(channel, fn, name, table, concurrency, options)

        return register

    def _engine_agent(
        self,
        channel: Any,
        fn: Any,
        name: str | None,
        table: EngineTable | None,
        concurrency: int,
        options: dict[str, Any],
    ) -> AgentProjection:
        label = name or fn.__name__
        refused = sorted(k for k, v in options.items() if v is not None)
        if concurrency != 1:
            refused.insert(0, "concurrency")
        if refused:
            raise TypeError(
                f"agent {label}: {', '.join(refused)} run on faust's per-event path only: "
                "pass engine=False"
            )
        check_agent_function(fn, label)
        if isinstance(channel, str):
            channel = self.topic(channel)
        names = list(getattr(channel, "topics", None) or ())
        if len(names) != 1 or not isinstance(channel, DeadLetteringTopic):
            raise TypeError(
                f"agent {label}: on the engine an agent reads one topic (app.topic or "
                "app.event_topic); pass engine=False for faust's channels"
            )
        if getattr(channel, "partitioner", "murmur2") == "any":
            raise TypeError(
                f"agent {label}: {names[0]!r} has partitioner='any', so a key's events may be "
                "in any partition; re-key it with app.projection(..., by=), or pass engine=False"
            )
        tables = [table] if table is not None else tables_written(fn)
        if table is not None and not isinstance(table, EngineTable):
            raise TypeError(f"agent {label}: table= takes an app.Table, not {table!r}")
        if len(tables) > 1:
            raise TypeError(
                f"agent {label} writes {len(tables)} tables ({', '.join(t.name for t in tables)}); "
                "an agent on the engine writes one (pass table= to name it, if it only reads "
                "the others)"
            )
        written = tables[0] if tables else None
        stream = BatchStream(channel, label)
        declared_regrouping(fn, stream)
        if stream.regroup is not None and written is None:
            raise TypeError(
                f"agent {label}: group_by re-keys into the table the agent writes; this agent "
                "names none (pass table=), or pass engine=False"
            )
        repartition = None
        if written is not None:
            other = self.engine.projections.get(written.name)
            if other is not None:
                raise TypeError(
                    f"agent {label}: table {written.name!r} is already written by "
                    f"{getattr(other, 'name', other)!r}; a table has one writing agent"
                )
            counts = (written.declared_partitions, channel.partitions)
            if stream.regroup is not None:
                repartition = self._agent_repartition(label, channel, counts[0] or counts[1])
            elif None not in counts and counts[0] != counts[1]:
                raise ValueError(
                    f"agent {label}: table {written.name!r} has {counts[0]} partitions but "
                    f"{names[0]!r} has {counts[1]}; a table is partitioned like its agent's "
                    "topic (or re-keyed with stream.group_by)"
                )
            else:
                written.hash_keys_with(getattr(channel, "partitioner", "murmur2"))
            view: View = written
        else:
            view = self._internal_view(f"agent-{label}", key=int, partitions=None)
        agent = AgentProjection(channel, view, fn, label, written, stream, repartition)
        self.engine.add(agent)
        self.topics.add(channel)
        return agent

    def _agent_repartition(self, label: str, channel: Any, partitions: int | None) -> Any:
        """The internal topic ``group_by`` re-keys an agent's events through: the source's
        values under their new keys (murmur2, like the table's)."""
        name = f"{self.conf.id}-agent-{label}-repartition"
        if isinstance(channel, EventTopic):
            return self._internal_topic(name, channel.event_types, partitions)
        topic = self.topic(
            name,
            partitions=partitions or self.conf.topic_partitions,
            internal=True,
            key_type=str,
            key_serializer="raw",
            value_type=channel.value_type,
            value_serializer=channel.value_serializer,
        )
        self.topics.add(topic)
        return topic

    def _internal_view(
        self, name: str, *, key: type = str, partitions: int | None, partitioner: str = "murmur2"
    ) -> View:
        """The view of an aggregate, a saga, a reactor or the trace: rows are dicts."""
        made = View(self.conf.id, name, dict, key, (), partitions, partitioner=partitioner, internal=True)  # fmt: skip
        return self._declare_view(made)

    def _declare_view(self, view: View) -> View:
        if view.name in self.views:
            raise ValueError(f"view {view.name!r} is already declared")
        self.views[view.name] = view
        return view

    def projection(
        self,
        source: EventTopic,
        *,
        view: View,
        by: str | Callable[[Any], Any] | None = None,
        events: Sequence[type[Event]] | None = None,
        reads: Sequence[View] = (),
    ) -> Any:
        """Decorate the handlers (a function, or a class of methods) that fold ``source``
        into ``view``. Several decorations for one view add to one projection.

        ``by`` gives the view key of an event (a field name, or a function) when the view is
        keyed differently from the source: events are then re-keyed through an internal
        topic, so each lands in the partition its view key hashes to.

        ``reads`` names the other views the handlers look rows up in (a lookup join). Each
        must be co-partitioned with the topic folded (same partition count and key
        hashing), which the worker checks when it starts. A handler reading a view not
        named there fails on that event (dead letter ``undeclared-read``); global views
        (:meth:`global_view`) are readable from any handler without it.
        """
        if not isinstance(source, EventTopic):
            raise TypeError("a projection's source must be an event topic (app.event_topic)")
        if isinstance(view, GlobalView):
            if by is not None or reads:
                raise TypeError(
                    f"global view {view.name!r}: by= and reads= do not apply (its key is "
                    "global_view's by=, and any handler may read it)"
                )
            return view.fold_with(source, events)
        for other in reads:
            if not isinstance(other, View):
                raise TypeError(f"view {view.name!r}: reads= takes views, not {other!r}")
        found = self.engine.projections.get(view.name)
        if found is None:
            key_of = _key_function(by)
            if key_of is None and source.partitioner == "any":
                key_of = _event_key(source)
            elif key_of is None:
                view.hash_keys_with(source.partitioner)
            kind = Projection if view.window is None else WindowedProjection
            found = kind(source, view, by=key_of, checks_reads=True)
            if found.by is not None:
                found.repartition = self._internal_topic(
                    f"{self.conf.id}-view-{view.name}-repartition",
                    source.event_types,
                    view.partitions or source.partitions,
                )
            self.engine.add(found)
        elif found.source is not source:
            raise ValueError(
                f"view {view.name!r} is already fed by {found.source.get_topic_name()!r}"
            )
        if source not in self.topics:
            self.topics.add(source)
        found.reads += tuple(v for v in reads if v not in found.reads and v is not view)

        def register(target: Any) -> Any:
            return found.register(target, events)

        return register

    def aggregate(
        self,
        aggregate: type[Aggregate],
        *,
        events: EventTopic,
        commands: EventTopic,
        keep_commands: int = 100,
        keep_commands_for: float = 24 * 3600.0,
    ) -> CommandProjection:
        """Declare an event-sourced aggregate type: its commands arrive on ``commands``, the
        events its handlers accept are appended to ``events``. Both are keyed by aggregate
        id and have as many partitions; ``events`` is written by its command handlers only.

        Its snapshots are the view ``aggregate-<Type>``. Each aggregate remembers the
        outcomes of its last ``keep_commands`` commands, for ``keep_commands_for`` seconds,
        to answer a repeated command id. Add handlers with :meth:`command_handler`.
        """
        if not (isinstance(aggregate, type) and issubclass(aggregate, Aggregate)):
            raise TypeError(f"{aggregate!r} is not a belvedere.Aggregate class")
        name = aggregate.aggregate_type
        if name in self.aggregates:
            raise ValueError(f"aggregate type {name!r} is already declared")
        for topic in (events, commands):
            if not isinstance(topic, EventTopic):
                raise TypeError("an aggregate's events and commands are event topics")
        counts = {
            t.get_topic_name(): t.partitions or self.conf.topic_partitions
            for t in (events, commands)
        }
        if len(set(counts.values())) != 1:
            raise ValueError(
                f"aggregate {name}: its topics must have as many partitions, not {counts}"
            )
        hashes = {t.get_topic_name(): t.partitioner for t in (events, commands)}
        if len(set(hashes.values())) != 1 or "any" in hashes.values():
            raise ValueError(
                f"aggregate {name}: its topics must hash keys alike, with murmur2 or crc32, "
                f"not {hashes}"
            )
        taken = {p.events_topic: p.aggregate.__name__ for p in self.aggregates.values()}
        if events.get_topic_name() in taken:
            raise ValueError(
                f"{events.get_topic_name()!r} already holds {taken[events.get_topic_name()]} events"
            )
        view = self._internal_view(
            f"aggregate-{name}", partitions=commands.partitions, partitioner=commands.partitioner
        )
        projection = CommandProjection(
            self,
            aggregate,
            commands=commands,
            events=events,
            view=view,
            keep_commands=keep_commands,
            keep_commands_for=keep_commands_for,
        )
        self.aggregates[name] = projection
        self.engine.add(projection)
        self.topics.add(commands)
        return projection

    def command_handler(self, aggregate: type[Aggregate]) -> Callable[[Any], Any]:
        """Decorate ``fn(aggregate, command)``: it returns the events to emit (an event, a
        list, None, or ``belvedere.Reply``), or raises ``belvedere.Rejected``. The command
        type is read from the annotation of its second parameter."""
        found = self.aggregates.get(getattr(aggregate, "aggregate_type", ""))
        if found is None or found.aggregate is not aggregate:
            raise LookupError(f"declare {aggregate!r} with app.aggregate(...) first")

        def register(fn: Any) -> Any:
            found.add_handler(fn)
            return fn

        return register

    def _internal_topic(
        self,
        name: str,
        event_types: Sequence[type[Event]],
        partitions: int | None,
        *,
        subscribe: bool = True,
    ) -> EventTopic:
        topic = EventTopic(
            self,
            topics=[name],
            event_types=event_types,
            partitions=partitions or self.conf.topic_partitions,
            internal=True,
            max_event_bytes=self.max_event_bytes,
        )
        if subscribe:
            self.topics.add(topic)
        return topic

    def saga(
        self,
        name: str,
        *,
        start: type[Event],
        steps: Sequence[Step],
        on_failure: Callable[[SagaState], Any] | None = None,
        on_success: Callable[[SagaState], Any] | None = None,
        partitions: int | None = None,
    ) -> SagaProjection:
        """Declare an orchestrated saga (see :mod:`belvedere.agents.sagas`): ``start``
        begins one per correlation id; each step sends its command and waits for its
        ``done`` or ``failed`` event, or its timeout; a failure runs the compensations of
        the steps done, newest first, then ``on_failure``. Its state is the view
        ``saga-<name>``, also at ``GET /sagas/<name>/<correlation id>``."""
        if name in self.sagas:
            raise ValueError(f"saga {name!r} is already declared")
        saga = Saga(name, start, steps, on_failure, on_success)
        sources: list[EventTopic] = []
        for cls in saga.event_types:
            topic = self.topic_carrying([cls], f"saga {name!r}")
            if topic not in sources:
                sources.append(topic)
                self.topics.add(topic)
        inbox = self._internal_topic(
            f"{self.conf.id}-saga-{name}-inbox",
            list(dict.fromkeys(t for source in sources for t in source.event_types)),
            partitions,
        )
        view = self._internal_view(f"saga-{name}", partitions=partitions)
        projection = self.sagas[name] = SagaProjection(self, saga, sources, view, inbox)
        self.engine.add(projection)
        return projection

    def trace_flows(
        self, *topics: EventTopic, max_events: int = 1000, partitions: int | None = None
    ) -> TraceProjection:
        """Index every event of ``topics`` (default: every event topic declared so far) by
        correlation id, for ``GET /trace/{correlationId}``. Costs one more write per event."""
        if self.flow_trace is not None:
            raise ValueError("tracing is already on")
        sources = list(topics) or list(self.event_topics.values())
        if not sources:
            raise ValueError("declare the event topics to trace first")
        inbox = self._internal_topic(
            f"{self.conf.id}-trace-inbox",
            list(dict.fromkeys(t for source in sources for t in source.event_types)),
            partitions,
        )
        view = self._internal_view("trace", partitions=partitions)
        self.flow_trace = TraceProjection(sources, view, inbox, max_events)
        self.engine.add(self.flow_trace)
        for source in sources:
            self.topics.add(source)
        return self.flow_trace

    def reactor(
        self,
        *event_types: type[Event],
        source: EventTopic | None = None,
        name: str | None = None,
        concurrency: int = 1,
        key: str | Callable[[Any], Any] | None = None,
        retries: int = 0,
        drain_timeout: float = 10.0,
    ) -> Callable[[Any], Any]:
        """Decorate ``fn(event)`` or ``fn(event, ctx)`` (plain or async) to run on every
        event of these types (by default, its parameter's annotation), from the one event
        topic carrying them (or ``source``). Every reactor gets every event, at least once;
        ``ctx.idempotency_key`` is the same on each delivery of an event. One that raises
        ``retries`` + 1 times dead-letters the event and goes on. ``name`` (default: the
        function's) names its progress and its idempotency keys.

        ``concurrency`` events of a partition run at once, outside the engine's fold, in
        lanes by ``key`` (an event field or a function; default: the record's key): a
        key's events one after another, in order. ``drain_timeout``: how long a partition
        given up (rebalance, stop) waits for its events in flight before cancelling them.
        """

        def register(fn: Any) -> Any:
            types = list(event_types) or ReactorProjection.event_types(fn)
            topic = source or self.topic_carrying(
                types, fn.__qualname__, choosing="pass source= to choose one"
            )
            missing = [t.__name__ for t in types if t not in topic.codec.types.values()]
            if missing:
                raise TypeError(
                    f"{fn.__qualname__}: {topic.get_topic_name()!r} does not carry {missing}"
                )
            view = self._internal_view(f"reactor-{name or fn.__name__}", key=int, partitions=None)
            try:
                reactor = ReactorProjection(
                    topic,
                    view,
                    fn,
                    types,
                    app_id=self.conf.id,
                    name=name,
                    concurrency=concurrency,
                    key=key,
                    retries=retries,
                    drain_timeout=drain_timeout,
                    dead_letters=self.dead_letters,
                    giving_up=lambda: self.rebalancing or self.should_stop,
                )
            except (TypeError, ValueError):
                del self.views[view.name]  # so that the fixed declaration can have it
                raise
            self.engine.add(reactor)
            self.topics.add(topic)
            return fn

        return register

    # -- transforms (belvedere.agents.flows) --------------------------------------------------

    def filter(
        self,
        source: EventTopic,
        *,
        to: EventTopic,
        events: Sequence[type[Event]] | None = None,
        name: str | None = None,
    ) -> Callable[[Any], Any]:
        """Decorate ``fn(event) -> bool`` (plain or async): the events it keeps are sent to
        ``to``, effectively once with the source's offsets (see ``belvedere.agents.flows``).
        ``name`` (default: the function's) names its progress view, ``flow-<name>``."""
        return self._transform("filter", source, {"to": to}, events, name)

    def map(
        self,
        source: EventTopic,
        *,
        to: EventTopic,
        events: Sequence[type[Event]] | None = None,
        name: str | None = None,
    ) -> Callable[[Any], Any]:
        """Decorate ``fn(event) -> Event | None``: the event it returns is sent to ``to``
        (None drops it)."""
        return self._transform("map", source, {"to": to}, events, name)

    def flat_map(
        self,
        source: EventTopic,
        *,
        to: EventTopic,
        events: Sequence[type[Event]] | None = None,
        name: str | None = None,
    ) -> Callable[[Any], Any]:
        """Decorate ``fn(event) -> Iterable[Event]``: each event it returns is sent to ``to``."""
        return self._transform("flat_map", source, {"to": to}, events, name)

    def branch(
        self,
        source: EventTopic,
        *,
        to: Mapping[str, EventTopic],
        events: Sequence[type[Event]] | None = None,
        name: str | None = None,
    ) -> Callable[[Any], Any]:
        """Decorate ``fn(event) -> str | None``: the event is sent to the topic of ``to``
        under the name it returns (None drops it)."""
        if not isinstance(to, Mapping) or not to:
            raise TypeError("branch: to= maps branch names to event topics")
        return self._transform("branch", source, dict(to), events, name)

    def rekey(
        self,
        source: EventTopic,
        *,
        by: str | Callable[[Any], Any],
        name: str | None = None,
        partitions: int | None = None,
    ) -> EventTopic:
        """An internal event topic with ``source``'s events keyed (and so partitioned) by
        ``by`` (a field name, or a function of the event): fold it with ``app.projection``
        into a view keyed the same way. Each event is copied once, envelope unchanged,
        effectively once with the source's offsets."""
        if not isinstance(source, EventTopic):
            raise TypeError("rekey: the source must be an event topic (app.event_topic)")
        key_of = _key_function(by)
        assert key_of is not None
        label = name or f"{source.get_topic_name()}-by-{by if isinstance(by, str) else by.__name__}"
        target = self._internal_topic(
            f"{self.conf.id}-rekey-{label}",
            source.event_types,
            partitions or source.partitions,
            subscribe=False,  # by the projection that folds it, if any
        )
        self._transform("rekey", source, {"rekey": target}, None, label)(key_of)
        return target

    def join(
        self,
        left: EventTopic,
        right: EventTopic,
        *,
        within: timedelta | float | None = None,
        to: EventTopic | None = None,
        grace: timedelta | float = 0,
        before: timedelta | float | None = None,
        after: timedelta | float | None = None,
        how: str = "inner",
        on: str | Callable[[Any], Any] | tuple[Any, Any] | None = None,
        time: str | Callable[[Any], Any] | None = None,
        on_late: str = "dead-letter",
        name: str | None = None,
        partitions: int | None = None,
    ) -> Callable[[Any], Any]:
        """Decorate ``fn(left, right) -> Event | None`` (plain or async): a windowed join of
        ``left``'s and ``right``'s events (docs/windows.md, "Windowed stream-stream joins").

        Two events pair when their join keys are equal and their event times are at most
        ``within`` apart (a right event at most ``before`` earlier and ``after`` later than
        the left one, each ``within`` unless given); ``fn`` gets each pair once, when its
        second event comes, and what it returns is sent to ``to``. With ``how="left"``,
        ``"right"`` or ``"outer"``, an event of that side that paired with none by the
        time its window closes (stream time at its time plus ``after`` for a left event,
        ``before`` for a right one, plus ``grace``) is given with None for the other side,
        once. ``on``: the join key (a field name or a function, or one of each per
        side as a pair; default: each event's key field). ``time``: the event time (a
        field or a function giving seconds or a datetime; default: the envelope's
        timestamp). An event later than its window is dead-lettered ``late``, or counted
        with ``on_late="count"``. The sides' types are ``fn``'s annotations. ``name``
        (default: the function's) names the view ``join-<name>``; ``partitions``, the
        merged topic's (default: ``left``'s)."""
        for side, topic in ((LEFT, left), (RIGHT, right)):
            if not isinstance(topic, EventTopic):
                raise TypeError(f"join: the {side} source must be an event topic, not {topic!r}")
        if not isinstance(to, EventTopic):
            raise TypeError(f"join: to= must be the event topic its results go to, not {to!r}")
        if not to.partitions:  # the outbox picks each output's partition itself
            raise TypeError(f"join: declare {to.get_topic_name()!r} with partitions=")
        if how not in HOWS:
            raise ValueError(f"join: how must be one of {', '.join(HOWS)}, not {how!r}")
        within_ms = _ms("within", within)
        if within_ms is not None and within_ms <= 0:
            raise ValueError(f"join: within must be positive, not {within!r}")
        before_ms, after_ms = _ms("before", before), _ms("after", after)
        before_ms = within_ms if before_ms is None else before_ms
        after_ms = within_ms if after_ms is None else after_ms
        if before_ms is None or after_ms is None:
            raise TypeError("join: give within= (or both before= and after=)")
        if min(before_ms, after_ms) < 0 or before_ms + after_ms <= 0:
            raise ValueError(
                f"join: before ({before_ms} ms) and after ({after_ms} ms) must not be "
                "negative, nor both zero"
            )
        try:  # its time, grace and late events are a window's
            size = timedelta(milliseconds=before_ms + after_ms)
            clock = Tumbling(size, grace=grace, time=time, on_late=on_late)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"join: {exc}") from None
        pair = on if isinstance(on, tuple) else (on, on)
        if len(pair) != 2 or not all(k is None or isinstance(k, str) or callable(k) for k in pair):
            raise TypeError(f"join: on= is a field name, a function, or a pair of them, not {on!r}")

        def register(fn: Any) -> Any:
            label = name or fn.__name__
            views = (f"join-{label}", f"flow-{label}-{LEFT}", f"flow-{label}-{RIGHT}")
            taken = [view for view in views if view in self.views]
            if taken:
                raise ValueError(f"join {label!r}: view {taken[0]!r} is already declared")
            sides = {LEFT: side_types(fn, 0), RIGHT: side_types(fn, 1)}
            for types, topic, key in zip(sides.values(), (left, right), pair, strict=True):
                carried = topic.codec.types.values()
                for cls in types:
                    if cls not in carried:
                        raise TypeError(
                            f"join {label!r}: {cls.__name__} is not carried by {topic.get_topic_name()!r}"
                        )
                    if key is None and cls.event_key is None and topic.key_field is None:
                        raise TypeError(
                            f"join {label!r}: {cls.__name__} has no key field: give on="
                        )
            if left is right and set(sides[LEFT]) & set(sides[RIGHT]):
                raise TypeError(
                    f"join {label!r}: a type on both sides of one topic is not supported "
                    "(each event would be copied twice, under one event id)"
                )
            merged = self._internal_topic(
                f"{self.conf.id}-join-{label}",
                list(dict.fromkeys((*sides[LEFT], *sides[RIGHT]))),
                partitions or left.partitions,
            )
            view = self._internal_view(f"join-{label}", partitions=merged.partitions)
            for (side, types), topic, key in zip(sides.items(), (left, right), pair, strict=True):
                flow = self._internal_view(f"flow-{label}-{side}", key=int, partitions=None)
                key_of = _key_function(key) or _event_key(topic)
                made = JoinInput(topic, flow, join=label, side=side, key_of=key_of, clock=clock, merged=merged, types=types)  # fmt: skip
                self.engine.add(made)
                self.topics.add(topic)
            self.engine.add(
                StreamJoinProjection(
                    merged,
                    view,
                    name=label,
                    fn=fn,
                    to=to,
                    before_ms=before_ms,
                    after_ms=after_ms,
                    clock=clock,
                    how=how,
                    dead_letters=self.dead_letters,
                )
            )
            return fn

        return register

    def _transform(
        self,
        kind: str,
        source: EventTopic,
        targets: dict[str, EventTopic],
        events: Sequence[type[Event]] | None,
        name: str | None,
    ) -> Callable[[Any], Any]:
        if not isinstance(source, EventTopic):
            raise TypeError(f"{kind}: the source must be an event topic (app.event_topic)")

        def register(fn: Any) -> Any:
            label = name or fn.__name__
            types = TransformProjection.event_types(kind, fn, source) if events is None else events
            view = self._internal_view(f"flow-{label}", key=int, partitions=None)
            self.engine.add(
                TransformProjection(
                    source, view, kind=kind, name=label, fn=fn, targets=targets, types=types
                )
            )
            self.topics.add(source)
            return fn

        return register

    def topic_carrying(
        self, types: Sequence[type[Event]], what: str, *, choosing: str = ""
    ) -> EventTopic:
        """The one event topic carrying ``types``; ``choosing`` says how the caller can
        name one where several do (empty: it cannot, the types must be on one topic)."""
        found = [
            t for t in self.event_topics.values() if all(c in t.codec.types.values() for c in types)
        ]
        if len(found) != 1:
            named = [t.__name__ for t in types]
            where = ", ".join(sorted(t.get_topic_name() for t in found)) or "no event topic"
            remedy = (
                "declare the topic carrying them first"
                if not found
                else choosing or "each must be carried by one event topic only"
            )
            raise LookupError(f"{what}: {named} are carried by {where}; {remedy}")
        return found[0]

    def command_route(self, name: str) -> CommandProjection | None:
        """The aggregate whose handlers take the command type ``name``."""
        for projection in self.aggregates.values():
            if any(cls.event_type == name for cls in projection.command_handlers):
                return projection
        return None

    def check(self) -> None:
        """Refuse what cannot work, before a worker starts: a faust agent on a topic a
        projection reads would never see an event (the projection takes every batch of
        its source off the consumer first); views without faust's assignor could not be
        routed to; a web server other machines reach with a scope no token guards; a
        lookup join (``reads=``) of a view not partitioned like the projection's source."""
        exposed = exposure_problem(self)
        if exposed is not None and not self.insecure_open:
            raise ValueError(f"{exposed}: {EXPOSURE_REMEDY}")
        claimed = {
            topic.get_topic_name(): projection.view.name
            for projection in self.engine.projections.values()
            for topic in (*projection.sources, projection.fold_topic)
        }
        if self.views and self.conf.table_standby_replicas < 1:
            raise ValueError(
                "table_standby_replicas=0 makes faust use Kafka's round-robin assignor, which "
                "tells no worker who holds which partition: views could not be read across "
                "workers. Keep it at 1 or more (standbys are also what makes a takeover fast)"
            )
        self.engine.check_co_partitioning()
        for agent in self.agents.values():
            for name in getattr(agent.channel, "topics", ()):
                if name in claimed:
                    raise ValueError(
                        f"agent {agent.name!r} consumes {name!r}, which the projection into "
                        f"view {claimed[name]!r} reads: it would get no events. Give the "
                        "agent its own topic, or make it a projection handler"
                    )

    def on_init_dependencies(self) -> Any:
        services = list(super().on_init_dependencies())
        if self.engine.projections and self.producer in services:
            services.insert(services.index(self.producer) + 1, self.engine)
        if self.global_views.views and self.producer in services:
            services.insert(services.index(self.producer) + 1, self.global_views)
        return services

    def on_webserver_init(self, web: Any) -> None:
        exposed = exposure_problem(self)
        if exposed is not None:
            if not self.insecure_open:  # a worker started without the CLI's check()
                raise RuntimeError(f"{exposed}: {EXPOSURE_REMEDY}")
            logger.warning("insecure_open: %s; anyone who can connect may use them", exposed)
        install_routes(self, web.web_app)

    def web_class(self) -> type[Web]:
        if self.conf.web.scheme == "aiohttp":  # "/" is the status page, not faust's index
            return BelvedereWeb
        return super().web_class()

    def transport_class(self) -> type[Transport]:
        return transport_for(self.conf.broker_consumer[0])

    @cached_property
    def dead_letters(self) -> DeadLetters:
        """Where bad input goes, and how much of it there was."""
        return DeadLetters(self)

    @property
    def ready(self) -> bool:
        """True once every assigned partition is recovered and no rebalance is under way.

        faust starts its web server before recovery, so a handler that reads a table can
        otherwise answer from a partly restored one; and it calls itself ready before the
        views of the partitions it was just given are restored.
        """
        return (
            self.tables.recovery.completed.is_set()
            and not (self.rebalancing or self.in_recovery)
            and self.engine.all_served()
            and self.global_views.caught_up()
        )


#: What faust.App takes besides Belvedere's settings: its own settings and constructor keywords.
_FAUST_KEYWORDS = frozenset(faust.types.settings.Settings.SETTINGS) | {
    name
    for name, parameter in inspect.signature(faust.App.__init__).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
}


def _signature() -> inspect.Signature:
    own = inspect.signature(App.__init__)
    parameters = [p for p in own.parameters.values() if p.kind is not p.VAR_KEYWORD]
    return own.replace(
        parameters=[*parameters, *settings.keyword_parameters(), own.parameters["options"]]
    )


App.__init__.__signature__ = _signature()  # type: ignore[attr-defined]

if App.__doc__:  # None under python -OO
    App.__doc__ = App.__doc__.replace(
        "{settings}", textwrap.indent(settings.rst_table(), "    ").lstrip()
    )
