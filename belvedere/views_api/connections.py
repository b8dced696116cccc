"""How many connections a worker keeps, for how long, and what a bad request line gets.

aiohttp alone keeps an idle connection an hour, waits for headers and bodies forever and
accepts connections until the process runs out of file descriptors; then asyncio logs a
traceback per failed accept (hundreds of thousands a minute) and no client gets in. So:

- at most ``max_connections`` open connections: a new one closes the connection idle the
  longest (no request in flight), and is answered 503 only when every one is busy;
- a request's headers must arrive within ``header_timeout`` of its first byte (or of the
  connection), its body within ``body_timeout`` of its headers (else 408), and an idle
  keep-alive connection is closed after ``keepalive_timeout``. A long poll or a change
  feed is a request in flight: none of these end it;
- out of file descriptors, idle connections are shed and one line is logged per
  ``FD_LOG_INTERVAL``, never one per failed accept;
- aiohttp's own parser errors (a bad request line, a header line too long) answer JSON,
  like every other error.

aiohttp internals touched, each with a canary test in tests/test_limits.py:
``AppRunner._make_server`` (to build this server), ``Server._kwargs`` (the handler
settings it passes on) and ``RequestHandler.handle_error`` (parser errors skip middlewares).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from belvedere.compat.aiohttp import AppRunner, server_kwargs
from belvedere.views_api.errors import error

__all__ = [
    "AcceptErrors",
    "Connection",
    "LimitedRunner",
    "LimitedServer",
    "WebLimits",
    "default_max_connections",
]

logger = logging.getLogger(__name__)

#: The most connections a worker keeps by default, whatever its file limit.
MAX_CONNECTIONS_CEILING = 4096
#: Seconds between two "out of file descriptors" log lines.
FD_LOG_INTERVAL = 10.0
OUT_OF_RESOURCE = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: What a connection refused because every connection is busy reads, before it is closed.
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
)
BUSY_BODY = b'{"error":"busy","detail":"every connection of this worker is busy: retry"}'


def default_max_connections() -> int:
    """Half the soft file-descriptor limit (the other half for the stores, the broker's
    sockets and logs), at most ``MAX_CONNECTIONS_CEILING``: 512 under the common 1024."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS_CEILING
    return max(16, min(MAX_CONNECTIONS_CEILING, soft // 2))


@dataclass(frozen=True)
class WebLimits:
    """How much of a worker HTTP clients may hold, and for how long (see the module)."""

    max_connections: int
    keepalive_timeout: float = 30.0
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    #: Change feeds served at once; None: half of ``max_connections``.
    max_change_feeds: int | None = None

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError(f"web_max_connections must be 1 or more, not {self.max_connections}")
        if self.max_change_feeds is None:
            object.__setattr__(self, "max_change_feeds", max(1, self.max_connections // 2))


class Connection(RequestHandler):
    """One client connection, which its server may close while it is idle."""

    def __init__(self, server: LimitedServer, **kwargs: Any) -> None:
        super().__init__(server, **kwargs)
        self.server = server
        self.busy = False
        self.refused = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.server.admit(self):
            self.refused = True
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(BUSY % (len(BUSY_BODY), BUSY_BODY))
            transport.close()
            return
        super().connection_made(transport)
        self._wait_for_headers()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.refused:
            return
        self._cancel_timers()
        self.server.forget(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            self._wait_for_headers()
        super().data_received(data)

    def _wait_for_headers(self) -> None:
        if self._header_timer is None:
            timeout = self.server.limits.header_timeout
            self._header_timer = self.server.loop.call_later(timeout, self._headers_too_slow)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.busy:
            self.force_close()

    def started(self, request: web.BaseRequest) -> None:
        """A request's headers are in: it is in flight until its answer is written."""
        self.busy = True
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        body = request.content
        if request.body_exists and not body.is_eof():
            timer = self.server.loop.call_later(
                self.server.limits.body_timeout, self._body_too_slow, request
            )
            self._body_timer = timer
            body.on_eof(timer.cancel)

    def _body_too_slow(self, request: web.BaseRequest) -> None:
        self._body_timer = None
        body = request.content
        if body.is_eof():
            return
        seconds = self.server.limits.body_timeout
        body.set_exception(
            web.HTTPRequestTimeout(text=f"the request body took longer than {seconds:g} s")
        )
        body.feed_eof()  # nothing more is read from it: aiohttp does not linger on it
        self.close()  # the rest of the body would be read as the next request

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self.busy = False
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None
            self.server.touched(self)

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's own errors (the HTTP parser's, which no middleware sees), as JSON."""
        if request.writer.output_size > 0:
            raise ConnectionError("the answer was already being sent")
        if status >= 500:
            logger.error("%s %s failed", request.method, request.path, exc_info=exc)
            detail = "the worker failed to answer; see its log"
        else:
            logger.debug("bad request from %s: %s", request.remote, message or exc)
            detail = (message or str(exc or "") or "malformed request").splitlines()[0][:200]
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "error"
        response = error(status, phrase.lower().replace(" ", "-"), detail)
        response.force_close()
        return response


class LimitedServer(web.Server):
    """aiohttp's low-level server, whose connections are :class:`Connection` and capped."""

    def __init__(self, handler: Any, *, limits: WebLimits, **kwargs: Any) -> None:
        super().__init__(self._tracked(handler), **kwargs)
        self.limits = limits
        self.loop = kwargs.get("loop") or asyncio.get_running_loop()
        #: Open connections, the one idle the longest first.
        self.open: dict[Connection, None] = {}
        self.evicted = 0
        self.refused = 0

    @staticmethod
    def _tracked(handler: Any) -> Any:
        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            protocol = request.protocol
            if isinstance(protocol, Connection):
                protocol.started(request)
            return await handler(request)

        return handle

    def __call__(self) -> Connection:
        return Connection(self, loop=self.loop, **server_kwargs(self))

    def admit(self, connection: Connection) -> bool:
        if len(self.open) >= self.limits.max_connections and not self.shed(1):
            self.refused += 1
            return False
        self.open[connection] = None
        return True

    def shed(self, count: int) -> int:
        """Close up to ``count`` connections with no request in flight, idle longest first."""
        idle = []
        for connection in self.open:
            if not connection.busy:
                idle.append(connection)
                if len(idle) == count:
                    break
        for connection in idle:
            self.open.pop(connection, None)
            connection.force_close()
        self.evicted += len(idle)
        return len(idle)

    def touched(self, connection: Connection) -> None:
        if connection in self.open:
            del self.open[connection]
            self.open[connection] = None

    def forget(self, connection: Connection) -> None:
        self.open.pop(connection, None)


class LimitedRunner(AppRunner):
    """An AppRunner serving through :class:`LimitedServer`."""

    def __init__(self, app: web.Application, *, limits: WebLimits, **kwargs: Any) -> None:
        super().__init__(app, keepalive_timeout=limits.keepalive_timeout, **kwargs)
        self.limits = limits

    def make_server(self, plain: web.Server) -> web.Server:
        return LimitedServer(
            plain.request_handler,
            limits=self.limits,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **server_kwargs(plain),
        )


class AcceptErrors:
    """A loop exception handler that turns asyncio's report of each accept failed for
    want of file descriptors into one log line per interval, and sheds idle connections
    so that accepting resumes; every other report goes to the handler it replaced."""

    def __init__(self, server: LimitedServer, interval: float = FD_LOG_INTERVAL) -> None:
        self.server = server
        self.interval = interval
        self.loop: asyncio.AbstractEventLoop | None = None
        self.previous: Any = None
        self.failed = 0
        self.shed = 0
        self.next_line = 0.0
        self.flush: asyncio.TimerHandle | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.previous = loop, loop.get_exception_handler()
        loop.set_exception_handler(self)

    def remove(self) -> None:
        if self.loop is not None and self.loop.get_exception_handler() is self:
            self.loop.set_exception_handler(self.previous)
        if self.flush is not None:
            self.flush.cancel()
        self.loop = None

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if not (isinstance(exc, OSError) and exc.errno in OUT_OF_RESOURCE):
            if self.previous is not None:
                self.previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self.failed += 1
        self.shed += self.server.shed(1)
        now = time.monotonic()
        if now >= self.next_line:
            self._log()
        elif self.flush is None:
            self.flush = loop.call_later(self.next_line - now, self._log)

    def _log(self) -> None:
        self.flush = None
        if not self.failed:
            return
        logger.error(
            "out of file descriptors: %d connection(s) not accepted, %d idle one(s) closed, "
            "%d open (web_max_connections %d); raise the file limit (ulimit -n) or lower "
            "web_max_connections",
            self.failed,
            self.shed,
            len(self.server.open),
            self.server.limits.max_connections,
        )
        self.failed = self.shed = 0
        self.next_line = time.monotonic() + self.interval
