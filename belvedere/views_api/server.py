"""faust's aiohttp web driver, with ``/`` left to Belvedere's status page.

faust always mounts a ``{"status": "OK"}`` index at ``/`` (its production blueprint);
Belvedere serves its status page there instead, and ``/health`` answers liveness.
"""

from __future__ import annotations

from typing import ClassVar

from faust.web.drivers.aiohttp import Web as AiohttpWeb

__all__ = ["Web"]


class Web(AiohttpWeb):
    production_blueprints: ClassVar[list] = []
