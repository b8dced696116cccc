"""The ``belvedere`` command.

Every mistake a user can make on the command line (a module that does not import, an app
that is not there, a port in use, a broker that does not answer) ends in one line on stderr
and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import os
import socket
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from yarl import URL

import belvedere
from belvedere import datadir, settings
from belvedere.agents.engine import StrictStop
from belvedere.agents.replay_zygote import fork_helpers
from belvedere.app import App
from belvedere.compat.malloc import fix_mmap_threshold
from belvedere.streams.errors import BrokerError, BrokerLocked
from belvedere.streams.security import SecuritySettingsError

__all__ = ["UsageError", "load_app", "main"]

EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 128 + 13  # a shell's status for a command killed by SIGPIPE
KAFKA_SCHEMES = {"kafka", "aiokafka"}
CONNECT_TIMEOUT = 5.0


class UsageError(Exception):
    """A mistake in how the command was called; its message is the one line shown."""


_MISSING = object()


def load_app(spec: str, flags: Mapping[str, Any] | None = None) -> App:
    """Import ``MODULE:ATTRIBUTE`` (attribute defaults to ``app``) from the current directory,
    with the setting ``flags`` given (by setting name) winning while it builds its App."""
    module_name, _, attribute = spec.partition(":")
    attribute = attribute or "app"
    if not module_name:
        raise UsageError(f"expected MODULE:APP, got {spec!r}")
    if module_name.endswith(".py"):
        module_name = _module_of_file(module_name, attribute)
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        with settings.overriding(flags or {}):
            module = importlib.import_module(module_name)
            # in the block too: a module may build its App when the attribute is first read
            app = getattr(module, attribute, _MISSING)
    except SecuritySettingsError as exc:
        raise UsageError(str(exc)) from None
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise UsageError(
                f"cannot import {module_name!r}: no module named {exc.name!r} in the working "
                f"directory ({os.getcwd()}) nor on sys.path; run belvedere from the folder "
                "that holds it, or add that folder to PYTHONPATH"
            ) from None
        raise UsageError(f"importing {module_name!r} failed: {_where(exc)}") from None
    except Exception as exc:
        raise UsageError(f"importing {module_name!r} failed: {_where(exc)}") from None
    if app is _MISSING:
        raise UsageError(f"module {module_name!r} has no attribute {attribute!r}")
    if not isinstance(app, App):
        raise UsageError(
            f"{module_name}:{attribute} is a {type(app).__name__}, not a belvedere.App"
        )
    return app


def _module_of_file(path: str, attribute: str) -> str:
    """``bank.py`` (or ``shop/app.py``) as a module name, for a user who gave a file: the
    file under the working directory is what they meant."""
    file = Path(path)
    dotted = ".".join(file.with_suffix("").parts)
    if file.is_absolute() or ".." in file.parts or not file.is_file():
        raise UsageError(
            f"{path!r} is a file name, but MODULE:APP wants a module: run belvedere from the "
            f"folder that holds the file and pass {file.stem}:{attribute}"
        )
    return dotted


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


def check_data_dir(app: App) -> None:
    """A data dir this user cannot write would fail deep in RocksDB or pathlib."""
    folder = Path(app.conf.datadir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".belvedere-write-check-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise UsageError(
            f"the data dir {folder.resolve()} is not writable ({exc.strerror or exc}): pass "
            "a --data-dir (or BELVEDERE_DATA_DIR) this user can create and write"
        ) from None


def _hold_data_dir(app: App) -> None:
    try:
        datadir.hold(Path(app.conf.datadir))
    except datadir.DataDirInUse as exc:
        raise UsageError(
            f"{exc}: another worker runs on this data dir; stop it, or give this one "
            "another --data-dir"
        ) from None


def _stop_first(what: str, command: str) -> UsageError:
    return UsageError(
        f"{what}: stop the workers on this data dir first (belvedere {command} opens "
        "what they hold), then run it again"
    )


def check_broker(app: App) -> None:
    """Fail fast, in one line, when the broker cannot be used at all."""
    urls: list[URL] = list(app.conf.broker)
    scheme = urls[0].scheme
    if scheme in KAFKA_SCHEMES:
        _check_kafka_reachable(urls)
        hosts = [(url.host or "localhost", url.port or 9092) for url in urls]
        try:  # a login or TLS refusal would otherwise crash the worker with a traceback
            asyncio.run(app.broker_security.verify(hosts, CONNECT_TIMEOUT))
        except BrokerError as exc:
            raise UsageError(str(exc)) from None
    elif scheme == "embedded":
        from belvedere.streams.embedded import Log, log_path

        try:
            log = Log.acquire(log_path(urls[0], app.conf.datadir))
            try:
                _check_partition_counts(app, {n: m.partitions for n, m in log.topics.items()})
            finally:
                log.release()
        except BrokerLocked as exc:
            raise UsageError(
                f"{exc}: another worker runs on this data dir; stop it, or give this one "
                "another --data-dir"
            ) from None
        except BrokerError as exc:
            raise UsageError(str(exc)) from None


def _declared_partitions(app: App) -> dict[str, tuple[int, str, str]]:
    """Each topic the app reads or keeps a table in (those a worker declares; a topic only
    published to may have been created on first use, with the default count), with its
    declared partition count and what declares it. The topics read come first: a changed
    source is the cause of its views' and tables' changelogs differing too."""
    default = app.conf.topic_partitions
    found: dict[str, tuple[int, str, str]] = {}
    channels = [*app.topics, *(agent.channel for agent in app.agents.values())]
    for channel in channels:
        for name in getattr(channel, "topics", ()):
            found.setdefault(name, (channel.partitions or default, f"topic {name!r}", ""))
    for table in app.tables.values():
        name = table.changelog_topic.get_topic_name()
        found.setdefault(
            name, (table.partitions or default, f"table {table.name!r}", f" its changelog {name!r}")
        )
    return found


def _check_partition_counts(app: App, existing: dict[str, int]) -> None:
    """A topic's partition count cannot change in place: say which declaration changed
    before the worker starts, rather than exiting later after faust's log of the crash."""
    for name, (declared, what, which) in _declared_partitions(app).items():
        has = existing.get(name)
        if has is not None and has != declared:
            raise UsageError(
                f"{what} is declared with {declared} partition(s), but{which} has {has} in "
                f"the embedded broker at {Path(app.conf.datadir).resolve()}: a topic's partition "
                f"count cannot change; declare {has} again, or start with an empty --data-dir"
            )


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


