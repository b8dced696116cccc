"""Every ``belvedere.App`` setting, declared once.

A setting is an ``App(...)`` keyword, a ``BELVEDERE_*`` environment variable, maybe a
``belvedere worker`` flag, and a row of the settings tables (App's docstring and
docs/operations.md): all four are derived from its :class:`Setting` in :data:`SETTINGS`,
so none can drift from the others. A value is taken, in order, from the command line's
flag, the environment, the keyword, then the default; the first given is parsed by the
setting's parser, whose error names the setting.

The flags reach the App through :func:`overriding`: ``belvedere`` imports the user's module,
which builds its App at import time, inside that block, instead of writing the flags into
``os.environ`` (where they would outlive the command and reach every child process).

A plain dataclass rather than pydantic-settings: this module costs about a millisecond to
import, and ``import belvedere`` (faust, mostly) stays as slow as it was.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["SETTINGS", "Flag", "Setting", "markdown_table", "overriding", "resolve", "rst_table"]

ENV_PREFIX = "BELVEDERE_"


def text(name: str, value: Any) -> str | None:
    """Any value, as given (file paths, tokens, URLs)."""
    return value


def path(name: str, value: Any) -> str:
    return str(value)


def seconds(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if not number > 0:
        raise ValueError(f"{name} must be a number of seconds above 0, not {value!r}")
    return number


def flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{name} must be true or false, not {value!r}")


def count(name: str, value: Any) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = -1
    if number < 0:
        raise ValueError(f"{name} must be a whole number, 0 or more, not {value!r}")
    return number


def port(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = -1
    if not 0 <= number < 65536:
        raise ValueError(f"{name} must be a port number (0 to 65535), not {value!r}")
    return number


def names(name: str, value: Any) -> Sequence[str]:
    """Comma-separated text, or a list, without blanks."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    return tuple(item.strip() for item in items if item.strip())


def port_flag(value: str) -> int:
    """A ``--web-port`` value; ValueError's message is the line the CLI shows."""
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"not a port number: {value!r}") from None
    if not 0 < number < 65536:
        raise ValueError(f"port out of range: {number}")
    return number


@dataclass(frozen=True)
class Flag:
    """How a setting appears on the command line.

    ``metavar`` None makes a switch (given: true). ``reach``: also a flag of the commands
    that reach a worker (``rebuild``, ``reset``, ``dlq``), so one command line names the
    same worker. ``path``: made absolute, as the worker may not run where it was named.
    """

    metavar: str | None = None
    type: Callable[[str], Any] | None = None
    reach: bool = False
    path: bool = False

    def option(self, name: str) -> str:
        return f"--{name.replace('_', '-')}"


@dataclass(frozen=True)
class Setting:
    """One setting: ``parse(name, value)`` turns what was given (text from the
    environment or a flag, any value from code) into the setting's value, or raises a
    ValueError naming it. ``default`` is a value or a function of the app id. ``default_text``
    is how the tables and the flag's help show the default; ``help`` says what it is."""

    name: str
    parse: Callable[[str, Any], Any]
    default: Any
    default_text: str
    help: str
    flag: Flag | None = None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def annotation(self) -> str:
        """The type a keyword takes, as the parser's return annotation writes it."""
        return str(inspect.signature(self.parse).return_annotation)

    def value(self, keyword: Any, app_id: str) -> Any:
        given = _overrides.get(self.name)
        if given is None:
            given = os.environ.get(self.env) or None
        if given is None:
            given = keyword
        if given is None:
            given = self.default(app_id) if callable(self.default) else self.default
        return self.parse(self.name, given)


