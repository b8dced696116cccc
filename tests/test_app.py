"""belvedere.App's defaults, and that faust sees Belvedere's transport."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import faust
import orjson
import pytest
from faust.serializers.codecs import get_codec
from faust.transport import by_url

import belvedere
from belvedere import settings
from belvedere.agents.declared import DeclaredApp
from belvedere.agents.surface import AgentsApp
from belvedere.cli import UsageError, load_app
from belvedere.compat import faust as compat_faust
from belvedere.streams.embedded import Transport
from belvedere.streams.surface import StreamsApp
from belvedere.views_api.surface import ServedApp
from belvedere.worker import WorkerApp


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "BELVEDERE_BROKER",
        "BELVEDERE_DATA_DIR",
        "BELVEDERE_WEB_HOST",
        "BELVEDERE_WEB_PORT",
        "BELVEDERE_BROKER_SSL_CAFILE",
        "BELVEDERE_BROKER_SSL_CERTFILE",
        "BELVEDERE_BROKER_SSL_KEYFILE",
        "BELVEDERE_BROKER_SASL_MECHANISM",
        "BELVEDERE_BROKER_USERNAME",
        "BELVEDERE_BROKER_PASSWORD",
        "BELVEDERE_REBUILD_PROCESSES",
        "BELVEDERE_BROKER_SESSION_TIMEOUT",
        "BELVEDERE_BROKER_HEARTBEAT_INTERVAL",
    ):
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    app = belvedere.App("shop")
    assert isinstance(app, faust.App)
    assert [u.scheme for u in app.conf.broker] == ["embedded"]
    assert str(app.conf.store) == "rocksdb:"
    assert app.conf.datadir == Path("belvedere-data/shop")
    assert (app.conf.web_host, app.conf.web_bind, app.conf.web_port) == (
        "127.0.0.1",
        "127.0.0.1",
        6066,
    )
    assert str(app.conf.canonical_url) == "http://127.0.0.1:6066"


def test_arguments_override_defaults() -> None:
    app = belvedere.App(
        "shop", broker="kafka://k:9092", data_dir="/srv/shop", web_host="10.0.0.5", web_port=7000
    )
    assert [str(u) for u in app.conf.broker] == ["kafka://k:9092"]
    assert app.conf.datadir == Path("/srv/shop")
    assert (app.conf.web_host, app.conf.web_port) == ("10.0.0.5", 7000)


def test_environment_overrides_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BELVEDERE_BROKER", "kafka://from-env:9092")
    monkeypatch.setenv("BELVEDERE_DATA_DIR", "/env/data")
    monkeypatch.setenv("BELVEDERE_WEB_PORT", "7123")
    app = belvedere.App("shop", broker="kafka://from-code:9092", data_dir="/code", web_port=7000)
    assert [str(u) for u in app.conf.broker] == ["kafka://from-env:9092"]
    assert app.conf.datadir == Path("/env/data")
    assert app.conf.web_port == 7123


def test_verbose_is_off_by_default_and_set_by_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BELVEDERE_VERBOSE", raising=False)
    assert belvedere.App("shop").verbose is False
    assert belvedere.App("shop", verbose=True).verbose is True
    monkeypatch.setenv("BELVEDERE_VERBOSE", "1")  # what belvedere worker --verbose sets
    assert belvedere.App("shop").verbose is True


def test_rebuild_processes_default_to_the_cores_and_take_a_whole_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert belvedere.App("shop").rebuild_processes is None  # as many as usable cores
    assert belvedere.App("shop", rebuild_processes=0).rebuild_processes == 0
    monkeypatch.setenv("BELVEDERE_REBUILD_PROCESSES", "3")
    assert belvedere.App("shop", rebuild_processes=0).rebuild_processes == 3
    monkeypatch.setenv("BELVEDERE_REBUILD_PROCESSES", "many")
    with pytest.raises(ValueError, match=r"rebuild_processes must be a whole number.*'many'"):
        belvedere.App("shop")


def test_a_dead_worker_is_noticed_in_6_s_by_default_and_the_group_settings_are_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = belvedere.App("shop", broker="kafka://k:9092")
    assert (app.conf.broker_session_timeout, app.conf.broker_heartbeat_interval) == (6.0, 0.5)
    app = belvedere.App("shop", broker_session_timeout=30, broker_heartbeat_interval=3)
    assert (app.conf.broker_session_timeout, app.conf.broker_heartbeat_interval) == (30.0, 3.0)
    monkeypatch.setenv("BELVEDERE_BROKER_SESSION_TIMEOUT", "45")
    monkeypatch.setenv("BELVEDERE_BROKER_HEARTBEAT_INTERVAL", "2.5")
    app = belvedere.App("shop", broker_session_timeout=30)
    assert (app.conf.broker_session_timeout, app.conf.broker_heartbeat_interval) == (45.0, 2.5)
    monkeypatch.setenv("BELVEDERE_BROKER_SESSION_TIMEOUT", "soon")
    with pytest.raises(ValueError, match=r"broker_session_timeout must be .* seconds.*'soon'"):
        belvedere.App("shop")
    monkeypatch.setenv("BELVEDERE_BROKER_SESSION_TIMEOUT", "2")
    with pytest.raises(ValueError, match=r"broker_heartbeat_interval \(2.5 s\) must be shorter"):
        belvedere.App("shop")


def test_broker_security_reaches_faust_and_never_shows_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BELVEDERE_BROKER_SASL_MECHANISM", "scram-sha-512")
    monkeypatch.setenv("BELVEDERE_BROKER_USERNAME", "alice")
    monkeypatch.setenv("BELVEDERE_BROKER_PASSWORD", "pw-from-env")
    app = belvedere.App("shop", broker="kafka://k:9092", broker_password="pw-from-code")
    credentials = app.conf.broker_credentials
    assert isinstance(credentials, faust.auth.SASLCredentials)
    assert (credentials.mechanism.value, credentials.username, credentials.password) == (
        "SCRAM-SHA-512",
        "alice",
        "pw-from-env",
    )
    assert app.broker_security.aiokafka_kwargs() == {
        "security_protocol": "SASL_PLAINTEXT",  # SCRAM sends no password: TLS is up to you
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice",
        "sasl_plain_password": "pw-from-env",
        "ssl_context": None,
    }
    shown = [repr(app.broker_security), str(app.broker_security), repr(credentials)]
    shown.append(app.broker_security.describe())
    assert not [text for text in shown if "pw-from" in text]
    with pytest.raises(ValueError, match="broker_credentials"):
        belvedere.App("shop", broker_credentials=credentials)


def test_the_topics_replication_factor_comes_from_the_environment_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BELVEDERE_TOPIC_REPLICATION_FACTOR", raising=False)
    assert belvedere.App("shop").conf.topic_replication_factor == 1  # faust's default
    assert belvedere.App("shop", topic_replication_factor=2).conf.topic_replication_factor == 2
    monkeypatch.setenv("BELVEDERE_TOPIC_REPLICATION_FACTOR", "3")
    app = belvedere.App("shop", topic_replication_factor=2)
    assert app.conf.topic_replication_factor == 3
    monkeypatch.setenv("BELVEDERE_TOPIC_REPLICATION_FACTOR", "three")
    with pytest.raises(ValueError, match=r"topic_replication_factor must be a whole number"):
        belvedere.App("shop")


def test_other_faust_settings_pass_through() -> None:
    app = belvedere.App("shop", topic_partitions=3, store="memory://")
    assert app.conf.topic_partitions == 3
    assert str(app.conf.store) == "memory:"


def test_the_embedded_scheme_is_registered_with_faust() -> None:
    assert by_url("embedded://") is Transport
    assert isinstance(belvedere.App("shop").transport, Transport)


def test_json_goes_through_orjson() -> None:
    value = {"amount": 99.99, "items": [1, 2], "name": "é"}
    assert get_codec("json").dumps(value) == orjson.dumps(value)


def test_faust_decorators_still_work() -> None:
    app = belvedere.App("shop")
    topic = app.topic("orders", partitions=2)

    @app.agent(topic, engine=False)
    async def handle(stream):
        async for _ in stream:
            pass

    @app.timer(1.0)
    async def tick():
        pass

    table = app.Table("totals", default=int, partitions=2, engine=False)
    assert "tests.test_app.handle" in app.agents
    assert table.partitions == 2
    assert app._app_tasks  # the timer is registered


#: faust.App methods belvedere.App overrides on purpose.
OVERRIDES = {
    "_new_transport", "_new_web", "on_init_dependencies", "on_webserver_init",
    "logger", "_abc_impl", "on_rebalance_return", "on_rebalance_end", "agent", "Table",
}  # fmt: skip
#: What belvedere.App adds per instance.
INSTANCE_ATTRIBUTES = [
    "admin_token", "aggregates", "api_token", "batch_tap", "event_topics", "flow_trace",
    "engine", "forward_secret", "http_publishing", "insecure_open", "max_event_bytes",
    "read_token", "sagas", "verbose", "views", "write_token",
]  # fmt: skip


def test_belvedere_adds_to_faust_app_without_shadowing_it(tmp_path: Path) -> None:
    """faust calls its own app.trace() and reads app.tracer: a Belvedere method or attribute
    of the same name broke the worker at its first timer (or rebalance)."""
    plain = faust.App("plain", datadir=str(tmp_path))
    ours = {
        name
        for cls in (belvedere.App, compat_faust.App)
        for name in vars(cls)
        if not name.startswith("__")
    }
    assert {name for name in ours if hasattr(plain, name)} == OVERRIDES
    assert [name for name in INSTANCE_ATTRIBUTES if hasattr(plain, name)] == []
    app = belvedere.App("ours", data_dir=tmp_path)
    assert all(hasattr(app, name) for name in INSTANCE_ATTRIBUTES)


#: The app as each layer's parts take it (they cannot import belvedere.App, above them).
SURFACES = (StreamsApp, AgentsApp, DeclaredApp, ServedApp, WorkerApp)


def test_the_app_has_every_member_its_parts_use(tmp_path: Path) -> None:
    """By name here, and by type under mypy: a member a layer's Protocol declares that the
    App lacks, or has with another type, would fail only where that part first reads it."""
    app = belvedere.App("surfaces", data_dir=tmp_path)
    assert [s.__name__ for s in SURFACES if not isinstance(app, s)] == []
    checked = tmp_path / "surfaces.py"
    names = ", ".join(s.__name__ for s in SURFACES)
    checked.write_text(
        "from belvedere.app import App\n"
        + "".join(f"from {s.__module__} import {s.__name__}\n" for s in SURFACES)
        + "def check(app: App) -> None:\n"
        + f"    surfaces: tuple[{names}] = ({', '.join('app' for _ in SURFACES)},)\n"
    )
    mypy = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--ignore-missing-imports",
         "--cache-dir", str(tmp_path / "cache"), str(checked)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert mypy.returncode == 0, mypy.stdout + mypy.stderr


def test_a_topic_declares_its_producers_partitioner_and_its_views_follow_it() -> None:
    app = belvedere.App("partitioners")

    class Placed(belvedere.Event, key="order_id"):
        order_id: str

    class Place(belvedere.Command, key="order_id"):
        order_id: str

    class Order(belvedere.Aggregate):
        placed: bool = False

    with pytest.raises(ValueError, match="partitioner must be one of murmur2, crc32, any"):
        app.event_topic("bad", Placed, partitioner="random")
    crc = app.event_topic("crc", Placed, partitions=4, partitioner="crc32")
    anyhow = app.event_topic("anyhow", Placed, partitions=4, partitioner="any")
    by_crc, rekeyed = app.view("by-crc", value=int), app.view("rekeyed", value=int)
    app.projection(crc, view=by_crc, events=[Placed])(lambda view, event: None)
    app.projection(anyhow, view=rekeyed, events=[Placed])(lambda view, event: None)
    assert by_crc.partitioner == "crc32" and by_crc.partition_of("order-1", 4) == 3
    assert rekeyed.partitioner == "murmur2" and rekeyed.partition_of("order-1", 4) == 2
    projection = app.engine.projections["rekeyed"]
    assert projection.repartition is not None
    assert projection.by(Placed(order_id="order-9")) == "order-9"
    assert crc.partition_for(b"order-1") == 3 and anyhow.partition_for(b"order-1") is None

    commands = app.event_topic("commands", Place, partitions=4)
    with pytest.raises(ValueError, match="must hash keys alike"):
        app.aggregate(Order, events=crc, commands=commands)


def test_the_settings_table_in_docs_is_the_one_the_declarations_give() -> None:
    """docs/operations.md's settings table is generated: if this fails, regenerate it with
    python -c 'from belvedere.settings import markdown_table; print(markdown_table())'."""
    text = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    section = text.split("\n## Settings\n", 1)[1]
    table = "".join(line + "\n" for line in section.splitlines() if line.startswith("|"))
    assert table == settings.markdown_table()
    assert textwrap.indent(settings.rst_table(), "    ").strip() in (belvedere.App.__doc__ or "")


def test_a_flag_wins_over_the_environment_which_wins_over_the_keyword(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI hands its flags to the App being imported without writing os.environ."""
    (tmp_path / "flagged_app.py").write_text(
        "import belvedere\napp = belvedere.App('flagged', web_port=7000, strict=False)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("BELVEDERE_WEB_PORT", "7001")
    monkeypatch.delenv("BELVEDERE_STRICT", raising=False)
    before = dict(os.environ)
    app = load_app("flagged_app:app", {"web_port": 7002, "strict": True, "web_host": None})
    assert (app.conf.web_port, app.strict, app.conf.web_host) == (7002, True, "127.0.0.1")
    assert dict(os.environ) == before
    assert belvedere.App("flagged").conf.web_port == 7001  # the flags were for that import only
    monkeypatch.delenv("BELVEDERE_WEB_PORT")
    assert belvedere.App("flagged", web_port=7000).conf.web_port == 7000
    with pytest.raises(ValueError, match=r"web_port must be a port number .*'http'"):
        belvedere.App("flagged", web_port="http")


def test_flags_reach_an_app_the_module_builds_when_it_is_first_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module may build its App lazily (a module ``__getattr__``, as bench/ does): the
    flags must reach it too, not only an App built while the module is imported."""
    (tmp_path / "lazy_app.py").write_text(
        "import belvedere\n\n"
        "def __getattr__(name):\n"
        "    if name != 'app':\n"
        "        raise AttributeError(name)\n"
        "    return belvedere.App('lazy')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("BELVEDERE_WEB_PORT", raising=False)
    assert load_app("lazy_app:app", {"web_port": 7003}).conf.web_port == 7003
    with pytest.raises(UsageError, match="has no attribute 'other'"):
        load_app("lazy_app:other")


def test_a_misspelt_keyword_is_refused_with_the_name_it_was_close_to() -> None:
    """faust takes unknown keywords and ignores them: a typo would silently keep a default."""
    with pytest.raises(TypeError, match=r"'web_prot' \(did you mean 'web_port'\?\)"):
        belvedere.App("shop", web_prot=7000)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'colour'$"):
        belvedere.App("shop", colour="blue")
    parameters = inspect.signature(belvedere.App).parameters
    assert {s.name for s in settings.SETTINGS} <= set(parameters)
    assert parameters["web_port"].annotation == "int | None"
    assert parameters["rebuild_processes"].annotation == "int | None"
