"""The ``belvedere`` command.

Every mistake a user can make on the command line (a module that does not import, an app
that is not there, a port in use, a broker that does not answer) ends in one line on stderr
and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import socket
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from yarl import URL

import belvedere
from belvedere.app import App
from belvedere.streams.errors import BrokerError

__all__ = ["UsageError", "load_app", "main"]

EXIT_USAGE = 2
KAFKA_SCHEMES = {"kafka", "aiokafka"}
CONNECT_TIMEOUT = 5.0


class UsageError(Exception):
    """A mistake in how the command was called; its message is the one line shown."""


def load_app(spec: str) -> App:
    """Import ``MODULE:ATTRIBUTE`` (attribute defaults to ``app``) from the current directory."""
    module_name, _, attribute = spec.partition(":")
    attribute = attribute or "app"
    if not module_name:
        raise UsageError(f"expected MODULE:APP, got {spec!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise UsageError(
                f"cannot import {module_name!r}: no module named {exc.name!r}"
            ) from None
        raise UsageError(f"importing {module_name!r} failed: {_where(exc)}") from None
    except Exception as exc:
        raise UsageError(f"importing {module_name!r} failed: {_where(exc)}") from None
    try:
        app = getattr(module, attribute)
    except AttributeError:
        raise UsageError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(app, App):
        raise UsageError(
            f"{module_name}:{attribute} is a {type(app).__name__}, not a belvedere.App"
        )
    return app


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    place = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{place}"


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UsageError(
                f"web port {port} on {host} is not available ({exc.strerror}); "
                "choose another with --web-port"
            ) from None


def check_broker(app: App) -> None:
    """Fail fast, in one line, when the broker cannot be used at all."""
    urls: list[URL] = list(app.conf.broker)
    scheme = urls[0].scheme
    if scheme in KAFKA_SCHEMES:
        _check_kafka_reachable(urls)
    elif scheme == "embedded":
        from belvedere.streams.embedded import Log, log_path

        try:
            Log.acquire(log_path(urls[0], app.conf.datadir)).release()
        except BrokerError as exc:
            raise UsageError(str(exc)) from None


def _check_kafka_reachable(urls: list[URL]) -> None:
    errors = []
    for url in urls:
        host, port = url.host or "localhost", url.port or 9092
        try:
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
            return
        except OSError as exc:
            errors.append(f"{host}:{port} ({exc.strerror or exc})")
    raise UsageError(f"cannot reach the Kafka broker at {', '.join(errors)}")


def _set_env(name: str, value: object | None) -> None:
    if value is not None:
        os.environ[name] = str(value)


def cmd_worker(args: argparse.Namespace) -> int:
    _set_env("BELVEDERE_BROKER", args.broker)
    _set_env("BELVEDERE_WEB_PORT", args.web_port)
    _set_env("BELVEDERE_WEB_HOST", args.web_host)
    _set_env("BELVEDERE_DATA_DIR", args.data_dir and Path(args.data_dir).resolve())
    app = load_app(args.app)
    check_port_free(app.conf.web_bind, app.conf.web_port)
    check_broker(app)
    worker = app.Worker(loglevel=args.loglevel)
    try:
        worker.execute_from_commandline()
    except SystemExit:
        # mode exits with status 1 on a crash; surface a broker error as its one line
        if isinstance(worker.crash_reason, BrokerError):
            raise worker.crash_reason from None
        raise
    return 0


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port out of range: {port}")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="belvedere",
        description="Event-driven services with materialized views, on faust.",
    )
    parser.add_argument("--version", action="version", version=f"belvedere {belvedere.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    worker = commands.add_parser(
        "worker", help="run a worker for an app", description="Run a worker for an app."
    )
    worker.add_argument(
        "app", metavar="MODULE:APP", help="where the belvedere.App is, e.g. shop.app:app"
    )
    worker.add_argument(
        "--broker", metavar="URL", help="kafka://host:port, or embedded:// (the default)"
    )
    worker.add_argument("--web-port", type=_port, metavar="N", help="HTTP port (default 6066)")
    worker.add_argument(
        "--web-host", metavar="HOST", help="HTTP host to bind and advertise (default 127.0.0.1)"
    )
    worker.add_argument("--data-dir", metavar="DIR", help="tables and the embedded broker's log")
    worker.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    worker.set_defaults(run=cmd_worker)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except UsageError as exc:
        print(f"belvedere: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokerError as exc:  # raised inside the worker, after faust logged its traceback
        print(f"belvedere: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