SECONDS = Flag("SECONDS", float)
FILE = Flag("FILE", reach=True, path=True)

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "broker",
        text,
        "embedded://",
        "``embedded://`` (in the data dir)",
        "kafka://host:port (several: host1:port;host2:port), or embedded://",
        Flag("URL", reach=True),
    ),
    Setting(
        "data_dir",
        path,
        lambda app_id: f"belvedere-data/{app_id}",
        "``belvedere-data/<id>``",
        "tables and the embedded broker's log",
        Flag("DIR", reach=True, path=True),
    ),
    Setting(
        "web_host",
        text,
        "127.0.0.1",
        "``127.0.0.1``",
        "the HTTP host to bind and advertise",
        Flag("HOST", reach=True),
    ),
    Setting("web_port", port, 6066, "``6066``", "the HTTP port", Flag("N", port_flag, reach=True)),
    Setting(
        "read_token",
        text,
        None,
        "``api_token``; none: reads are open",
        "the bearer token of the read scope",
    ),
    Setting(
        "write_token",
        text,
        None,
        "``api_token``; none: writes are open",
        "the bearer token of the write scope (``POST /events``, ``POST /commands``)",
    ),
    Setting(
        "admin_token",
        text,
        None,
        "none: admin requests from loopback only",
        "the bearer token of the admin scope (rebuilds); it opens every scope",
    ),
    Setting(
        "api_token",
        text,
        None,
        "none",
        "the read and the write token, where those are not set",
    ),
    Setting(
        "forward_secret",
        text,
        None,
        "derived from the tokens, else the app id",
        "what workers sign the requests they forward to each other with",
    ),
    Setting(
        "insecure_open",
        flag,
        False,
        "false: refuse an unguarded non-loopback bind",
        "serve on a non-loopback web host even though some scope has no token "
        "(BELVEDERE_READ_TOKEN, _WRITE_TOKEN, _ADMIN_TOKEN, or _API_TOKEN for read and write)",
        Flag(),
    ),
    Setting(
        "broker_ssl_cafile",
        text,
        None,
        "none: plaintext",
        "talk TLS to Kafka, trusting the CA certificates in FILE (PEM)",
        FILE,
    ),
    Setting(
        "broker_ssl_certfile",
        text,
        None,
        "none",
        "a client certificate, for mutual TLS",
        FILE,
    ),
    Setting(
        "broker_ssl_keyfile",
        text,
        None,
        "none: the key is in the certfile",
        "its key, if not in the certificate's file",
        FILE,
    ),
    Setting(
        "broker_sasl_mechanism",
        text,
        None,
        "none: no SASL",
        "log in to Kafka with PLAIN (over TLS only), SCRAM-SHA-256 or SCRAM-SHA-512, "
        "as BELVEDERE_BROKER_USERNAME with BELVEDERE_BROKER_PASSWORD",
        Flag("NAME", reach=True),
    ),
    Setting("broker_username", text, None, "none", "the SASL user"),
    Setting("broker_password", text, None, "none", "the SASL password (never a flag, never shown)"),
    Setting(
        "web_ssl_certfile",
        text,
        None,
        "none: HTTP",
        "serve HTTPS with this certificate (PEM; its key too, unless --web-ssl-keyfile)",
        Flag("FILE", path=True),
    ),
    Setting(
        "web_ssl_keyfile",
        text,
        None,
        "none: the key is in the certfile",
        "the certificate's key",
        Flag("FILE", path=True),
    ),
    Setting(
        "web_ssl_cafile",
        text,
        None,
        "none: the system's CAs",
        "the CA certificates (PEM) that workers' HTTPS certificates are checked against",
        FILE,
    ),
    Setting(
        "rebuild_processes",
        count,
        None,
        "the cores usable; 0: in the worker's process",
        "helper processes a rebuild's replay may use",
    ),
    Setting(
        "broker_session_timeout",
        seconds,
        6.0,
        "6 s (Kafka's lowest by default)",
        "seconds without a heartbeat before Kafka gives a worker's partitions to the others",
    ),
    Setting(
        "broker_heartbeat_interval",
        seconds,
        0.5,
        "0.5 s",
        "seconds between two heartbeats (less than the session timeout)",
    ),
    Setting(
        "topic_replication_factor",
        count,
        None,
        "faust's: 1",
        "copies of every topic the app creates (faust's setting, which this variable overrides)",
    ),
    Setting(
        "web_max_connections",
        count,
        None,
        "half the soft file limit, at most 4096",
        "open HTTP connections at most (beyond: the longest idle is closed)",
        Flag("N", int),
    ),
    Setting(
        "web_keepalive_timeout",
        seconds,
        30.0,
        "30 s",
        "seconds after which an idle connection is closed",
        SECONDS,
    ),
    Setting(
        "web_header_timeout",
        seconds,
        10.0,
        "10 s",
        "seconds for a request's headers to arrive",
        SECONDS,
    ),
    Setting(
        "web_body_timeout",
        seconds,
        60.0,
        "60 s (else 408)",
        "seconds for a request's body to arrive",
        SECONDS,
    ),
    Setting(
        "max_change_feeds",
        count,
        None,
        "half of web_max_connections (then 503)",
        "change feeds at once",
        Flag("N", int),
    ),
    Setting(
        "web_allowed_hosts",
        names,
        None,
        "none: ``Host`` is web_host, localhost or an IP",
        "more names (comma-separated; * for any) the Host header may give than the "
        "advertised host, localhost and IP addresses",
        Flag("NAMES"),
    ),
    Setting(
        "web_allowed_origins",
        names,
        None,
        "none: no CORS; writes from own origin only",
        "origins (https://app.example, comma-separated) whose pages may call the API "
        "(CORS) and write to it",
        Flag("ORIGINS"),
    ),
    Setting(
        "strict",
        flag,
        False,
        "false: dead-letter a failing event",
        "for development: stop at the first projection handler error, with its "
        "traceback, before its event (restarted, the worker folds that event again)",
        Flag(),
    ),
    Setting(
        "ready_max_dead_letter_rate",
        count,
        None,
        "none: no limit",
        "/ready answers 503 while more than N dead letters a minute are sent",
        Flag("N", int),
    ),
    Setting(
        "verbose",
        flag,
        False,
        "false: faust's start-up lines left out",
        "log faust's start-up and rebalance lines too, at --loglevel (by default one line "
        "says when the worker serves)",
        Flag(),
    ),
)

BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}

#: Values given on the command line, by setting name; set only inside :func:`overriding`.
_overrides: dict[str, Any] = {}


@contextmanager
def overriding(values: Mapping[str, Any]) -> Iterator[None]:
    """Within the block, ``values`` (those not None) win over the environment and code:
    the CLI imports the user's module, and so builds its App, in here."""
    saved = dict(_overrides)
    _overrides.update({name: value for name, value in values.items() if value is not None})
    try:
        yield
    finally:
        _overrides.clear()
        _overrides.update(saved)


def resolve(app_id: str, keywords: dict[str, Any], keep: Iterable[str] = ()) -> dict[str, Any]:
    """Every setting's value; its keyword is taken out of ``keywords``, except those in
    ``keep`` (faust's own settings, which stay for faust)."""
    kept = set(keep)
    return {
        s.name: s.value(
            keywords.get(s.name) if s.name in kept else keywords.pop(s.name, None), app_id
        )
        for s in SETTINGS
    }


def keyword_parameters() -> list[inspect.Parameter]:
    """Every setting as a keyword-only parameter (None: the environment or the default),
    for the signature help() and editors' completion show of ``App``."""
    return [
        inspect.Parameter(
            s.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=s.annotation if s.annotation.endswith("None") else f"{s.annotation} | None",
        )
        for s in SETTINGS
    ]


def unknown(keywords: Iterable[str], known: Iterable[str]) -> str | None:
    """The line a misspelt keyword gets (faust passes unknown ones over in silence)."""
    names = sorted(set(keywords) - set(known))
    if not names:
        return None
    close = difflib.get_close_matches(names[0], [*known, *BY_NAME], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"App() got an unexpected keyword argument {names[0]!r}{hint}"


def _flag_text(setting: Setting) -> str:
    assert setting.flag is not None
    option = setting.flag.option(setting.name)
    return f"{option} {setting.flag.metavar}" if setting.flag.metavar else option


def rst_table() -> str:
    """The table of App's docstring (reStructuredText)."""
    rows = [(f"``{s.name}``", f"``{s.env}``", s.default_text) for s in SETTINGS]
    header = ("argument", "environment", "default")
    widths = [max(len(row[i]) for row in (*rows, header)) for i in range(3)]
    rule = "  ".join("=" * width for width in widths)
    lines = [
        rule,
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(),
        rule,
    ]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join([*lines, rule])


def markdown_table() -> str:
    """The settings table of docs/operations.md."""
    lines = [
        "| argument | environment | `belvedere worker` flag | default | what it is |",
        "|---|---|---|---|---|",
    ]
    for s in SETTINGS:
        flag_cell = f"`{_flag_text(s)}`" if s.flag else "none"
        if s.flag and s.flag.reach:
            flag_cell += " (also `rebuild`, `reset`, `dlq`)"
        default = s.default_text.replace("``", "`")
        lines.append(f"| `{s.name}=` | `{s.env}` | {flag_cell} | {default} | {s.help} |")
    return "\n".join(lines) + "\n"