def _given(args: argparse.Namespace, *, reach_only: bool = False) -> dict[str, Any]:
    """The setting flags given, by setting name: what :func:`load_app` makes win over the
    environment and the code while the app's module builds its App."""
    given: dict[str, Any] = {}
    for setting in settings.SETTINGS:
        flag = setting.flag
        if flag is None or (reach_only and not flag.reach):
            continue
        value = getattr(args, setting.name, None)
        if value is not None and flag.path:
            value = str(Path(value).resolve())
        given[setting.name] = value
    return given


#: A young-generation collection after this many new objects instead of Python's 700.
GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect less often: a fold allocates a few objects per event, nearly all freed at
    once by their reference counts, yet every 700 allocations the collector walked the
    batches still held, a fifth of a rebuild's time (docs/benchmarks.md). What the worker
    loaded until now (modules, the app) is frozen out of the collector's walks."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)


def cmd_worker(args: argparse.Namespace) -> int:
    app = load_app(args.app, _given(args))
    try:
        app.check()
    except ValueError as exc:
        raise UsageError(f"{args.app}: {exc}") from None
    check_port_free(app.conf.web_bind, app.conf.web_port)
    check_data_dir(app)
    _hold_data_dir(app)  # until the process exits
    check_broker(app)
    tune_gc()
    fix_mmap_threshold()  # RocksDB's freed memtables go back to the system (compat/malloc.py)
    # Before the worker starts a thread: the helpers' zygote is a copy of this process.
    app.replay_helpers = fork_helpers(app, app.rebuild_processes)
    worker = app.Worker(loglevel=args.loglevel)
    try:
        worker.execute_from_commandline()
    except SystemExit:
        # mode exits with status 1 on a crash; surface a broker error as its one line
        if isinstance(worker.crash_reason, (BrokerError, StrictStop)):
            raise worker.crash_reason from None
        raise
    finally:
        if app.replay_helpers is not None:
            app.replay_helpers.close()
    return 0


def _load_with_broker(args: argparse.Namespace) -> App:
    app = load_app(args.app, _given(args, reach_only=True))
    if app.conf.broker[0].scheme == "embedded":
        check_data_dir(app)
    if app.conf.broker[0].scheme in KAFKA_SCHEMES:
        check_broker(app)
    return app


