"""TLS and SASL for Kafka: one set of settings for every client a worker or a tool opens.

faust's clients take them as its ``broker_credentials`` setting; Belvedere's own aiokafka
clients (the changelog readers, the CLI's tools) take the same settings turned into aiokafka
arguments by faust's own mapping, so no connection of a worker is left in the clear by a
forgotten argument. The password is held here and in those clients only: it is never part of
a repr, a log line or an error message.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from belvedere.compat.aiokafka import ask_for_metadata
from belvedere.streams.errors import BrokerRefused

__all__ = ["SASL_MECHANISMS", "BrokerSecurity", "SecuritySettingsError", "require_files"]

SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class _HideSaslPayloads(logging.Filter):
    """aiokafka logs every request it sends at debug level, the SASL login's included: with
    PLAIN, that shows the password as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(_is_sasl(arg) for arg in record.args):
            record.args = tuple(
                f"{type(arg).__name__}(...)" if _is_sasl(arg) else arg for arg in record.args
            )
        return True


def _is_sasl(arg: object) -> bool:
    return type(arg).__name__.startswith(("SaslAuthenticateRequest", "SaslAuthenticateResponse"))


def _hide_sasl_payloads() -> None:
    logger = logging.getLogger("aiokafka.conn")
    if not any(isinstance(f, _HideSaslPayloads) for f in logger.filters):
        logger.addFilter(_HideSaslPayloads())


class SecuritySettingsError(ValueError):
    """TLS or SASL settings that cannot work; the message says which setting to fix."""


def require_files(what: str, flag: str, **paths: str | None) -> None:
    """Each given TLS file exists, else one line naming its flag (``flag`` + ``-cafile``)."""
    names = {"cafile": "CA file", "certfile": "certificate", "keyfile": "key"}
    for name, path in paths.items():
        if path is not None and not os.path.isfile(path):
            raise SecuritySettingsError(
                f"the {what} TLS {names[name]} {path} does not exist ({flag}-{name})"
            )


