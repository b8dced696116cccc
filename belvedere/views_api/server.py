"""faust's aiohttp web driver, serving Belvedere's routes only.

faust always mounts a ``{"status": "OK"}`` index at ``/`` (its production blueprint);
Belvedere serves its status page there instead, and ``/health`` answers liveness. faust's
other built-in blueprints (``/router/``, ``/table/``, and the debug and optional ones)
are not mounted: they would answer outside the scopes and the OpenAPI spec, with table
contents for anyone. An app's own ``app.page`` routes still are (read scope for ``GET``).
"""

from __future__ import annotations

from typing import ClassVar

from faust.web.drivers.aiohttp import Web as AiohttpWeb

__all__ = ["Web"]


class Web(AiohttpWeb):
    production_blueprints: ClassVar[list] = []
    default_blueprints: ClassVar[list] = []
    debug_blueprints: ClassVar[list] = []
    optional_blueprints: ClassVar[list] = []
