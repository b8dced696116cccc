"""``GET /trace/{correlationId}``: every event of one flow, across topics, in causal order.

Each event comes after the one that caused it (its ``causationId``), siblings by time;
each says where it is (topic, partition, offset). Only with tracing on (``app.trace_flows()``).
"""

from __future__ import annotations

from aiohttp import web

from belvedere.agents.trace import causal_order
from belvedere.views_api.errors import error, json
from belvedere.views_api.params import Param
from belvedere.views_api.reads import stored_row
from belvedere.views_api.surface import ServedApp

__all__ = ["FLOW", "get_trace"]

FLOW = Param("id", "the flow's correlation id", "path", {"type": "string", "minLength": 1})


async def get_trace(app: ServedApp, request: web.Request) -> web.StreamResponse:
    flow = request.match_info[FLOW.name]
    if app.flow_trace is None:
        return error(
            404, "tracing-off", f"{app.conf.id} does not trace flows: call app.trace_flows()"
        )
    view = app.flow_trace.view
    data = await stored_row(app, request, view, flow, f"no events with correlation id {flow!r}")
    if isinstance(data, web.Response):
        return data
    row = view.decode_value(data)
    row["events"] = causal_order(row["events"])
    return json(row)
