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

This module is the worker's end; what runs in the zygote and the helpers is
:mod:`belvedere.agents.replay_zygote`, which ``belvedere worker`` calls to fork them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import orjson

from belvedere.agents.projection import Projection

__all__ = [
    "MAX_REQUEST",
    "HelperFailed",
    "ReplayHelpers",
    "ReplayShare",
    "Replayed",
    "can_replay_elsewhere",
    "until_closed",
    "usable_cores",
]

logger = logging.getLogger(__name__)

#: Seconds a killed helper has to let go of its stores.
EXIT_WAIT = 10.0
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


async def until_closed(reader: asyncio.StreamReader) -> None:
    while await reader.read(1 << 16):
        pass
