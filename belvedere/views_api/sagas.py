"""``GET /sagas/{name}/{id}``: one saga's state and history, by its correlation id.

Answered by the worker holding the saga's partition (forwarded there otherwise): status
(running | completed | compensated), the current step, its deadline, the event that
started it, what each step's event brought, and every step taken, sent and received.
"""

from __future__ import annotations

from aiohttp import web

from belvedere.views_api.errors import error, json
from belvedere.views_api.params import Name, Param
from belvedere.views_api.reads import stored_row
from belvedere.views_api.surface import ServedApp

__all__ = ["CORRELATION", "SAGA", "get_saga"]

SAGA = Name("name", "the saga", "path", known=lambda app: sorted(app.sagas))
CORRELATION = Param("id", "its correlation id", "path", {"type": "string", "minLength": 1})


async def get_saga(app: ServedApp, request: web.Request) -> web.StreamResponse:
    name, saga_id = request.match_info[SAGA.name], request.match_info[CORRELATION.name]
    projection = app.sagas.get(name)
    if projection is None:
        known = ", ".join(SAGA.known(app)) or "none"
        return error(404, "unknown-saga", f"no saga {name!r} (sagas: {known})")
    view = projection.view
    data = await stored_row(
        app, request, view, saga_id, f"no {name} saga for correlation id {saga_id!r}"
    )
    if isinstance(data, web.Response):
        return data
    row = view.decode_value(data)
    steps = projection.saga.steps
    row["stepName"] = steps[row["step"]].name if row["step"] < len(steps) else None
    del row["seen"]
    return json(row)
