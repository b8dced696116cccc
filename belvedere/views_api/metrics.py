"""``GET /metrics`` in Prometheus text format, and the request timing behind it.

Counters and gauges are read from the app when scraped; only request latencies are
recorded as requests come (a middleware), in a fixed-bucket histogram per route.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from belvedere.views_api.changes import Feeds, feeds_of
from belvedere.views_api.errors import CLIENT_GONE
from belvedere.views_api.reads import lag_of, lineage

__all__ = ["RequestTimes", "metrics", "timed"]

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_TIMES = web.AppKey("belvedere.request_times", object)


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


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: Any) -> str:
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in labels.items()) + "}"


def _limits(app: Any, feeds: Feeds | None) -> list[str]:
    """How much of the worker HTTP clients hold (see belvedere.views_api.server)."""
    found = [
        ("belvedere_change_feeds", "gauge", "Change feeds open", feeds and feeds.open),
        (
            "belvedere_change_feed_pollers",
            "gauge",
            "Changelogs polled for the feeds (one each, however many feeds read it)",
            feeds and len(feeds.pollers),
        ),
        (
            "belvedere_change_feed_polls_total",
            "counter",
            "Offset requests made for change feeds",
            feeds and feeds.polls,
        ),
    ]
    server = getattr(app.web, "server", None)
    if server is not None:
        found += [
            ("belvedere_http_connections", "gauge", "Open HTTP connections", len(server.open)),
            (
                "belvedere_http_connections_closed_idle_total",
                "counter",
                "Idle connections closed to admit new ones (web_max_connections)",
                server.evicted,
            ),
            (
                "belvedere_http_connections_refused_total",
                "counter",
                "Connections refused (503) because every connection was busy",
                server.refused,
            ),
        ]
    lines = []
    for name, kind, help_, value in found:
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value or 0}"]
    return lines


def _render(app: Any, times: RequestTimes, feeds: Feeds | None = None) -> str:
    lines: list[str] = []

    def family(name: str, kind: str, help_: str) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")

    engine = app.projections
    family("belvedere_events_processed_total", "counter", "Source events folded into each view")
    for view in sorted(app.views):
        count = engine.events_processed.get(view, 0)
        lines.append(f"belvedere_events_processed_total{_labels(view=view)} {count}")
    family(
        "belvedere_fold_seconds_total",
        "counter",
        "Seconds spent folding source events into each view, live or rebuilding",
    )
    for (view, mode), seconds in sorted(engine.fold_seconds.items()):
        lines.append(f"belvedere_fold_seconds_total{_labels(view=view, mode=mode)} {seconds!r}")
    family("belvedere_fold_events_total", "counter", "Source events those seconds folded")
    for (view, mode), count in sorted(engine.fold_events.items()):
        lines.append(f"belvedere_fold_events_total{_labels(view=view, mode=mode)} {count}")
    family(
        "belvedere_dead_letters_total",
        "counter",
        "Messages sent to the dead letters, by the view whose handler failed (empty: none), "
        "source topic and kind",
    )
    for (view, topic, kind), count in sorted(app.dead_letters.labelled.items()):
        labels = _labels(view=view, topic=topic, kind=kind)
        lines.append(f"belvedere_dead_letters_total{labels} {count}")

    family("belvedere_view_lag_events", "gauge", "Source events not yet applied, per partition")
    family_rows: list[str] = []
    done: list[str] = []
    total: list[str] = []
    serving: list[str] = []
    for name, view in sorted(app.views.items()):
        topics = lineage(app, view)
        for p, status in sorted(view.status.items()):
            labels = _labels(view=name, partition=p)
            lag = lag_of(app, topics, p, status)
            if lag is not None:
                lines.append(f"belvedere_view_lag_events{labels} {lag}")
            store = view.stores.get(p)
            if status.state == "serving" and store is not None:
                family_rows.append(f"belvedere_view_rows{labels} {store.count()}")
            done.append(f"belvedere_view_restore_done_records{labels} {status.restore_done}")
            total.append(f"belvedere_view_restore_total_records{labels} {status.restore_total}")
            serving.append(f"belvedere_view_serving{labels} {int(status.state == 'serving')}")
    family("belvedere_view_rows", "gauge", "Rows in each served partition")
    lines.extend(family_rows)
    family("belvedere_view_restore_done_records", "gauge", "Changelog records restored")
    lines.extend(done)
    family("belvedere_view_restore_total_records", "gauge", "Changelog records to restore")
    lines.extend(total)
    family("belvedere_view_serving", "gauge", "1 once the partition is restored and serving")
    lines.extend(serving)

    budget = engine.budget
    if budget is not None:
        family(
            "belvedere_rocksdb_memory_bytes",
            "gauge",
            "RocksDB memory of the worker's view stores: cached blocks and memtables",
        )
        lines.append(f"belvedere_rocksdb_memory_bytes {budget.usage()}")
        family("belvedere_rocksdb_memory_budget_bytes", "gauge", "What it may grow to")
        lines.append(f"belvedere_rocksdb_memory_budget_bytes {budget.capacity}")

    family("belvedere_http_request_duration_seconds", "histogram", "HTTP request latency, by route")
    for (method, route, status), counts in sorted(times.series.items()):
        running = 0.0
        base = {"method": method, "route": route, "status": status}
        for bound, count in zip((*BUCKETS, "+Inf"), counts[:-1], strict=True):
            running += count
            le = bound if isinstance(bound, str) else repr(bound)
            lines.append(
                f"belvedere_http_request_duration_seconds_bucket{_labels(**base, le=le)} {running:g}"
            )
        lines.append(f"belvedere_http_request_duration_seconds_count{_labels(**base)} {running:g}")
        lines.append(f"belvedere_http_request_duration_seconds_sum{_labels(**base)} {counts[-1]}")
    lines.extend(_limits(app, feeds))
    return "\n".join(lines) + "\n"


async def metrics(app: Any, request: web.Request) -> web.StreamResponse:
    return web.Response(
        text=_render(app, _times(request.app), feeds_of(app, request.app)),
        content_type="text/plain",
        headers={"X-Content-Type-Options": "nosniff"},
        charset="utf-8",
    )
