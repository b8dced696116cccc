"""`belvedere` on the command line: its help, and one clear line for each usage mistake."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from belvedere import settings
from belvedere.cli import _progress_line, build_parser
from belvedere.streams.embedded import Log
from belvedere.views_api.identity import APP_HEADER
from tests.support.worker import REPO, Worker, free_port, run_cli, wait_for


def one_line_error(result) -> str:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("belvedere: ")
    return lines[0]


def test_help_lists_the_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "worker" in result.stdout
    worker_help = run_cli("worker", "--help")
    for flag in ("--broker", "--web-port", "--data-dir", "MODULE:APP", "--broker-ssl-cafile"):
        assert flag in worker_help.stdout
    assert "--broker-password" not in worker_help.stdout  # the environment's, never a flag's


def test_the_flags_are_the_declared_settings_and_a_bad_one_is_one_line() -> None:
    parser = build_parser()
    for setting in settings.SETTINGS:
        if setting.flag is None:
            continue
        option = setting.flag.option(setting.name)
        worker = parser.parse_args(
            ["worker", "m:app", option, *(["1"] * bool(setting.flag.metavar))]
        )
        assert getattr(worker, setting.name) is not None, option
        rebuild = parser.parse_known_args(["rebuild", "m:app", "v", option, "1"])[0]
        assert (getattr(rebuild, setting.name, None) is not None) == setting.flag.reach, option
    line = one_line_error(run_cli("worker", "examples.hello.app:app", "--web-body-timeout", "0"))
    assert "web_body_timeout must be a number of seconds above 0, not 0.0" in line


def test_missing_module_names_the_working_directory(tmp_path: Path) -> None:
    line = one_line_error(run_cli("worker", "no_such_module:app", "--data-dir", str(tmp_path)))
    assert "cannot import 'no_such_module'" in line
    assert f"in the working directory ({REPO})" in line and "PYTHONPATH" in line


def test_a_file_name_is_taken_as_its_module(tmp_path: Path) -> None:
    """``examples/hello/app.py:app`` means ``examples.hello.app:app``; a file that is not
    there gets the module spelling to use."""
    result = run_cli("openapi", "examples/hello/app.py:app")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["paths"]
    line = one_line_error(run_cli("worker", "bank.py:app", "--data-dir", str(tmp_path)))
    assert "'bank.py' is a file name" in line and "pass bank:app" in line


def test_a_data_dir_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"  # a file where a folder is wanted: refused even for root
    blocker.write_text("")
    for command in (["worker", "examples.hello.app:app"], ["reset", "tests.apps.ledger:app", "b"]):
        line = one_line_error(
            run_cli(*command, "--data-dir", str(blocker / "data"), env={"LEDGER_NAME": "x"})
        )
        assert f"the data dir {blocker / 'data'} is not writable" in line
        assert "pass a --data-dir (or BELVEDERE_DATA_DIR)" in line


def test_module_that_fails_to_import_names_the_error(tmp_path: Path) -> None:
    line = one_line_error(run_cli("worker", "tests.apps.broken:app", "--data-dir", str(tmp_path)))
    assert "importing 'tests.apps.broken' failed" in line
    assert "this_module_does_not_exist" in line
    assert "broken.py:3" in line


def test_app_not_found(tmp_path: Path) -> None:
    line = one_line_error(
        run_cli(
            "worker",
            "tests.apps.counter:nope",
            "--data-dir",
            str(tmp_path),
            env={"COUNTER_NAME": "x"},
        )
    )
    assert "has no attribute 'nope'" in line


def test_object_that_is_not_an_app(tmp_path: Path) -> None:
    line = one_line_error(
        run_cli("worker", "tests.apps.not_an_app:app", "--data-dir", str(tmp_path))
    )
    assert "not a belvedere.App" in line


def test_an_agent_on_a_projection_source_is_refused(tmp_path: Path) -> None:
    line = one_line_error(run_cli("worker", "tests.apps.starved:app", "--data-dir", str(tmp_path)))
    assert "agent" in line and "'starved-seen'" in line and "view 'latest'" in line


def test_views_without_standby_replicas_are_refused(tmp_path: Path) -> None:
    args = ("worker", "tests.apps.no_standbys:app", "--data-dir", str(tmp_path))
    line = one_line_error(run_cli(*args))
    assert "table_standby_replicas=0" in line and "round-robin" in line


def test_rebuild_with_no_worker_running_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    env = {"LEDGER_NAME": "x"}
    line = one_line_error(
        run_cli("rebuild", "tests.apps.ledger:app", "balances", "--url", url, env=env)
    )
    assert "no worker answers" in line
    line = one_line_error(
        run_cli("rebuild", "tests.apps.ledger:app", "nope", "--url", url, env=env)
    )
    assert "no view 'nope'" in line
    bad = run_cli(
        "rebuild", "tests.apps.ledger:app", "balances", "--from-timestamp", "soon", env=env
    )
    assert "--from-timestamp" in one_line_error(bad)


def test_the_rebuild_progress_line_says_starting_until_the_history_is_known() -> None:
    report = {"view": "balances", "generation": 1, "building": 2, "state": "rebuilding"}
    starting = _progress_line({**report, "done": 0, "total": 0, "rate": 0.0, "eta": None})
    assert "starting" in starting and "%" not in starting  # not "100.0% 0/0"
    halfway = _progress_line({**report, "done": 500, "total": 1000, "rate": 250.0, "eta": 2.0})
    assert "[###############               ]  50.0% 500/1,000 events  250 ev/s  ETA 2s" in halfway


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = one_line_error(
            run_cli(
                "worker",
                "examples.hello.app:app",
                "--web-port",
                str(port),
                "--data-dir",
                str(tmp_path),
            )
        )
    assert f"web port {port} on 127.0.0.1 is not available" in line


def test_unreachable_kafka_broker(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    line = one_line_error(
        run_cli(
            "worker",
            "examples.hello.app:app",
            "--broker",
            f"kafka://127.0.0.1:{port}",
            "--data-dir",
            str(tmp_path),
        )
    )
    assert f"cannot reach the Kafka broker at 127.0.0.1:{port}" in line


def test_broker_security_mistakes(tmp_path: Path) -> None:
    """Each is one line, before anything connects, and none shows the password."""
    worker = ["worker", "examples.hello.app:app", "--broker", "kafka://127.0.0.1:9"]
    login = {"BELVEDERE_BROKER_USERNAME": "alice", "BELVEDERE_BROKER_PASSWORD": "pw-not-shown"}
    missing = tmp_path / "missing.pem"
    mistakes = [
        (["--broker-sasl-mechanism", "GSSAPI"], login, "SASL mechanism 'GSSAPI' is not supported"),
        (["--broker-sasl-mechanism", "SCRAM-SHA-512"], {}, "needs a user name and a password"),
        (["--broker-sasl-mechanism", "PLAIN"], login, "SASL PLAIN sends the password as it is"),
        (["--broker-ssl-cafile", str(missing)], {}, f"TLS CA file {missing} does not exist"),
    ]
    for flags, env, expected in mistakes:
        line = one_line_error(run_cli(*worker, "--data-dir", str(tmp_path), *flags, env=env))
        assert expected in line
        assert "pw-not-shown" not in line


def test_every_command_reaches_the_worker_its_flags_name(tmp_path: Path) -> None:
    """A worker on a port other than the default: ``rebuild``, ``reset`` and ``dlq`` reach it
    (or its broker) with the flags and variables ``worker`` took, refuse a worker of another
    app, and say to stop the workers where they need them stopped; a second worker on its
    data dir is told which process holds it."""
    name, data = "reach", tmp_path / "data"
    env = {"LEDGER_NAME": name}
    worker = Worker("tests.apps.ledger:app", broker_url="embedded://", data_dir=data, env=env)
    worker.start()
    port = str(worker.port)
    try:
        worker.wait_until("/ready", lambda r: r.get("ready"), what="the worker ready")
        pid = worker.proc.pid
        with urllib.request.urlopen(f"{worker.url}/health", timeout=10) as answer:
            assert answer.headers[APP_HEADER] == name
            assert json.loads(answer.read())["app"] == name
        # an index lookup without its value: a JSON 404 saying what is missing
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(f"{worker.url}/views/balances/by/owner", timeout=10)
        assert raised.value.code == 404 and raised.value.headers[APP_HEADER] == name
        assert json.loads(raised.value.read()) == {
            "error": "not-found",
            "detail": "an index lookup needs a value: GET /views/balances/by/owner/{value}",
        }

        status = ("rebuild", "tests.apps.ledger:app", "balances", "--status")
        by_flag = run_cli(*status, "--web-port", port, env=env)
        by_env = run_cli(*status, env={**env, "BELVEDERE_WEB_PORT": port})
        for result in (by_flag, by_env):
            assert result.returncode == 0, result.stderr
            assert result.stdout == "view balances: generation 1, no rebuild running\n"

        other = one_line_error(run_cli(*status, "--web-port", port, env={"LEDGER_NAME": "other"}))
        assert other == (
            f"belvedere: the worker at http://127.0.0.1:{port} runs app {name!r}, not 'other': "
            "pass the --web-port (and --web-host) its workers were started with, "
            "or set BELVEDERE_WEB_PORT"
        )

        reset = ("reset", "tests.apps.ledger:app", "balances", "--data-dir", str(data))
        for result in (
            run_cli(*reset, "--web-port", port, env=env),
            run_cli(*reset, env={**env, "BELVEDERE_WEB_PORT": port}),
        ):
            assert one_line_error(result) == (
                f"belvedere: a worker of {name!r} runs at http://127.0.0.1:{port}: stop the "
                "workers first, then run belvedere reset again"
            )

        assert one_line_error(run_cli(*reset, env=env)) == (  # its port not given: its data dir
            f"belvedere: the data dir {data} is in use by process {pid}: stop the workers on "
            "this data dir first (belvedere reset opens what they hold), then run it again"
        )

        dlq = ("dlq", "list", "tests.apps.ledger:app", f"{name}-movements", "--data-dir", str(data))
        line = one_line_error(run_cli(*dlq, env=env))
        assert f"is in use by process {pid}: stop the workers on this data dir first" in line

        second = ("worker", "tests.apps.ledger:app", "--web-port", str(free_port()))
        line = one_line_error(run_cli(*second, "--data-dir", str(data), env=env))
        assert line == (
            f"belvedere: the data dir {data} is in use by process {pid}: another worker runs "
            "on this data dir; stop it, or give this one another --data-dir"
        )
    finally:
        worker.stop()
    listed = run_cli(*dlq, env={**env, "BELVEDERE_WEB_PORT": port})
    assert listed.returncode == 0 and "no dead letters" in listed.stdout, listed.stderr
    reset_now = run_cli(*reset, "--web-port", port, env=env)
    assert reset_now.returncode == 0 and "reset view balances" in reset_now.stdout


def test_a_listing_cut_short_by_its_reader_ends_quietly(tmp_path: Path) -> None:
    """``belvedere dlq list ... | head``: the reader has gone; no BrokenPipeError."""
    listing = [
        "dlq",
        "list",
        "tests.apps.ledger:app",
        "pipe-movements",
        "--data-dir",
        str(tmp_path),
    ]
    read, write = os.pipe()
    os.close(read)  # gone before the command writes
    try:
        result = subprocess.run(
            [sys.executable, "-m", "belvedere.cli", *listing],
            cwd=REPO,
            env={**os.environ, "LEDGER_NAME": "pipe"},
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write)
    assert result.returncode == 141  # as for a command killed by SIGPIPE
    assert result.stderr == ""


def test_topic_with_another_partition_count_is_refused_naming_the_topic(
    tmp_path: Path,
) -> None:
    log = Log.acquire(tmp_path / "data" / "broker")
    log.create_topic("mismatch-events", 2)
    log.release()
    result = run_cli(
        "worker",
        "tests.apps.counter:app",
        "--web-port",
        str(free_port()),
        "--data-dir",
        str(tmp_path / "data"),
        env={"COUNTER_NAME": "mismatch"},
    )
    assert one_line_error(result) == (
        "belvedere: topic 'mismatch-events' is declared with 4 partition(s), but has 2 in the "
        f"embedded broker at {tmp_path / 'data'}: a topic's partition count cannot change; "
        "declare 2 again, or start with an empty --data-dir"
    )


def test_bad_flag_value_is_one_line() -> None:
    result = run_cli("worker", "examples.hello.app:app", "--web-port", "http")
    assert result.returncode == 2
    assert "not a port number: 'http'" in result.stderr
    assert "Traceback" not in result.stderr


def test_readme_example_serves_its_table_and_says_so_in_one_line(tmp_path: Path) -> None:
    """The quick start's app: its own timer feeds the topic, the table fills, HTTP serves it;
    the worker says where in one line, without faust's start-up lines or spinner."""
    data = tmp_path / "data"
    worker = Worker("examples.hello.app:app", broker_url="embedded://", data_dir=data, env={})
    where = data.resolve()
    ready = (
        f"hello ready at http://127.0.0.1:{worker.port}/ — views: visits-per-page; "
        f"broker: embedded ({where / 'broker'}); data: {where}"
    )
    worker.start()
    try:
        first = worker.wait_until("/visits/", lambda v: sum(v.values()) >= 3, what="visits counted")
        assert set(first) <= {"/", "/pricing", "/docs", "/blog", "/about"}
        wait_for(lambda: ready in worker.logfile.read_text(), timeout=30, what="the ready line")
        assert worker.stop(sig=signal.SIGINT) == 0  # Ctrl-C
        said = worker.logfile.read_text()
        assert said.count(ready) == 1, said
        for banner in ("Starting...", "[^Worker]", "Highwater", "restored", "-INT-"):
            assert banner not in said, said
        # Started again, it continues from its table rather than from zero; at --loglevel
        # warning, no spinner's escape codes either.
        worker.args = ["--loglevel", "warning"]
        worker.start()
        worker.wait_until(
            "/visits/",
            lambda v: sum(v.values()) > sum(first.values()),
            what="counts to grow past the first run",
        )
        wait_for(lambda: ready in worker.logfile.read_text(), timeout=30, what="the ready line")
        assert worker.stop() == 0
        said = worker.logfile.read_text()
        assert "\x1b" not in said and "OK ^" not in said and "[INFO]" not in said, repr(said)
    finally:
        worker.kill()


def test_a_bad_demo_flag_is_one_line() -> None:
    bad = run_cli("demo", "--rate", "0")
    assert bad.returncode == 2 and "must be above 0" in bad.stderr


def test_the_http_reference_in_docs_is_the_one_the_spec_gives() -> None:
    """docs/http-reference.md is generated: if this fails, regenerate it with the command
    its header gives."""
    result = run_cli("openapi", "belvedere.examples.shop:app", "--markdown")
    assert result.returncode == 0, result.stderr
    assert (REPO / "docs" / "http-reference.md").read_text() == result.stdout
    spec = run_cli("openapi", "belvedere.examples.shop:app")
    assert json.loads(spec.stdout)["paths"]["/commands/{name}"]["post"]["responses"]["202"]
