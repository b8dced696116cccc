"""Helper processes that replay a rebuild's history on the machine's other cores.

In the worker's own process a replay shares one core, the GIL's, with live folding and
serving: it could never fold history faster than the worker folds live events
(docs/benchmarks.md). A helper folds a share of the rebuilt partitions into the new
generation's own stores and changelog with the engine's own code, and the worker takes
the stores over when it ends. A store holds its source offsets, so whatever a helper
checkpointed is kept and the worker replays the rest itself: after the helper finished,
failed or was killed alike.

Helpers are forked from a *zygote*: a copy of the worker process made when it had the app
imported and configured but had started no thread and opened no database (a fork copies
only the forking thread, and any lock another thread held stays locked in the copy). So a
helper starts in milliseconds, without importing the app again. Each helper talks to the
worker over a socket of its own: its pid, its progress, and its result; it stops when the
worker closes the socket or goes away. Kafka only: the embedded broker's log belongs to
the worker's process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import resource
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from faust.types import TP

from belvedere.agents.projection import PartitionState, Projection
from belvedere.compat.faust import new_kafka_producer
from belvedere.streams.context import replaying
from belvedere.streams.readers import reader_for
from belvedere.tables.store import PartitionStore, StoreBudget
from belvedere.tables.view import NotLocal, PartitionStatus

__all__ = ["HelperFailed", "ReplayHelpers", "ReplayShare", "Replayed", "can_replay_elsewhere"]

logger = logging.getLogger(__name__)

#: Seconds between two progress reports of a helper.
REPORT_EVERY = 1.0
#: Seconds a killed helper has to let go of its stores.
EXIT_WAIT = 10.0
#: Helpers yield the cores to the worker: live events first, history with what is left.
NICENESS = 5
#: The largest request a helper is sent (a few hundred bytes per partition).
MAX_REQUEST = 1 << 20


class HelperFailed(Exception):
    """A helper ended without replaying its share: the worker replays what is left."""


@dataclass(frozen=True)
class ReplayShare:
    """One partition of a helper's share: its range to fold, and the store it goes to."""

    partition: int
    start: int
    end: int
    path: str


@dataclass(frozen=True)
class Replayed:
    """What a helper did: where each partition got, its time in the fold, its peak memory
    (resident), and what it counted."""

    reached: dict[int, int]
    fold_seconds: float
    fold_events: int
    peak_rss_mb: float
    #: Dead letters it did not send again, by (topic, kind): ``DeadLetters.suppressed``.
    suppressed: dict[tuple[str, str], int]
    #: Dead letters it sent (events that failed under the new code only), by (topic, kind).
    sent: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)


def can_replay_elsewhere(projection: Projection) -> bool:
    """Whether a helper may replay ``projection``: its checkpoints touch nothing but the
    view's store and changelog (no hook keeps state in the worker's memory)."""
    cls = type(projection)
    return all(
        getattr(cls, hook) is getattr(Projection, hook)
        for hook in ("before_checkpoint", "after_checkpoint", "after_restore")
    )


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class ReplayHelpers:
    """The worker's end: the zygote, and the helpers it forks for a rebuild."""

    def __init__(self, control: socket.socket, zygote: int, processes: int) -> None:
        self._control = control
        self.zygote = zygote
        #: Helpers a rebuild may use at once, per view.
        self.processes = processes
        self._closed = False

    @classmethod
    def fork(cls, app: Any, processes: int | None = None) -> ReplayHelpers | None:
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
        return cls(ours, pid, processes)

    async def replay(
        self,
        view: str,
        generation: int,
        active: int,
        partitions: int,
        shares: Sequence[ReplayShare],
        progress: Callable[[dict[int, int]], Awaitable[None]],
    ) -> Replayed:
        """Have a helper fold ``shares`` into ``generation`` (``active`` serving meanwhile).
        ``progress`` is called with each report
        (partition -> next offset). Cancelled or failing, it kills the helper and waits
        until the helper let go of its stores."""
        if self._closed:
            raise HelperFailed("the worker is stopping")
        ours, theirs = socket.socketpair()
        try:
            request = {
                "view": view,
                "generation": generation,
                "active": active,
                "partitions": partitions,
                "shares": [dataclasses.asdict(share) for share in shares],
            }
            socket.send_fds(self._control, [orjson.dumps(request)], [theirs.fileno()])
        except OSError as exc:
            ours.close()
            raise HelperFailed(f"the helpers' zygote is gone: {exc!r}") from None
        finally:
            theirs.close()
        reader, writer = await asyncio.open_connection(sock=ours, limit=MAX_REQUEST)
        helper: _Process | None = None
        try:
            while line := await reader.readline():
                message = orjson.loads(line)
                if "pid" in message:
                    helper = _Process(message["pid"])
                elif "progress" in message:
                    await progress({int(p): o for p, o in message["progress"].items()})
                elif "done" in message:
                    folded = message["folded"]
                    return Replayed(
                        {int(p): o for p, o in message["done"].items()},
                        folded["seconds"],
                        folded["events"],
                        message["peak_rss_mb"],
                        {(topic, kind): n for topic, kind, n in message["suppressed"]},
                        {(topic, kind): n for topic, kind, n in message["sent"]},
                    )
                elif "error" in message:
                    raise HelperFailed(f"helper {helper}: {message['error']}")
            raise HelperFailed(f"helper {helper} ended without a result")
        except BaseException:
            if helper is not None:  # its stores are free once it is gone
                await helper.kill()
            raise
        finally:
            writer.close()
            if helper is not None:
                helper.release()

    def close(self) -> None:
        """Stop the zygote (helpers still running stop when their sockets close)."""
        if not self._closed:
            self._closed = True
            self._control.close()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.zygote, 0)


class _Process:
    """A helper, signalled through a pidfd where there is one: its pid cannot be reused
    by another process while the worker holds it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fd: int | None = None
        with contextlib.suppress(AttributeError, OSError):  # before Linux 5.3
            self._fd = os.pidfd_open(pid)

    def __str__(self) -> str:
        return str(self.pid)

    async def kill(self) -> None:
        """SIGKILL, then wait (up to EXIT_WAIT seconds) until the process is gone."""
        if self._fd is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            await _poll_gone(self.pid)
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._fd, signal.SIGKILL)
        loop = asyncio.get_running_loop()
        exited = loop.create_future()
        loop.add_reader(self._fd, lambda: exited.done() or exited.set_result(None))
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(exited, EXIT_WAIT)
        finally:
            loop.remove_reader(self._fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


async def _poll_gone(pid: int) -> None:
    deadline = asyncio.get_running_loop().time() + EXIT_WAIT
    while asyncio.get_running_loop().time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.01)


async def _until_closed(reader: asyncio.StreamReader) -> None:
    while await reader.read(1 << 16):
        pass


# -- the zygote and its helpers (other processes) ------------------------------------------


def _zygote(app: Any, control: socket.socket) -> None:  # pragma: no cover - a child process
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


def _helper(app: Any, request: dict[str, Any], sock: socket.socket) -> None:  # pragma: no cover
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


async def _replay(app: Any, request: dict[str, Any], sock: socket.socket) -> None:
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
    await _until_closed(reader)
    task.cancel()