def cmd_schema_export(args: argparse.Namespace) -> int:
    from belvedere.streams import schema

    app = load_app(args.app)
    if not app.event_types:
        raise UsageError(f"{args.app} declares no event topics, so there is no schema to export")
    written = schema.export(app.event_types, Path(args.dir))
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_schema_check(args: argparse.Namespace) -> int:
    from belvedere.streams import schema

    app = load_app(args.app)
    folder = Path(args.dir)
    if not folder.is_dir():
        raise UsageError(
            f"no schema folder at {folder} (create one with 'belvedere schema export')"
        )
    verdicts = schema.check(app.event_types, folder)
    for verdict in verdicts:
        print(verdict.render())
    bad = [v for v in verdicts if not v.compatible]
    print(f"{len(bad)} incompatible of {len(verdicts)} event types" if bad else "all compatible")
    return 1 if bad else 0


def _dead_letter_source(app: App, topic: str) -> Any:
    """The event topic, or plain ``app.topic``, named ``topic``."""
    if topic in app.event_topics:
        return app.event_topics[topic]
    channels = [*app.topics, *(agent.channel for agent in app.agents.values())]
    plain = {name: t for t in channels for name in getattr(t, "topics", ())}
    if topic in plain:
        return plain[topic]
    known = ", ".join(sorted({*app.event_topics, *plain})) or "none"
    raise UsageError(f"{topic!r} is not a topic of {app.conf.id} (its topics: {known})")


def cmd_dlq_list(args: argparse.Namespace) -> int:
    from belvedere.streams.clients import client_for
    from belvedere.streams.dead_letters import DeadLetter, dead_letter_topic

    app = _load_with_broker(args)
    _dead_letter_source(app, args.topic)
    name = dead_letter_topic(app.conf.id, args.topic)
    records = _broker_call(
        lambda: client_for(app.conf.broker, app.conf.datadir, app.broker_security).read(name),
        "dlq",
    )
    letters = [
        (record, DeadLetter.from_record(record.key, record.value, record.headers))
        for record in records
    ]
    letters = [
        (r, letter)
        for r, letter in letters
        if letter.matches(view=args.view, generation=args.generation)
    ]
    chosen = "" if len(letters) == len(records) else f" (of {len(records)})"
    if not letters:
        print(f"no dead letters for {args.topic} (topic {name}){chosen}")
        return 0
    for record, letter in letters:
        key = letter.key.decode(errors="replace") if letter.key is not None else "-"
        where = "" if letter.view is None else f"  view={letter.view}"
        if letter.generation is not None:
            where += f" g{letter.generation}"
        print(
            f"{record.partition}@{record.offset}  {letter.time}  from {letter.topic}[{letter.partition}]@{letter.offset}"
            f"  key={key}{where}  {letter.kind}: {letter.reason}"
        )
    print(f"{len(letters)} dead letter(s) in {name}{chosen}")
    return 0


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    from belvedere.streams.clients import client_for
    from belvedere.streams.dead_letters import replay

    app = _load_with_broker(args)
    topic = _dead_letter_source(app, args.topic)
    client = client_for(app.conf.broker, app.conf.datadir, app.broker_security)
    report = _broker_call(lambda: replay(app, topic, client, from_start=args.from_start), "dlq")
    for line in report.still_bad:
        print(f"still bad: {line}")
    print(
        f"replayed {report.replayed} dead letter(s) to {args.topic}; {len(report.still_bad)} still bad"
    )
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    from belvedere.agents.reset import reset_view
    from belvedere.streams.clients import client_for

    app = _load_with_broker(args)
    _refuse_running_worker(app, "reset")
    client = client_for(app.conf.broker, app.conf.datadir, app.broker_security)
    try:
        report = _broker_call(lambda: reset_view(app, args.view, client), "reset")
    except LookupError as exc:
        raise UsageError(str(exc.args[0])) from None
    print(
        f"reset view {report.view}: changelog {report.changelog} recreated ({report.partitions} partitions), "
        f"offsets of {report.source} back to the start, local files "
        f"{'removed' if report.removed_local else 'absent'}; the next worker rebuilds it"
    )
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    from belvedere.agents.rebuild import code_fingerprint
    from belvedere.streams.converters import FieldError, timestamp_ms
    from belvedere.views_api.client import ApiError

    app = load_app(args.app, _given(args, reach_only=True))
    if args.view not in app.views:
        known = ", ".join(sorted(app.views)) or "none"
        raise UsageError(f"{app.conf.id} has no view {args.view!r} (its views: {known})")
    if args.from_timestamp is not None:
        try:
            timestamp_ms(args.from_timestamp)
        except FieldError as exc:
            raise UsageError(f"--from-timestamp: {exc}") from None
    client = _worker_client(app, args.url)
    try:
        if args.status:
            print(_progress_line(client.rebuild_status(args.view)))
            return 0
        started = client.start_rebuild(
            args.view, args.from_timestamp, accept_failures=args.accept_failures
        )
        target = started["building"]
        if target is None:  # accepted a rebuild that had caught up: it switched at once
            target = started["generation"]
            print(f"view {args.view}: generation {target} accepted", file=sys.stderr)
        else:
            print(
                f"rebuilding view {args.view} into generation {target} "
                f"(generation {started['generation']} serves meanwhile)"
                + (
                    "; events failing under the new code are accepted"
                    if args.accept_failures
                    else ""
                ),
                file=sys.stderr,
            )
        if args.no_wait:
            return 0
        began = time.monotonic()
        projection = app.engine.projections.get(args.view)
        ours = code_fingerprint(projection) if projection is not None else None
        report, failures = _watch(client, args.view, target, ours)
    except ApiError as exc:
        raise UsageError(str(exc)) from None
    except KeyboardInterrupt:
        print(
            f"\nstopped watching; the workers go on rebuilding ({sys.argv[0]} rebuild ... --status)",
            file=sys.stderr,
        )
        return 130
    if report["state"] == "refused":
        print(
            f"view {args.view}: generation {target} was not switched to; generation "
            f"{report['generation']} keeps serving: {report['refused']}",
            file=sys.stderr,
        )
        return 1
    accepted = (
        f"; {sum(failures.values())} event(s) that failed under the new code accepted "
        f"({_kinds(failures)}: see belvedere dlq list ... --generation {target})"
        if failures
        else ""
    )
    print(
        f"view {args.view} now serves generation {report['generation']} "
        f"(rebuilt in {time.monotonic() - began:.1f} s){accepted}"
    )
    return 0


