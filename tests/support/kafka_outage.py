"""Taking a private broker of ci/kafka down and bringing the same one back.

start.sh picks new ports and formats fresh storage each time, so "again" cannot go through
it: the broker is restarted from the command line it was running with (read from /proc,
so Linux only), on the same ports, configuration and data folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.kafka import REPO, KafkaStartFailed, broker_log_tail

__all__ = ["kill", "start_again", "stop"]


def _pid(work: Path) -> int:
    return int((work / "kafka.pid").read_text())


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def stop(work: Path, timeout: float = 60) -> list[str]:
    """Stop the broker of ``work`` (SIGTERM to its PID, a clean shutdown) and keep its
    folder; returns the command line to start it with again."""
    pid = _pid(work)
    command = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"the broker (pid {pid}) did not stop within {timeout:.0f}s")
        time.sleep(0.1)
    return [part.decode() for part in command]


def kill(work: Path, timeout: float = 30) -> list[str]:
    """SIGKILL the broker of ``work`` (no clean shutdown: what a crashed machine does) and
    keep its folder; returns the command line to start it with again."""
    pid = _pid(work)
    command = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the broker (pid {pid}) was not gone {timeout:.0f}s after SIGKILL"
            )
        time.sleep(0.05)
    return [part.decode() for part in command]


def start_again(work: Path, command: list[str], timeout: float = 120) -> None:
    """Start the broker stopped by :func:`stop` (its pid file updated, so ci/kafka/stop.sh
    ends this one), and wait until it serves."""
    # Through a shell that exits at once, as start.sh does: the broker is then nobody's
    # child here, so it leaves no zombie for stop.sh's ``kill -0`` to wait on.
    launch = 'nohup "$@" >> "$0/broker.log" 2>&1 < /dev/null & echo $! > "$0/kafka.pid"'
    subprocess.run(["bash", "-c", launch, str(work), *command], check=True, timeout=30)
    waited = subprocess.run(
        [sys.executable, str(REPO / "ci/kafka/wait.py"), str(work), str(timeout)],
        capture_output=True,
        text=True,
        timeout=timeout + 30,
    )
    if waited.returncode != 0:
        said = (waited.stderr or waited.stdout)[-500:]
        raise KafkaStartFailed(f"{said}\n{broker_log_tail(work)}")
