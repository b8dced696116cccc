"""A small blocking client of a worker's HTTP API, for the command line."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from typing import Any

import orjson

from belvedere.views_api.identity import APP_HEADER, wrong_app

__all__ = ["ApiError", "WorkerClient"]


class ApiError(Exception):
    """The worker answered with an error, or did not answer; the message is one line."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class WorkerClient:
    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 10.0,
        tls: ssl.SSLContext | None = None,
        app: str | None = None,
        elsewhere: str = "",
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.tls = tls  # what an https:// worker's certificate is checked against
        #: The app the worker must run (None: any), and how to reach another worker.
        self.app = app
        self.elsewhere = elsewhere

    def _check_app(self, headers: Any) -> None:
        if self.app is None:
            return
        refusal = wrong_app(self.url, self.app, headers.get(APP_HEADER), self.elsewhere)
        if refusal is not None:
            raise ApiError(refusal)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else orjson.dumps(body)
        if method not in ("GET", "HEAD"):  # workers refuse writes of any other type
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(
                request, timeout=self.timeout, context=self.tls
            ) as response:
                self._check_app(response.headers)
                return orjson.loads(response.read())
        except urllib.error.HTTPError as exc:
            self._check_app(exc.headers)
            try:
                detail = orjson.loads(exc.read()).get("detail", exc.reason)
            except (orjson.JSONDecodeError, AttributeError):
                detail = exc.reason
            raise ApiError(f"{self.url} answered {exc.code}: {detail}", exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(
                f"no worker answers at {self.url} ({reason}); is `belvedere worker` running?"
            ) from None

    def app_id(self) -> str | None:
        """The app the worker runs, by its ``/health``; None if no worker answers."""
        try:
            with urllib.request.urlopen(
                self.url + "/health", timeout=self.timeout, context=self.tls
            ) as response:
                return response.headers.get(APP_HEADER)
        except urllib.error.HTTPError as exc:
            return exc.headers.get(APP_HEADER)
        except (urllib.error.URLError, OSError):
            return None

    def start_rebuild(
        self, view: str, from_timestamp: str | None = None, *, accept_failures: bool = False
    ) -> dict[str, Any]:
        body: dict[str, Any] = {} if from_timestamp is None else {"fromTimestamp": from_timestamp}
        if accept_failures:
            body["acceptFailures"] = True
        return self.request("POST", f"/views/{view}/rebuild", body)

    def rebuild_status(self, view: str) -> dict[str, Any]:
        return self.request("GET", f"/views/{view}/rebuild")
