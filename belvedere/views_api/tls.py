"""HTTPS for the query layer: the worker's certificate, and whom its forwards trust.

With ``web_ssl_certfile`` set, a worker serves HTTPS only and advertises an ``https://``
URL, so the workers of a group forward to each other over TLS too, checking each other's
certificate against ``web_ssl_cafile`` (else the system's CAs). Bad settings fail when the
app is made, in one line, rather than at the first request.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from functools import cached_property

from belvedere.streams.security import SecuritySettingsError, require_files

__all__ = ["WebTLS"]


@dataclass(frozen=True)
class WebTLS:
    certfile: str | None = None
    keyfile: str | None = None
    cafile: str | None = None

    def __post_init__(self) -> None:
        require_files(
            "HTTP", "--web-ssl", certfile=self.certfile, keyfile=self.keyfile, cafile=self.cafile
        )
        if self.keyfile and not self.certfile:
            raise SecuritySettingsError(
                "an HTTP TLS key without its certificate: add --web-ssl-certfile"
            )
        if self.certfile:
            self.server_context  # noqa: B018 - load it now: a bad file fails here, in one line

    @property
    def enabled(self) -> bool:
        return self.certfile is not None

    @property
    def scheme(self) -> str:
        return "https" if self.enabled else "http"

    @cached_property
    def server_context(self) -> ssl.SSLContext | None:
        if not self.certfile:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.certfile, self.keyfile)
        except (ssl.SSLError, OSError) as exc:
            raise SecuritySettingsError(
                f"cannot use {self.certfile} as the HTTP certificate: {exc}"
            ) from None
        return context

    @cached_property
    def client_context(self) -> ssl.SSLContext:
        """What a forward to another worker (or the CLI) trusts."""
        try:
            return ssl.create_default_context(cafile=self.cafile)
        except (ssl.SSLError, OSError) as exc:
            raise SecuritySettingsError(f"cannot use {self.cafile} as the HTTP CA: {exc}") from None
