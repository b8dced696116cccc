"""faust's aiohttp web driver, serving Belvedere's routes only.

faust always mounts a ``{"status": "OK"}`` index at ``/`` (its production blueprint);
Belvedere serves its status page there instead, and ``/health`` answers liveness. faust's
other built-in blueprints (``/router/``, ``/table/``, and the debug and optional ones)
are not mounted: they would answer outside the scopes and the OpenAPI spec, with table
contents for anyone. An app's own ``app.page`` routes still are (read scope for ``GET``).
Its connections are bounded by :mod:`belvedere.views_api.connections`.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from faust.web.drivers.aiohttp import Web as AiohttpWeb

from belvedere.compat.faust import replace_web_runner, web_runner
from belvedere.views_api.connections import AcceptErrors, LimitedRunner, LimitedServer, WebLimits
from belvedere.views_api.surface import ServedApp

__all__ = ["Web"]


class Web(AiohttpWeb):
    production_blueprints: ClassVar[list] = []
    default_blueprints: ClassVar[list] = []
    debug_blueprints: ClassVar[list] = []
    optional_blueprints: ClassVar[list] = []

    def __init__(self, app: ServedApp, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.limits: WebLimits = app.web_limits
        replace_web_runner(self, LimitedRunner(self.web_app, limits=self.limits, access_log=None))
        self.accept_errors: AcceptErrors | None = None

    @property
    def server(self) -> LimitedServer | None:
        server = web_runner(self).server
        return server if isinstance(server, LimitedServer) else None

    async def start_server(self) -> None:
        await super().start_server()
        assert self.server is not None
        self.accept_errors = AcceptErrors(self.server)
        self.accept_errors.install(asyncio.get_running_loop())

    async def stop_server(self) -> None:
        if self.accept_errors is not None:
            self.accept_errors.remove()
            self.accept_errors = None
        await super().stop_server()