def _worker_url(app: App) -> str:
    return f"{app.web_tls.scheme}://{app.conf.web_host}:{app.conf.web_port}"


def _worker_client(app: App, url: str | None = None, timeout: float = 10.0) -> Any:
    """A client of the worker at ``url`` (default: the app's web host and port), which
    refuses a worker of another app."""
    from belvedere.views_api.client import WorkerClient

    elsewhere = (
        f"pass the URL of a worker of {app.conf.id!r}"
        if url
        else "pass the --web-port (and --web-host) its workers were started with, "
        "or set BELVEDERE_WEB_PORT"
    )
    # the admin token opens the read scope too; without one, starting needs loopback only
    token = app.admin_token or app.read_token or app.api_token
    return WorkerClient(
        url or _worker_url(app),
        token,
        timeout,
        tls=app.web_tls.client_context,
        app=app.conf.id,
        elsewhere=elsewhere,
    )


def _refuse_running_worker(app: App, command: str) -> None:
    """``reset`` needs the workers stopped: a worker of the app answering at its address,
    or holding its data dir here, says they are not."""
    if _worker_client(app, timeout=2.0).app_id() == app.conf.id:
        raise UsageError(
            f"a worker of {app.conf.id!r} runs at {_worker_url(app)}: stop the workers "
            f"first, then run belvedere {command} again"
        )
    folder = Path(app.conf.datadir).resolve()
    pid = datadir.holder(folder)
    if pid is not None:
        raise _stop_first(f"the data dir {folder} is in use by process {pid}", command)


def _kinds(failures: dict[str, int]) -> str:
    return ", ".join(f"{kind}: {n}" for kind, n in sorted(failures.items()))


