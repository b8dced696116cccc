"""One worker per data dir.

A worker's data dir holds its views' RocksDB files (and, on the embedded broker, the
broker's log), which one process can open at a time. A second worker started on the same
folder (on Kafka, where nothing else stops it) would retry its locked stores forever;
``belvedere reset`` would remove files a running worker uses. The worker holds a lock on
``<data dir>/worker.lock`` for its life, and the others are told which process holds it.
"""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

__all__ = ["DataDirInUse", "hold", "holder", "lock_holder"]

LOCK_FILE = "worker.lock"

#: Linux's ``struct flock`` (type, whence, start, len, pid) as ``fcntl(F_GETLK)`` fills it.
_FLOCK = struct.Struct("hhqqi4x")


class DataDirInUse(Exception):
    """Another process holds the data dir."""

    def __init__(self, folder: Path, pid: int | None) -> None:
        holder = "another process" if pid is None else f"process {pid}"
        super().__init__(f"the data dir {folder} is in use by {holder}")
        self.pid = pid


def lock_holder(lock_file: Path) -> int | None:
    """The process holding a POSIX lock on ``lock_file`` (as RocksDB's ``LOCK`` and
    ``worker.lock`` are held), so that the user is told which process to stop; None when
    none does or the system does not say."""
    try:
        fd = os.open(lock_file, os.O_RDWR)
    except OSError:
        return None
    try:
        query = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        kind, _, _, _, pid = _FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_GETLK, query))
    except (OSError, struct.error):
        return None
    finally:
        os.close(fd)
    return pid if kind != fcntl.F_UNLCK and pid > 0 else None


def hold(folder: Path) -> int:
    """Lock ``folder`` for this process until it exits (a POSIX lock: a forked child does
    not inherit it); returns the lock file's descriptor, left open: closing it unlocks."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise DataDirInUse(folder.resolve(), lock_holder(folder / LOCK_FILE)) from None
    return fd


def holder(folder: Path) -> int | None:
    """The process holding ``folder`` as a worker's data dir, if one does."""
    return lock_holder(folder / LOCK_FILE)
