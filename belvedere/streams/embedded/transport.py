"""The ``embedded://`` transport: faust's Transport over a durable log in the data directory.

``embedded://`` keeps the log in ``<datadir>/broker``; ``embedded:///some/dir`` puts it
elsewhere; ``?fsync=always`` fsyncs every write (see :mod:`.log` for the durability policy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faust.transport.base import Transport as FaustTransport
from faust.types import AppT
from yarl import URL

from belvedere.streams.embedded.consumer import Consumer
from belvedere.streams.embedded.log import Log
from belvedere.streams.embedded.producer import Producer
from belvedere.streams.errors import BrokerError

__all__ = ["Transport", "log_path"]

FSYNC_POLICIES = {"never": False, "always": True}


def log_path(url: URL, datadir: Path) -> Path:
    """Where the log of an ``embedded://`` URL lives."""
    return Path(url.path) if url.path not in ("", "/") else Path(datadir) / "broker"


class Transport(FaustTransport):
    Consumer = Consumer
    Producer = Producer
    driver_version = "belvedere-embedded-1"

    def __init__(self, url: list[URL], app: AppT, loop: Any = None) -> None:
        super().__init__(url, app, loop=loop)
        policy = self.url[0].query.get("fsync", "never")
        if policy not in FSYNC_POLICIES:
            raise BrokerError(
                f"embedded broker: fsync must be one of never, always; not {policy!r}"
            )
        self.fsync = FSYNC_POLICIES[policy]

    @property
    def log_path(self) -> Path:
        return log_path(self.url[0], self.app.conf.datadir)

    def acquire_log(self) -> Log:
        return Log.acquire(self.log_path, fsync=self.fsync)