def _watch(
    client: Any, view: str, target: int, ours: str | None
) -> tuple[dict[str, Any], dict[str, int]]:
    """Show the rebuild's progress until every worker serves ``target`` or the switch is
    refused; returns the last report, and the failures counted while it was building."""
    tty = sys.stderr.isatty()
    shown = 0.0
    failures: dict[str, int] = {}
    warned = False
    while True:
        report = client.rebuild_status(view)
        if target in (report.get("building"), report["generation"]):
            failures = report.get("failures") or failures
        theirs = report.get("code") or []
        if ours is not None and theirs and ours not in theirs and not warned:
            warned = True
            print(
                f"\nwarning: the workers fold view {view} with other code than this command "
                f"imported (theirs: {', '.join(theirs)}; here: {ours}); the rebuild uses theirs",
                file=sys.stderr,
            )
        if report["state"] == "refused" and report["building"] == target:
            if tty:
                print(file=sys.stderr)
            return report, failures
        if report["generation"] >= target and report["state"] == "idle":
            if tty:
                print(file=sys.stderr)
            return report, failures
        if report["building"] not in (None, target) or report["generation"] > target:
            raise UsageError(f"view {view}: generation {target} was abandoned")
        now = time.monotonic()
        if tty:
            print("\r" + _progress_line(report), end="", file=sys.stderr, flush=True)
        elif now - shown >= 5:
            print(_progress_line(report), file=sys.stderr, flush=True)
            shown = now
        time.sleep(0.5)


def _progress_line(report: dict[str, Any]) -> str:
    done, total = report["done"], report["total"]
    eta = report.get("eta")
    eta_text = "?" if eta is None else f"{eta:.0f}s"
    state = report["state"]
    generation = report["building"] or report["generation"]
    if state == "idle":
        return f"view {report['view']}: generation {report['generation']}, no rebuild running"
    if not total:  # no partition has said how much history it has yet
        return f"[{'':<30}] starting: finding each partition's history  {state} g{generation}"
    share = done / total
    bar = "#" * int(share * 30)
    failed = report.get("failed") or 0
    return (
        f"[{bar:<30}] {share:6.1%} {done:,}/{total:,} events  {report['rate']:,.0f} ev/s  "
        f"ETA {eta_text}  {state} g{generation}" + (f"  {failed:,} failed" if failed else "")
    )


def _broker_call(call: Any, command: str) -> Any:
    try:
        return call()
    except BrokerLocked as exc:
        raise _stop_first(str(exc), command) from None
    except BrokerError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot reach the broker: {exc}") from None


def cmd_openapi(args: argparse.Namespace) -> int:
    import json

    from belvedere.views_api.openapi import spec
    from belvedere.views_api.reference import reference
    from belvedere.views_api.routes import ROUTES

    document = spec(load_app(args.app), ROUTES)
    print(reference(document) if args.markdown else json.dumps(document, indent=2), end="")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from belvedere.examples.shop.demo import main as demo

    broker = args.broker or os.environ.get("BELVEDERE_BROKER") or "embedded://"
    return demo(broker, args.data_dir, args.web_port, args.orders, args.rate, args.seed)


