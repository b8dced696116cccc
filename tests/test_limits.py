"""What HTTP clients may hold of a worker: connections, time, file descriptors.

Most cases serve a small aiohttp application through Belvedere's server
(:mod:`belvedere.views_api.server`) in the test's own loop, with short limits, and talk to
it over real sockets; one runs a worker under a 1024 file limit against 1,500 sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web

from belvedere.views_api.connections import (
    AcceptErrors,
    LimitedRunner,
    LimitedServer,
    WebLimits,
    default_max_connections,
)
from belvedere.views_api.errors import errors_as_json
from tests.support.http import call
from tests.support.metrics import scrape
from tests.support.worker import Worker, wait_for

EMBEDDED_ONLY = pytest.mark.parametrize("broker", ["embedded"], indirect=True)
#: Generous: each limit below is a fraction of a second; this is how long a test waits
#: for what it expects before failing.
DEADLINE = 10.0


class Served:
    def __init__(self, runner: LimitedRunner, port: int, release: asyncio.Event) -> None:
        self.runner, self.port, self.release = runner, port, release

    @property
    def server(self) -> LimitedServer:
        server = self.runner.server
        assert isinstance(server, LimitedServer)
        return server

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


@contextlib.asynccontextmanager
async def serving(**limits: Any) -> AsyncIterator[Served]:
    release = asyncio.Event()

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": "you"})

    async def upload(request: web.Request) -> web.Response:
        return web.json_response({"bytes": len(await request.read())})

    async def hold(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"held": True})

    app = web.Application(middlewares=[errors_as_json])
    app.router.add_get("/", hello)
    app.router.add_post("/upload", upload)
    app.router.add_get("/hold", hold)
    runner = LimitedRunner(app, limits=WebLimits(**{"max_connections": 100, **limits}))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield Served(runner, port, release)
    finally:
        release.set()
        await runner.cleanup()


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], Any]:
    """One HTTP/1.1 answer with a Content-Length: status, headers, JSON body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
    body = await asyncio.wait_for(reader.readexactly(int(headers["Content-Length"])), DEADLINE)
    return int(lines[0].split()[1]), headers, orjson.loads(body)


async def closed(reader: asyncio.StreamReader) -> bool:
    """True once the server closed the connection (within the deadline)."""
    try:
        return await asyncio.wait_for(reader.read(), DEADLINE) == b""
    except ConnectionResetError:
        return True


GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


