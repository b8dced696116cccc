"""The App as the HTTP layer sees it.

``belvedere.App`` installs the HTTP layer's routes, so the HTTP layer cannot name it: its
handlers take any object with the members below, which the App has (``tests/test_app.py``
checks). These are the members of :class:`~belvedere.agents.declared.DeclaredApp` and
those the routes, their guards and the server use besides.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from faust.web import Web

from belvedere.agents.commands import CommandProjection
from belvedere.agents.declared import DeclaredApp
from belvedere.agents.engine import ProjectionEngine
from belvedere.agents.trace import TraceProjection
from belvedere.streams.records import Event
from belvedere.views_api.connections import WebLimits
from belvedere.views_api.http_publish import Publishing
from belvedere.views_api.tls import WebTLS

__all__ = ["ServedApp"]


@runtime_checkable
class ServedApp(DeclaredApp, Protocol):
    """What the HTTP layer uses of the app, besides its declarations."""

    @property
    def engine(self) -> ProjectionEngine: ...

    #: The correlation index, once ``app.trace_flows()`` has turned it on.
    @property
    def flow_trace(self) -> TraceProjection | None: ...

    #: Per event topic name: what ``POST /events`` may publish to it.
    @property
    def http_publishing(self) -> Mapping[str, Publishing]: ...

    #: The scopes' bearer tokens (:mod:`belvedere.views_api.auth`), and what workers
    #: sign forwarded requests with (None: derived from the tokens).
    @property
    def admin_token(self) -> str | None: ...

    @property
    def api_token(self) -> str | None: ...

    @property
    def read_token(self) -> str | None: ...

    @property
    def write_token(self) -> str | None: ...

    @property
    def forward_secret(self) -> str | None: ...

    #: More names ``Host`` may give, and origins whose pages may call the worker.
    @property
    def web_allowed_hosts(self) -> tuple[str, ...]: ...

    @property
    def web_allowed_origins(self) -> tuple[str, ...]: ...

    @property
    def web_limits(self) -> WebLimits: ...

    @property
    def web_tls(self) -> WebTLS: ...

    @property
    def web(self) -> Web: ...

    #: Dead letters a minute past which ``/ready`` answers 503 (None: no limit).
    @property
    def ready_max_dead_letter_rate(self) -> int | None: ...

    @property
    def ready(self) -> bool: ...

    #: Every event type the app's event topics carry (the spec's envelope names them).
    @property
    def event_types(self) -> list[type[Event]]: ...

    def command_route(self, name: str) -> CommandProjection | None: ...
