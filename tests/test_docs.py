"""The docs that teach run as written: every file, script and command of the DOCS, in order.

Conventions in such a doc:

- a ``python file=NAME`` block is written to NAME in the doc's own working directory (a
  later block with the same name replaces it, as a reader editing the file would); a
  ``python run`` block is run there as a script, and must succeed (its asserts hold);
- an ``sh`` block is one command, run with bash there. ``belvedere worker ...`` is started
  in the background (as in a terminal of its own) and waited on until ready; the reader's
  Ctrl-C is what ``belvedere reset`` and ``belvedere dlq`` need first (the embedded broker's
  log is one process's), so the worker is stopped then, and before another worker starts;
- a ``text`` block right after an ``sh`` block is what that command prints, asked again
  until it does (a view shows a write within its checkpoint interval), for 30 s at most.

Port 6066 in a command is the worker's port, which the test picks.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.worker import REPO, free_port

DOCS = ["tutorial.md", "concepts.md", "operations.md"]
BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.S | re.M)


@dataclass
class Block:
    kind: str
    info: str
    body: str


def blocks(doc: str) -> list[Block]:
    text = (REPO / "docs" / doc).read_text()
    return [Block(m[1], m[2].strip(), m[3]) for m in BLOCK.finditer(text)]


class Reader:
    """Does what a reader of the doc does, in a directory of their own."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.worker: subprocess.Popen | None = None
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "BELVEDERE_WEB_PORT": str(self.port),
        }
        for name in ("BELVEDERE_BROKER", "BELVEDERE_DATA_DIR"):
            self.env.pop(name, None)

    def command(self, text: str) -> str:
        return text.replace("localhost:6066", f"localhost:{self.port}").strip()

    def run(self, command: str) -> str:
        if command.startswith("belvedere worker"):
            self.stop_worker()
            self.start_worker(command)
            return ""
        if command.startswith(("belvedere reset", "belvedere dlq")):
            self.stop_worker()  # the reader's Ctrl-C: these read the embedded broker's log
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def python(self, code: str) -> None:
        script = self.workdir / "sample.py"
        script.write_text(code)
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{code}\n{done.stdout}\n{done.stderr}"

    def start_worker(self, command: str) -> None:
        log = open(self.workdir / "worker.log", "a")  # noqa: SIM115 - the worker writes to it
        self.worker = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.worker.poll() is None, (self.workdir / "worker.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://localhost:{self.port}/ready", timeout=5):
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"the worker was not ready in 90s: {command}")

    def stop_worker(self) -> None:
        if self.worker is None:
            return
        self.worker.send_signal(signal.SIGINT)
        try:
            code = self.worker.wait(60)
        except subprocess.TimeoutExpired:
            self.worker.kill()
            self.worker.wait()
            raise AssertionError("the worker did not stop on Ctrl-C within 60s") from None
        finally:
            self.worker = None
        assert code in (0, -signal.SIGINT, 130), (self.workdir / "worker.log").read_text()[-3000:]

    def expect(self, command: str, wanted: str) -> None:
        deadline = time.monotonic() + 30
        while True:
            printed = self.run(command)
            if printed.strip() == wanted.strip():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{command}\nprinted {printed!r}\nthe doc says {wanted!r}")
            time.sleep(0.2)


@pytest.mark.parametrize("doc", DOCS)
def test_the_docs_samples_run_as_written(doc: str, tmp_path: Path) -> None:
    assert shutil.which("curl"), "the docs use curl"
    reader = Reader(tmp_path)
    found = blocks(doc)
    ran = 0
    try:
        for i, block in enumerate(found):
            if block.kind == "python" and block.info == "run":
                reader.python(block.body)
                ran += 1
            elif block.kind == "python":
                name = block.info.removeprefix("file=")
                assert block.info.startswith("file=") and name, f"{doc}: python: file= or run"
                (tmp_path / name).write_text(block.body)
            elif block.kind == "sh":
                command = reader.command(block.body)
                following = found[i + 1] if i + 1 < len(found) else None
                if following is not None and following.kind == "text":
                    reader.expect(command, following.body)
                else:
                    reader.run(command)
                ran += 1
    finally:
        reader.stop_worker()
    assert ran >= 3, f"{doc}: only {ran} samples"
