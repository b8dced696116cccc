"""aiohttp internals the HTTP layer's connection limits rely on: the runner's server
factory and the keywords a server hands its connections.

Each names the aiohttp limit it works around; ``tests/test_compat.py`` checks the private
names each one relies on.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

__all__ = ["AppRunner", "server_kwargs"]


class AppRunner(web.AppRunner):
    """aiohttp's runner, serving through the server :meth:`make_server` returns.

    Works around: ``AppRunner`` takes no server class; it builds its ``web.Server`` in the
    private ``_make_server``.
    """

    async def _make_server(self) -> web.Server:
        return self.make_server(await super()._make_server())

    def make_server(self, plain: web.Server) -> web.Server:
        """The server to serve through, given the one aiohttp built."""
        return plain


def server_kwargs(server: web.Server) -> dict[str, Any]:
    """The keywords (timeouts, parser limits) ``server`` passes to each connection.

    Works around: ``web.Server`` keeps them in the private ``_kwargs``, and a server that
    builds its own connections (a ``RequestHandler`` subclass) needs them.
    """
    return server._kwargs
