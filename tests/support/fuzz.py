"""Schemathesis against a worker's OpenAPI spec: no answer may be a 500 or mistyped."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def fuzz_spec(url: str, workdir: Path, *, examples: int, seed: int, only: list[str]) -> int:
    """Fuzz ``url``'s spec (``only``: more schemathesis filters); returns how many cases
    were generated, after asserting every one passed."""
    fuzz = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            url + "/openapi.json",
            "--checks",
            "not_a_server_error,content_type_conformance",
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
