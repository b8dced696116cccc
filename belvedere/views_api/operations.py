"""What one route is, declared once: its method, path, handler, scope, parameters, body and
answers. :mod:`belvedere.views_api.routes` lists them and installs them; the OpenAPI spec
(:mod:`belvedere.views_api.openapi`) describes them; the handlers parse their parameters
with the :class:`~belvedere.views_api.params.Param` objects a route lists, so what the spec
says of a route and what the worker does with it cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from belvedere.views_api.params import Param, Schema

__all__ = ["ERROR", "Answer", "Body", "Route", "ok", "refusals"]

#: The body of every error answer.
ERROR: Schema = {"$ref": "#/components/schemas/Error"}
JSON = "application/json"

#: Why a route answers each error status, unless its declaration says otherwise.
REASONS = {
    400: "a bad parameter or body",
    401: "no token where the route's scope needs one",
    403: "a token that does not open the route's scope",
    404: "no such view, key, topic or path",
    409: "a conflict: a rebuild already running, or not the expectedVersion",
    410: "the position is gone (the view was rebuilt, or its changelog compacted)",
    415: "the body is not sent as application/json",
    422: "the command was rejected",
    503: "the partition is not served right now (recovering, or moving): retry after",
    504: "not in time: the token's positions, or the command's outcome",
}

Handler = Callable[[Any, web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True, eq=False)
class Answer:
    """One status a route answers, and what it then sends (``schema`` None: no schema,
    as for a text or event stream)."""

    status: int
    description: str
    schema: Schema | None = None
    media: str = JSON

    def described(self) -> dict[str, Any]:
        content = {} if self.schema is None else {"schema": self.schema}
        return {"description": self.description, "content": {self.media: content}}


def ok(description: str, status: int = 200, schema: Schema | None = None) -> Answer:
    """A JSON success answer (``schema`` None: any JSON)."""
    return Answer(status, description, {} if schema is None else schema)


def refusals(*statuses: int) -> tuple[Answer, ...]:
    """The JSON error answers of these statuses, for their usual reasons."""
    return tuple(Answer(status, REASONS[status], ERROR) for status in statuses)


@dataclass(frozen=True, slots=True, eq=False)
class Body:
    """The JSON body a route takes."""

    schema: Schema
    description: str | None = None

    def described(self) -> dict[str, Any]:
        said = {} if self.description is None else {"description": self.description}
        return {**said, "required": True, "content": {JSON: {"schema": self.schema}}}


_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


@dataclass(frozen=True, slots=True, eq=False)
class Route:
    """One method on one path: who may call it (``scope``, see
    :mod:`belvedere.views_api.auth`), what it takes and what it answers. A route outside
    the API (the status page) has ``in_spec`` off."""

    method: str
    path: str
    handler: Handler
    scope: str
    summary: str = ""
    parameters: tuple[Param, ...] = ()
    body: Body | None = None
    answers: tuple[Answer, ...] = ()
    in_spec: bool = True

    def __post_init__(self) -> None:
        declared = {p.name for p in self.parameters if p.where == "path"}
        placeholders = set(_PLACEHOLDER.findall(self.path))
        if declared != placeholders:
            raise ValueError(
                f"{self.method} {self.path} declares path parameters {sorted(declared)}, "
                f"but its path has {sorted(placeholders)}"
            )

    @property
    def name(self) -> str:
        """The route's name in aiohttp's router (what the token check looks its scope up by)."""
        return self.handler.__name__