async def test_an_idle_keep_alive_connection_is_closed_after_its_timeout() -> None:
    async with serving(keepalive_timeout=0.3) as served:
        reader, writer = await served.connect()
        writer.write(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
        # a request in flight longer than the timeout is not cut off
        wait_for_true = time.monotonic() + 0.6
        while time.monotonic() < wait_for_true:
            assert not reader.at_eof()
            await asyncio.sleep(0.05)
        served.release.set()
        assert (await answer(reader))[2] == {"held": True}
        assert await closed(reader)  # then, idle, it is closed
        assert served.server.open == {}


async def test_headers_sent_too_slowly_are_cut_off() -> None:
    async with serving(header_timeout=0.3, keepalive_timeout=60) as served:
        reader, writer = await served.connect()
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n")  # and never the blank line
        assert await closed(reader)
        silent, _ = await served.connect()  # nor may a connection say nothing at all
        assert await closed(silent)


async def test_a_body_sent_too_slowly_is_answered_408_and_the_connection_closed() -> None:
    async with serving(body_timeout=0.3) as served:
        reader, writer = await served.connect()
        writer.write(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
        status, _, body = await answer(reader)
        assert (status, body["error"]) == (408, "request-timeout"), body
        assert await closed(reader)
        reader, writer = await served.connect()  # a whole body in time is read
        writer.write(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
        assert (await answer(reader))[2] == {"bytes": 3}


async def test_a_full_server_closes_its_longest_idle_connection_to_admit_a_new_one() -> None:
    async with serving(max_connections=3) as served:
        held = [await served.connect() for _ in range(3)]
        for reader, writer in held:  # each used once, oldest first
            writer.write(GET)
            assert (await answer(reader))[0] == 200
        held[0][1].write(GET)  # the first is used again: the second is now idle the longest
        assert (await answer(held[0][0]))[0] == 200
        reader, writer = await served.connect()
        writer.write(GET)
        assert (await answer(reader))[0] == 200
        assert await closed(held[1][0])
        assert served.server.evicted == 1 and len(served.server.open) == 3


async def test_a_full_server_of_busy_connections_refuses_a_new_one_with_503() -> None:
    async with serving(max_connections=2) as served:
        busy = [await served.connect() for _ in range(2)]
        for _, writer in busy:
            writer.write(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until = time.monotonic() + DEADLINE
        while sum(c.busy for c in served.server.open) < 2 and time.monotonic() < wait_until:
            await asyncio.sleep(0.01)
        reader, writer = await served.connect()
        status, headers, body = await answer(reader)
        assert (status, headers["Retry-After"], body["error"]) == (503, "1", "busy")
        assert await closed(reader)
        served.release.set()
        for reader, _ in busy:
            assert (await answer(reader))[2] == {"held": True}
        assert served.server.refused == 1


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET /a\x00b HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
    ],
    ids=["null-byte", "not-utf-8", "header-too-long", "garbage"],
)
async def test_the_http_parsers_errors_answer_json(request_line: bytes) -> None:
    async with serving() as served:
        reader, writer = await served.connect()
        writer.write(request_line)
        status, headers, body = await answer(reader)
        assert 400 <= status < 500 and headers["Content-Type"].startswith("application/json")
        assert set(body) == {"error", "detail"} and body["detail"], body


async def test_running_out_of_file_descriptors_logs_one_line_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    others: list[dict] = []
    loop.set_exception_handler(lambda _, context: others.append(context))
    async with serving() as served:
        errors = AcceptErrors(served.server, interval=0.3)
        errors.install(loop)
        with caplog.at_level(logging.ERROR, "belvedere.views_api.server"):
            for _ in range(5000):  # as asyncio reports each accept that failed
                loop.call_exception_handler(
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": OSError(errno.EMFILE, "Too many open files"),
                    }
                )
            loop.call_exception_handler({"message": "something else"})
            lines = lambda: [r.getMessage() for r in caplog.records]  # noqa: E731
            assert len(lines()) == 1 and "1 connection(s) not accepted" in lines()[0]
            wait_until = time.monotonic() + DEADLINE
            while len(lines()) < 2 and time.monotonic() < wait_until:
                await asyncio.sleep(0.05)
            assert len(lines()) == 2 and "4999 connection(s) not accepted" in lines()[1]
        assert others == [{"message": "something else"}]  # the rest go where they went
        errors.remove()
        assert loop.get_exception_handler() is not errors
    loop.set_exception_handler(None)


def test_the_default_connection_cap_leaves_half_the_file_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert default_max_connections() == min(4096, soft // 2)
    assert WebLimits(max_connections=512).max_change_feeds == 256


def _metric(worker: Worker, name: str) -> int:
    """``belvedere_http_<name>`` from the worker's /metrics."""
    return int(scrape(worker.url, timeout=5)[f"belvedere_http_{name}"])


def _file_limit(count: int) -> Callable[[], None]:
    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))

    return lower


@EMBEDDED_ONLY
@pytest.mark.parametrize(
    ("files", "cap"), [(1024, None), (512, 2000)], ids=["default-cap", "cap-above-the-file-limit"]
)
def test_1500_idle_sockets_under_a_1024_file_limit_lock_no_client_out(
    counter: Worker, files: int, cap: int | None
) -> None:
    """With the default cap the worker never runs out of descriptors; with a cap set above
    its file limit it does, sheds idle connections and logs a line per 10 s, not per accept."""
    counter.preexec = _file_limit(files)
    if cap is not None:
        counter.env["BELVEDERE_WEB_MAX_CONNECTIONS"] = str(cap)
    counter.start()
    counter.wait_until("/ready", lambda r: r.get("ready") is True, what="ready")
    logged = counter.logfile.stat().st_size
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    sockets = []
    try:
        for _ in range(1500):
            sock = socket.socket()
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(("127.0.0.1", counter.port))
            sockets.append(sock)
        # the worker accepts them until its cap, then closes the idlest for each new one
        wait_for(
            lambda: _metric(counter, "connections_closed_idle_total") > 0,
            timeout=60,
            what="idle connections closed",
        )
        started = time.monotonic()  # and meanwhile answers (generous: within 10 s)
        wait_for(
            lambda: call(counter.url + "/health", timeout=5).status == 200,
            timeout=DEADLINE,
            what="/health",
        )
        assert time.monotonic() - started < DEADLINE
        if cap is None:
            assert _metric(counter, "connections") <= 512  # the default cap under 1024 files
    finally:
        for sock in sockets:
            sock.close()
    grown = counter.logfile.stat().st_size - logged
    assert grown < 20_000, counter.log_tail()
    lines = counter.logfile.read_text().count("out of file descriptors")
    assert (lines > 0) == (cap is not None), counter.log_tail()
