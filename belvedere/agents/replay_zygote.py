"""What runs in the other processes of a rebuild's replay: the zygote ``belvedere worker``
forks before it starts a thread, and the helpers the zygote forks, each folding its share
of history with the engine's own code (:mod:`belvedere.agents.replay_processes` is the
worker's end, and says why helpers are forked from a zygote)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import orjson
from faust.types import TP

from belvedere.agents.projection import PartitionState
from belvedere.agents.replay_processes import (
    MAX_REQUEST,
    ReplayHelpers,
    ReplayShare,
    until_closed,
    usable_cores,
)
from belvedere.agents.surface import AgentsApp
from belvedere.compat.faust import new_kafka_producer
from belvedere.streams.context import replaying
from belvedere.streams.readers import reader_for
from belvedere.tables.store import PartitionStore, StoreBudget
from belvedere.tables.view import NotLocal, PartitionStatus

__all__ = ["fork_helpers"]

logger = logging.getLogger(__name__)

#: Seconds between two progress reports of a helper.
REPORT_EVERY = 1.0
#: Helpers yield the cores to the worker: live events first, history with what is left.
NICENESS = 5


def fork_helpers(app: AgentsApp, processes: int | None = None) -> ReplayHelpers | None:
    """Fork the zygote, now, while this process has a single thread; None when helpers
    cannot be used here (one core, another thread running, the embedded broker)."""
    if processes is None:
        processes = usable_cores()
    if (
        processes < 1
        or usable_cores() < 2
        or threading.active_count() > 1
        or app.conf.broker[0].scheme == "embedded"
        or not hasattr(socket, "send_fds")
    ):
        return None
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the zygote (covered by the rebuild tests)
        ours.close()
        _zygote(app, theirs)
    theirs.close()
    return ReplayHelpers(ours, pid, processes)


def _zygote(app: AgentsApp, control: socket.socket) -> None:  # pragma: no cover - a child process
    """Fork a helper per request, until the worker closes the socket or dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C on a terminal: the worker stops us
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # helpers are reaped by the kernel
    code = 0
    try:
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(control, MAX_REQUEST, 1)
            except OSError:
                break
            if not message:
                break
            try:
                pid = os.fork()
            except OSError:  # out of processes or memory: the worker replays it itself
                pid = -1
            if pid == 0:
                control.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _helper(app, orjson.loads(message), socket.socket(fileno=fds[0]))
            for fd in fds:
                os.close(fd)
    except BaseException:
        code = 1
    os._exit(code)  # not the worker's atexit handlers


def _helper(
    app: AgentsApp, request: dict[str, Any], sock: socket.socket
) -> None:  # pragma: no cover
    os.nice(NICENESS)
    logging.basicConfig(
        level=logging.INFO,
        format=f"[%(asctime)s] [{os.getpid()}] [%(levelname)s] replay helper: %(message)s",
    )
    code = 0
    try:
        asyncio.run(_replay(app, request, sock))
    except BaseException as exc:  # told to the worker, which replays the rest itself
        code = 1
        logger.exception("replaying %s failed", request.get("view"))
        with contextlib.suppress(OSError):
            sock.sendall(_line({"error": repr(exc)}))
    os._exit(code)


async def _replay(app: AgentsApp, request: dict[str, Any], sock: socket.socket) -> None:
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(_line({"pid": os.getpid()}))
    engine = app.engine
    projection = engine.projections[request["view"]]
    projection.view.partitions = request["partitions"]
    generation = request["generation"]
    shares = [ReplayShare(**share) for share in request["shares"]]
    topic = projection.fold_topic.get_topic_name()
    budget = StoreBudget()
    parts: dict[TP, PartitionState] = {}
    log = reader_for(app)
    producer = new_kafka_producer(app.producer)
    # Events failing only under the new code are dead-lettered from here, like the worker
    # would (it declared the topic); the others are counted.
    app.dead_letters.producer = producer
    main = asyncio.current_task()
    assert main is not None
    watch = asyncio.ensure_future(_cancel_on_eof(reader, main))
    try:
        await asyncio.gather(producer.start(), log.connect())
        engine.changelog_producer = producer
        # A handler reading another view finds nothing served here: the worker replays it.
        engine.fatal_handler_errors = (NotLocal,)
        ranges = {}
        for share in shares:
            tp = TP(topic, share.partition)
            store = PartitionStore(Path(share.path), budget)
            status = PartitionStatus(generation=generation)
            part = PartitionState(projection, tp, store, request["partitions"], generation, status)
            part.mode = "replaying"
            part.next_offset = max(part.next_offset, share.start)
            parts[tp] = part
            ranges[tp] = (part.next_offset, share.end)
        logger.info(
            "view %s g%d: replaying %s",
            projection.view.name, generation,
            ", ".join(f"[{tp.partition}] {low}-{high}" for tp, (low, high) in ranges.items()),
        )  # fmt: skip
        began = reported = asyncio.get_running_loop().time()
        with replaying(projection.view.name, generation, request["active"]):
            async for tp, batch in log.read(ranges):
                await engine.fold(parts[tp], batch)
                now = asyncio.get_running_loop().time()
                if now - reported >= REPORT_EVERY:
                    reported = now
                    writer.write(_line({"progress": _reached(parts)}))
            for part in parts.values():
                if part.dirty:
                    await engine.checkpoint(part)
        for part in parts.values():
            part.store.close()
        key = (projection.view.name, "rebuild")
        folded = {
            "seconds": engine.fold_seconds.get(key, 0.0),
            "events": engine.fold_events.get(key, 0),
        }
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        took = asyncio.get_running_loop().time() - began
        logger.info(
            "view %s g%d: %d events replayed in %.3f s, %.3f s of it folding",
            projection.view.name, generation, folded["events"], took, folded["seconds"],
        )  # fmt: skip
        suppressed = [[*where, n] for where, n in app.dead_letters.suppressed.items()]
        sent = [[*where, n] for where, n in app.dead_letters.counts.items()]
        writer.write(
            _line(
                {
                    "done": _reached(parts),
                    "folded": folded,
                    "peak_rss_mb": peak,
                    "suppressed": suppressed,
                    "sent": sent,
                }
            )
        )
        await writer.drain()
    finally:
        watch.cancel()
        await app.dead_letters.close()
        await log.close()
        await producer.stop()


def _reached(parts: dict[TP, PartitionState]) -> dict[str, int]:
    return {str(tp.partition): part.next_offset for tp, part in parts.items()}


def _line(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message) + b"\n"


async def _cancel_on_eof(reader: asyncio.StreamReader, task: asyncio.Task[Any]) -> None:
    await until_closed(reader)
    task.cancel()
