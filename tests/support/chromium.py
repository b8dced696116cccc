"""Headless Chromium, driven over the DevTools protocol, for testing the status page.

Debian's ``chromium`` package is used; when it is missing and this runs as root with
apt-get, it is installed (once per machine). Each call below opens a short DevTools
connection to the one page the browser shows.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

__all__ = ["Browser", "find_chromium"]


def find_chromium() -> tuple[str | None, str]:
    """The browser's path, or None and why not."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found, ""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "chromium is not installed (apt-get install chromium), and this is not root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            return None, f"{' '.join(command)} failed: {done.stderr.strip()[-300:]}"
    found = shutil.which("chromium")
    return found, "" if found else "apt-get installed chromium, but it is not on PATH"


class Browser:
    """One headless Chromium showing one page."""

    def __init__(self, binary: str, url: str) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="belvedere-chromium-"))
        self.proc = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}",
                "--window-size=1280,1000",
                url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._ids = itertools.count(1)
        self.page = self._page_socket()

    def _page_socket(self) -> str:
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if port_file.exists() and port_file.read_text().strip():
                port = port_file.read_text().split()[0]
                targets = asyncio.run(self._get(f"http://127.0.0.1:{port}/json/list"))
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            time.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port within 30s")

    @staticmethod
    async def _get(url: str) -> Any:
        async with aiohttp.ClientSession() as session, session.get(url) as answer:
            return await answer.json(content_type=None)

    def call(self, method: str, **params: Any) -> Any:
        return asyncio.run(self._call(method, params))

    async def _call(self, method: str, params: dict[str, Any]) -> Any:
        ident = next(self._ids)
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(self.page, max_msg_size=64 << 20) as ws,
        ):
            await ws.send_str(
                orjson.dumps({"id": ident, "method": method, "params": params}).decode()
            )
            async for message in ws:
                found = orjson.loads(message.data)
                if found.get("id") == ident:
                    if "error" in found:
                        raise RuntimeError(f"{method}: {found['error']}")
                    return found["result"]
        raise RuntimeError(f"{method}: the page closed its DevTools connection")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)
