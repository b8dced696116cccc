"""``GET /metrics`` in Prometheus text format, and the request timing behind it.

prometheus-client renders the exposition; Belvedere only tells it what to read. Counters
and gauges are read from the app when scraped (custom collectors over the state the engine,
the views and the HTTP layer already keep), so nothing is counted twice. Only request
latencies are recorded as requests come (a middleware), in a fixed-bucket histogram per
route. Each web app has its own registry: tests run several apps in one process.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from belvedere.views_api.changes import feeds_of
from belvedere.views_api.errors import CLIENT_GONE
from belvedere.views_api.reads import lag_of, lineage
from belvedere.views_api.surface import ServedApp

__all__ = ["RequestTimes", "metrics", "timed"]

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_TIMES = web.AppKey("belvedere.request_times", object)
_REGISTRY = web.AppKey("belvedere.metrics_registry", CollectorRegistry)


class RequestTimes:
    """Latency histograms, keyed by (method, route, status class)."""

    def __init__(self) -> None:
        self.series: dict[tuple[str, str, str], list[float]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, f"{status // 100}xx")
        found = self.series.get(key)
        if found is None:
            found = self.series[key] = [0.0] * (len(BUCKETS) + 2)  # buckets, +Inf, sum
        found[bisect.bisect_left(BUCKETS, seconds)] += 1
        found[-1] += seconds


def _times(web_app: web.Application) -> RequestTimes:
    found = web_app.get(_TIMES)
    if found is None:
        found = web_app[_TIMES] = RequestTimes()
    return found  # type: ignore[return-value]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def timed(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        status = CLIENT_GONE  # cancelled when its client hung up
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        _times(request.app).observe(request.method, route, status, time.perf_counter() - started)


class EngineMetrics(Collector):
    """What the projection engine and the dead letters have counted."""

    def __init__(self, app: ServedApp) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        engine = self.app.engine
        processed = CounterMetricFamily(
            "belvedere_events_processed", "Source events folded into each view", labels=["view"]
        )
        for view in sorted(self.app.views):
            processed.add_metric([view], engine.events_processed.get(view, 0))
        yield processed
        seconds = CounterMetricFamily(
            "belvedere_fold_seconds",
            "Seconds spent folding source events into each view, live or rebuilding",
            labels=["view", "mode"],
        )
        for (view, mode), value in sorted(engine.fold_seconds.items()):
            seconds.add_metric([view, mode], value)
        yield seconds
        events = CounterMetricFamily(
            "belvedere_fold_events", "Source events those seconds folded", labels=["view", "mode"]
        )
        for (view, mode), count in sorted(engine.fold_events.items()):
            events.add_metric([view, mode], count)
        yield events
        dead = CounterMetricFamily(
            "belvedere_dead_letters",
            "Messages sent to the dead letters, by the view whose handler failed (empty: none), "
            "source topic and kind",
            labels=["view", "topic", "kind"],
        )
        for labels, count in sorted(self.app.dead_letters.labelled.items()):
            dead.add_metric(list(labels), count)
        yield dead


class ViewMetrics(Collector):
    """Each view partition's lag, rows, restore progress and state."""

    def __init__(self, app: ServedApp) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        def gauge(name: str, help_: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, help_, labels=["view", "partition"])

        lag = gauge("belvedere_view_lag_events", "Source events not yet applied, per partition")
        rows = gauge("belvedere_view_rows", "Rows in each served partition")
        done = gauge("belvedere_view_restore_done_records", "Changelog records restored")
        total = gauge("belvedere_view_restore_total_records", "Changelog records to restore")
        serving = gauge("belvedere_view_serving", "1 once the partition is restored and serving")
        for name, view in sorted(self.app.views.items()):
            topics = lineage(self.app, view)
            for p, status in sorted(view.status.items()):
                labels = [name, str(p)]
                found = lag_of(self.app, topics, p, status)
                if found is not None:
                    lag.add_metric(labels, found)
                store = view.stores.get(p)
                if status.state == "serving" and store is not None:
                    rows.add_metric(labels, store.count())
                done.add_metric(labels, status.restore_done)
                total.add_metric(labels, status.restore_total)
                serving.add_metric(labels, int(status.state == "serving"))
        yield from (lag, rows, done, total, serving)


class MemoryMetrics(Collector):
    """The RocksDB memory budget, when the worker has one."""

    def __init__(self, app: ServedApp) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        budget = self.app.engine.budget
        if budget is None:
            return
        yield GaugeMetricFamily(
            "belvedere_rocksdb_memory_bytes",
            "RocksDB memory of the worker's view stores: cached blocks and memtables",
            value=budget.usage(),
        )
        yield GaugeMetricFamily(
            "belvedere_rocksdb_memory_budget_bytes", "What it may grow to", value=budget.capacity
        )


class RequestMetrics(Collector):
    """The request latencies ``timed`` recorded."""

    def __init__(self, times: RequestTimes) -> None:
        self.times = times

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            "belvedere_http_request_duration_seconds",
            "HTTP request latency, by route",
            labels=["method", "route", "status"],
        )
        bounds = [*map(floatToGoString, BUCKETS), "+Inf"]
        for labels, counts in sorted(self.times.series.items()):
            running = 0.0
            buckets = []
            for bound, count in zip(bounds, counts[:-1], strict=True):
                running += count
                buckets.append((bound, running))
            family.add_metric(list(labels), buckets, counts[-1])
        yield family


class HttpMetrics(Collector):
    """How much of the worker HTTP clients hold (see belvedere.views_api.server)."""

    def __init__(self, app: ServedApp, web_app: web.Application) -> None:
        self.app = app
        self.web_app = web_app

    def collect(self) -> Iterator[Metric]:
        feeds = feeds_of(self.app, self.web_app)
        yield GaugeMetricFamily("belvedere_change_feeds", "Change feeds open", value=feeds.open)
        yield GaugeMetricFamily(
            "belvedere_change_feed_pollers",
            "Changelogs polled for the feeds (one each, however many feeds read it)",
            value=len(feeds.pollers),
        )
        yield CounterMetricFamily(
            "belvedere_change_feed_polls",
            "Offset requests made for change feeds",
            value=feeds.polls,
        )
        server = getattr(self.app.web, "server", None)
        if server is None:
            return
        yield GaugeMetricFamily(
            "belvedere_http_connections", "Open HTTP connections", value=len(server.open)
        )
        yield CounterMetricFamily(
            "belvedere_http_connections_closed_idle",
            "Idle connections closed to admit new ones (web_max_connections)",
            value=server.evicted,
        )
        yield CounterMetricFamily(
            "belvedere_http_connections_refused",
            "Connections refused (503) because every connection was busy",
            value=server.refused,
        )


def registry_of(app: ServedApp, web_app: web.Application) -> CollectorRegistry:
    """The web app's registry, its collectors registered in the order they are exposed."""
    found = web_app.get(_REGISTRY)
    if found is None:
        found = web_app[_REGISTRY] = CollectorRegistry()
        for collector in (
            EngineMetrics(app),
            ViewMetrics(app),
            MemoryMetrics(app),
            RequestMetrics(_times(web_app)),
            HttpMetrics(app, web_app),
        ):
            found.register(collector)
    return found


async def metrics(app: ServedApp, request: web.Request) -> web.StreamResponse:
    return web.Response(
        body=generate_latest(registry_of(app, request.app)),
        headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4, "X-Content-Type-Options": "nosniff"},
    )