@dataclass(frozen=True)
class BrokerSecurity:
    """How to reach a secured Kafka: TLS when ``cafile`` (the CA bundle that signed the
    brokers' certificates) is given, client certificates for mutual TLS, and a SASL login.

    SASL PLAIN sends the password as it is, so it is refused without TLS; SCRAM proves the
    password without sending it, and may run on a plaintext listener.
    """

    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    _context: ssl.SSLContext | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mechanism is not None:
            object.__setattr__(self, "mechanism", self.mechanism.upper())
        self._check_sasl()
        object.__setattr__(self, "_context", self._ssl_context())

    def _check_sasl(self) -> None:
        if self.mechanism is None:
            if self.username or self.password:
                raise SecuritySettingsError(
                    "a broker user name or password is set, but no SASL mechanism: "
                    "set BELVEDERE_BROKER_SASL_MECHANISM (--broker-sasl-mechanism)"
                )
            return
        if self.mechanism not in SASL_MECHANISMS:
            raise SecuritySettingsError(
                f"SASL mechanism {self.mechanism!r} is not supported: use one of "
                f"{', '.join(SASL_MECHANISMS)} (--broker-sasl-mechanism)"
            )
        if not (self.username and self.password):
            raise SecuritySettingsError(
                f"SASL {self.mechanism} needs a user name and a password: set "
                "BELVEDERE_BROKER_USERNAME and BELVEDERE_BROKER_PASSWORD"
            )
        if self.mechanism == "PLAIN" and self.cafile is None:
            raise SecuritySettingsError(
                "SASL PLAIN sends the password as it is, so Belvedere uses it over TLS only: "
                "give the brokers' CA with --broker-ssl-cafile (BELVEDERE_BROKER_SSL_CAFILE)"
            )

    def _ssl_context(self) -> ssl.SSLContext | None:
        require_files(
            "broker",
            "--broker-ssl",
            cafile=self.cafile,
            certfile=self.certfile,
            keyfile=self.keyfile,
        )
        if self.cafile is None:
            if self.certfile or self.keyfile:
                raise SecuritySettingsError(
                    "a client certificate needs TLS: give the brokers' CA with --broker-ssl-cafile"
                )
            return None
        if self.keyfile and not self.certfile:
            raise SecuritySettingsError(
                "a TLS key without its certificate: add --broker-ssl-certfile"
            )
        try:
            context = ssl.create_default_context(cafile=self.cafile)
            if self.certfile:
                context.load_cert_chain(self.certfile, self.keyfile)
        except ssl.SSLError as exc:
            raise SecuritySettingsError(
                f"cannot load the broker TLS files ({self.cafile}"
                f"{', ' + self.certfile if self.certfile else ''}): {exc.reason or exc}"
            ) from None
        return context

    @property
    def enabled(self) -> bool:
        return self.cafile is not None or self.mechanism is not None

    def describe(self) -> str:
        """What a log line or an error says of this: never the password."""
        tls = f"TLS with CA {self.cafile}" if self.cafile else ""
        if self.mechanism is None:
            return tls or "plaintext"
        return f"SASL {self.mechanism} as {self.username!r}" + (f" over {tls}" if tls else "")

    def faust_credentials(self) -> Any:
        """faust's ``broker_credentials`` setting for these settings (None: plaintext)."""
        from faust.auth import SASLCredentials, SSLCredentials

        if self.mechanism is not None:
            _hide_sasl_payloads()
            return SASLCredentials(
                username=self.username,
                password=self.password,
                ssl_context=self._context,
                mechanism=self.mechanism,
            )
        return SSLCredentials(self._context) if self._context is not None else None

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """The arguments an aiokafka client, producer or consumer takes for these settings:
        the very ones faust's driver gives its own clients."""
        from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

        return credentials_to_aiokafka_auth(self.faust_credentials())

    async def verify(self, hosts: Sequence[tuple[str, int]], timeout: float = 10.0) -> None:
        """Connect, log in and ask for the cluster's metadata, as each client will; raise
        :class:`BrokerRefused` with one line saying what was refused.

        aiokafka's own clients give up with "Unable to bootstrap" (and faust's worker crashes
        with a traceback) whatever the reason; a single connection made here keeps it.
        """
        kwargs = self.aiokafka_kwargs()
        unanswered: tuple[str, BaseException] | None = None
        for host, port in hosts:
            try:
                async with asyncio.timeout(timeout):
                    await ask_for_metadata(host, port, int(timeout * 1000), **kwargs)
                return
            except ssl.SSLError as exc:
                raise BrokerRefused(self._explain(f"{host}:{port}", exc, timeout)) from None
            except OSError as exc:  # down or mute (TimeoutError is one): another may answer
                unanswered = (f"{host}:{port}", exc)
            except Exception as exc:
                raise BrokerRefused(self._explain(f"{host}:{port}", exc, timeout)) from None
        if unanswered is not None:
            raise BrokerRefused(self._explain(*unanswered, timeout))

    def _explain(self, where: str, exc: BaseException, timeout: float) -> str:
        from aiokafka import errors

        broker = f"the Kafka broker at {where}"
        if isinstance(exc, errors.SaslAuthenticationFailed | errors.AuthenticationFailedError):
            return (
                f"{broker} refused the credentials of user {self.username!r} "
                f"(SASL {self.mechanism}): authentication failed"
            )
        if isinstance(exc, errors.UnsupportedSaslMechanismError):
            return f"{broker} does not accept SASL {self.mechanism} (--broker-sasl-mechanism)"
        if isinstance(exc, ssl.SSLCertVerificationError):
            return (
                f"{broker} presented a TLS certificate that {self.cafile} does not vouch for: "
                f"{exc.verify_message}"
            )
        if isinstance(exc, ssl.SSLError):
            return f"TLS with {broker} failed ({exc.reason or exc}): is it a TLS listener?"
        if isinstance(exc, asyncio.TimeoutError):
            return f"{broker} did not answer within {timeout:.0f} s"
        if isinstance(exc, ConnectionRefusedError):
            return f"nothing listens at {where}"
        if isinstance(exc, ConnectionError) and self.cafile:  # the handshake's, from connect
            return (
                f"{broker} closed the connection during the TLS handshake: is it a TLS "
                "listener? (leave out --broker-ssl-cafile for a plaintext one)"
            )
        if isinstance(exc, errors.IllegalSaslStateError):
            return (
                f"{broker} takes no SASL login on this listener: leave out "
                "--broker-sasl-mechanism, or use its SASL listener"
            )
        if isinstance(exc, errors.KafkaConnectionError | ConnectionError):
            if self.cafile is None:
                hint = "it may expect TLS: give its CA with --broker-ssl-cafile"
            elif self.mechanism is None:
                hint = "it may expect a SASL login: see --broker-sasl-mechanism"
            else:
                hint = "is it a Kafka listener for SASL over TLS?"
            return f"{broker} closed the connection ({self.describe()}): {hint}"
        return f"{broker} refused the connection ({self.describe()}): {type(exc).__name__}: {exc}"
