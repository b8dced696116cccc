"""Schemathesis against a worker's OpenAPI spec, every check: no answer may be a 500,
undocumented or mistyped, no request the spec allows refused (but where fuzz.toml says
the spec cannot tell), none it forbids accepted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

CONFIG = Path(__file__).with_name("fuzz.toml")


def fuzz_spec(
    url: str, workdir: Path, *, examples: int, seed: int, only: list[str], token: str | None = None
) -> int:
    """Fuzz ``url``'s spec (``only``: more schemathesis filters; ``token``: the bearer
    token every request carries); returns how many cases were generated, after asserting
    every one passed."""
    auth = ["-H", f"Authorization: Bearer {token}"] if token else []
    fuzz = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "--config-file",
            str(CONFIG),
            "run",
            url + "/openapi.json",
            "--checks",
            "all",
            *auth,
            "--max-examples",
            str(examples),
            "--workers",
            "1",
            "--seed",
            str(seed),
            *only,
            "--request-timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=workdir,  # where it keeps its run data
    )
    assert fuzz.returncode == 0, fuzz.stdout[-4000:] + fuzz.stderr[-2000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", fuzz.stdout)
    assert counts and counts.group(1) == counts.group(2), fuzz.stdout[-2000:]
    return int(counts.group(1))
