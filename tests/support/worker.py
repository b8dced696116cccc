"""Run ``belvedere worker`` as a real subprocess and talk to it over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], T], *, timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``condition`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last saw {last!r}")


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "belvedere.cli", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Worker:
    """One ``belvedere worker`` process; restartable, with its output kept in a log file.

    ``args`` are more command-line flags (``--broker-ssl-cafile FILE``...)."""

    def __init__(
        self,
        app: str,
        *,
        broker_url: str,
        data_dir: Path,
        env: dict[str, str],
        args: Sequence[str] = (),
        https_cafile: Path | None = None,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.broker_url = broker_url
        self.data_dir = data_dir
        self.env = env
        self.args = list(args)
        #: Run in the child before the worker starts (e.g. to lower its resource limits).
        self.preexec = preexec
        #: Set for a worker serving HTTPS: the CA its certificate is checked against.
        self.tls = None if https_cafile is None else ssl.create_default_context(cafile=https_cafile)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.runs = 0

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def logfile(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}-worker-{self.runs}.log"

    def start(self) -> Worker:
        assert self.proc is None, "already running"
        self.runs += 1
        self.data_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.logfile, "w")  # noqa: SIM115 - the child keeps writing to it
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "belvedere.cli",
                "worker",
                self.app,
                "--broker",
                self.broker_url,
                "--web-port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                *self.args,
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=self.preexec,
        )
        out.close()
        return self

    def get(self, path: str) -> Any | None:
        """The JSON at ``path``, or None while the worker is not serving yet."""
        self._check_alive()
        try:
            with urllib.request.urlopen(self.url + path, timeout=5, context=self.tls) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def wait_until(
        self, path: str, predicate: Callable[[Any], bool], *, timeout: float = 90, what: str = ""
    ) -> Any:
        def check() -> Any:
            body = self.get(path)
            return body if body is not None and predicate(body) else None

        try:
            return wait_for(check, timeout=timeout, what=what or f"{path} to match")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- worker log tail ---\n{self.log_tail()}") from None

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            code = self.proc.returncode
            self.proc = None
            raise AssertionError(
                f"worker exited with {code}\n--- worker log tail ---\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.logfile.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 60, sig: int = signal.SIGTERM) -> int:
        """Graceful stop (SIGTERM, or SIGINT as Ctrl-C): the worker commits what it
        processed, then exits."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"worker did not stop in {timeout}s\n{self.log_tail()}") from None
        finally:
            self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
