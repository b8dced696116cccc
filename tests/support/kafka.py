"""A throwaway single-node Kafka broker from ci/kafka, for the test session and benchmarks."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class KafkaStartFailed(RuntimeError):
    pass


@contextlib.contextmanager
def private_kafka() -> Iterator[str]:
    """Start a broker (jars from Maven Central, fresh data folder), yield its bootstrap
    address, and stop it (removing its folder) afterwards."""
    work = tempfile.mkdtemp(prefix="belvedere-kafka-")
    env = {**os.environ, "KAFKA_WORK": work, "PYTHON": sys.executable}
    try:
        try:
            subprocess.run(
                ["bash", str(REPO / "ci/kafka/start.sh")],
                env=env,
                check=True,
                capture_output=True,
                text=True,
                timeout=600,
            )
            subprocess.run(
                [sys.executable, str(REPO / "ci/kafka/wait.py"), work, "120"],
                check=True,
                capture_output=True,
                text=True,
                timeout=180,
            )
        except subprocess.CalledProcessError as exc:
            raise KafkaStartFailed((exc.stderr or exc.stdout or "")[-500:]) from None
        yield Path(work, "bootstrap").read_text().strip()
    finally:
        subprocess.run(["bash", str(REPO / "ci/kafka/stop.sh")], env=env, timeout=90)
