"""A small blocking HTTP client for the tests: every answer, whatever its status."""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["Answer", "EventStream", "call"]


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]
    raw: bytes

    @property
    def body(self) -> Any:
        return orjson.loads(self.raw)


def call(
    url: str,
    method: str = "GET",
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30,
    context: ssl.SSLContext | None = None,
) -> Answer:
    """``method url`` with ``body`` as JSON (bytes as they are); 0 if nothing answered."""
    data = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
    sent = dict(headers or {})
    if method not in ("GET", "HEAD"):  # what a worker takes writes as
        sent.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(url, data, sent, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return Answer(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, dict(exc.headers), exc.read())
    except OSError as exc:
        return Answer(0, {}, repr(exc).encode())


class EventStream(threading.Thread):
    """Reads a Server-Sent Events stream in the background, keeping each event in order."""

    def __init__(self, url: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(daemon=True)
        parts = urllib.parse.urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        self.path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.headers = dict(headers or {})
        self.status: int | None = None
        self.events: list[dict[str, Any]] = []
        self.closed = False
        self.start()

    def run(self) -> None:
        try:
            self.connection.request("GET", self.path, headers=self.headers)
            response = self.connection.getresponse()
            self.status = response.status
            event: dict[str, Any] = {}
            while not self.closed:
                line = response.fp.readline()
                if not line:
                    return
                text = line.decode().rstrip("\n")
                if not text:
                    if "data" in event:
                        event["data"] = orjson.loads(event["data"])
                        self.events.append(event)
                    event = {}
                elif not text.startswith(":"):
                    name, _, value = text.partition(": ")
                    event[name] = value
        except (OSError, ValueError, http.client.HTTPException):
            return

    def close(self) -> None:
        """Hang up, as a client cut off would."""
        self.closed = True
        with contextlib.suppress(OSError):
            if self.connection.sock is not None:
                self.connection.sock.shutdown(socket.SHUT_RDWR)
        self.connection.close()
        self.join(10)