def _positive(kind: type) -> Any:
    def parse(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
        if not number > 0:
            raise argparse.ArgumentTypeError(f"must be above 0, not {value}")
        return number

    return parse


def _argument_type(parse: Any) -> Any:
    """A setting's flag parser, its ValueError shown as argparse's one line."""

    def argument(value: str) -> Any:
        try:
            return parse(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    argument.__name__ = getattr(parse, "__name__", "value")
    return argument


def _setting_arguments(parser: argparse.ArgumentParser, *, serving: bool) -> None:
    """The settings' flags (:mod:`belvedere.settings`): on ``worker`` (``serving``) all of
    them; on the commands that reach a worker, those that say where it is and its broker,
    so one set of flags reaches the same worker."""
    for setting in settings.SETTINGS:
        flag = setting.flag
        if flag is None or not (serving or flag.reach):
            continue
        if flag.metavar is None:
            parser.add_argument(
                flag.option(setting.name),
                action="store_true",
                default=None,
                help=f"{setting.help} ({setting.env}=1)",
            )
            continue
        default = setting.default_text.replace("``", "")
        parser.add_argument(
            flag.option(setting.name),
            metavar=flag.metavar,
            type=_argument_type(flag.type) if flag.type else None,
            help=f"{setting.help} (default: {default}; {setting.env})",
        )


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
    _setting_arguments(worker, serving=True)
    worker.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    worker.set_defaults(run=cmd_worker)

    schema = commands.add_parser(
        "schema", help="export event schemas, or check a change against them"
    )
    schema_commands = schema.add_subparsers(
        dest="schema_command", metavar="SUBCOMMAND", required=True
    )
    export = schema_commands.add_parser("export", help="write each event type's JSON Schema to DIR")
    check = schema_commands.add_parser(
        "check", help="exit 1 with a diff if the code cannot read events written with DIR's schemas"
    )
    for sub, run in ((export, cmd_schema_export), (check, cmd_schema_check)):
        sub.add_argument("app", metavar="MODULE:APP")
        sub.add_argument("dir", metavar="DIR")
        sub.set_defaults(run=run)

    dlq = commands.add_parser("dlq", help="list or replay a topic's dead letters")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", metavar="SUBCOMMAND", required=True)
    listing = dlq_commands.add_parser("list", help="show the dead letters of TOPIC")
    replaying = dlq_commands.add_parser(
        "replay", help="publish TOPIC's dead letters again, upcast, once the code can read them"
    )
    replaying.add_argument(
        "--from-start", action="store_true", help="retry every dead letter, not just new ones"
    )
    listing.add_argument("--view", metavar="VIEW", help="only dead letters of VIEW's handlers")
    listing.add_argument(
        "--generation",
        metavar="N",
        type=int,
        help="only dead letters of generation N (a rebuild's: events that failed under its code)",
    )
    for sub, run in ((listing, cmd_dlq_list), (replaying, cmd_dlq_replay)):
        sub.add_argument("app", metavar="MODULE:APP")
        sub.add_argument("topic", metavar="TOPIC")
        _setting_arguments(sub, serving=False)
        sub.set_defaults(run=run)

    reset = commands.add_parser(
        "reset",
        help="make a view start over from its source (workers stopped); other views are untouched",
    )
    reset.add_argument("app", metavar="MODULE:APP")
    reset.add_argument("view", metavar="VIEW")
    _setting_arguments(reset, serving=False)
    reset.set_defaults(run=cmd_reset)

    rebuild = commands.add_parser(
        "rebuild",
        help="rebuild a view from its source into a new generation while workers keep serving",
    )
    rebuild.add_argument("app", metavar="MODULE:APP")
    rebuild.add_argument("view", metavar="VIEW")
    rebuild.add_argument(
        "--from-timestamp",
        metavar="T",
        help="replay source events from T (ms since the epoch, or ISO-8601) instead of the start",
    )
    _setting_arguments(rebuild, serving=False)
    rebuild.add_argument(
        "--url",
        metavar="URL",
        help="a running worker, overriding --web-host and --web-port (default: those)",
    )
    rebuild.add_argument("--status", action="store_true", help="show progress; start nothing")
    rebuild.add_argument(
        "--no-wait", action="store_true", help="start it and return without watching"
    )
    rebuild.add_argument(
        "--accept-failures",
        action="store_true",
        help="switch even though events failed under the new code (they stay dead letters); "
        "on a rebuild under way or refused, accept its failures",
    )
    rebuild.set_defaults(run=cmd_rebuild)

    openapi = commands.add_parser(
        "openapi",
        help="print an app's OpenAPI spec (or the HTTP reference in Markdown)",
        description="Print the OpenAPI spec a worker of the app serves at /openapi.json.",
    )
    openapi.add_argument("app", metavar="MODULE:APP")
    openapi.add_argument("--markdown", action="store_true", help="the HTTP reference instead")
    openapi.set_defaults(run=cmd_openapi)

    demo = commands.add_parser(
        "demo",
        help="run the shop example, driven by generated orders",
        description="Run the shop (belvedere.examples.shop) on one worker and place generated "
        "orders; Ctrl-C stops it, and a second run goes on from the same data.",
    )
    demo.add_argument(
        "--broker", metavar="URL", help="kafka://host:port, or embedded:// (the default)"
    )
    demo.add_argument("--data-dir", metavar="DIR", default="belvedere-data/shop")
    demo.add_argument(
        "--web-port", type=_argument_type(settings.port_flag), metavar="N", default=6066
    )
    demo.add_argument(
        "--orders",
        type=_positive(int),
        metavar="N",
        help="place N orders, wait until each is settled, and stop",
    )
    demo.add_argument(
        "--rate",
        type=_positive(float),
        metavar="R",
        default=20.0,
        help="orders per second (default 20)",
    )
    demo.add_argument("--seed", type=int, default=1, help="which stream of orders (default 1)")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.run(args)
        sys.stdout.flush()  # here, where a closed pipe can still be caught
        return status
    except BrokenPipeError:
        # the reader stopped (``belvedere dlq list ... | head``): end quietly, as a
        # command killed by SIGPIPE would, and keep Python from flushing into it again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except UsageError as exc:
        print(f"belvedere: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (BrokerError, StrictStop) as exc:  # raised in the worker, its traceback logged
        print(f"belvedere: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
