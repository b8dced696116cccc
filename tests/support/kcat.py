"""kcat (Debian's package), the librdkafka producer the foreign-partitioner tests write with."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

from tests.support.kafka import IN_CI


def find_kcat() -> str:
    """kcat's path; without it the test is skipped, or fails under ``CI=true`` (.ci/run
    installs it with apt-get)."""
    import pytest

    found = shutil.which("kcat") or shutil.which("kafkacat")
    if found is None:
        why = "kcat is not installed (apt-get install kcat)"
        if IN_CI:
            pytest.fail(f"kcat is required when CI=true: {why}", pytrace=False)
        pytest.skip(why)
    return found


def kcat_produce(
    kcat: str,
    bootstrap: str,
    topic: str,
    lines: Sequence[tuple[str, bytes]],
    settings: Sequence[str] = (),
) -> None:
    """Produce (key, value) messages, values byte for byte (newlines too), with kcat's
    default settings, or with ``-X`` ``settings``."""
    data = b"".join(key.encode() + b"\x1f" + value + b"\x1e" for key, value in lines)
    args = [kcat, "-b", bootstrap, "-P", "-t", topic, "-K", "\\x1f", "-D", "\\x1e"]
    for setting in settings:
        args += ["-X", setting]
    done = subprocess.run(args, input=data, capture_output=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"kcat failed ({done.returncode}): {done.stderr.decode()[-500:]}")
