"""Who may ask what over HTTP: scopes and their tokens, what may be published, the refusal
to start an open door, faust's own routes, and the keys forwards are signed with."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

import belvedere
from belvedere.views_api.auth import ADMIN, OPEN, READ, SCOPES, WRITE
from belvedere.views_api.forwarding import forward_key
from belvedere.views_api.publishing import event_check, publishable_topics, refused_topic
from belvedere.views_api.routes import ROUTES
from tests.support.brokers import Broker
from tests.support.http import Answer, call
from tests.support.worker import Worker, run_cli, wait_for
from tests.test_views_api import APP, deposit

EMBEDDED_ONLY = pytest.mark.parametrize("broker", ["embedded"], indirect=True)
TOKENS = {READ: "rd-4c1f0a", WRITE: "wr-9e2b7d", ADMIN: "ad-51aa3c"}
WRONG = "not-a-token-77"


def _concrete(path: str, topic: str) -> str:
    """A path of ``ROUTES`` made callable: answered quickly, changing nothing."""
    for name, value in {
        "{view}": "balances",
        "{key}": "no-such-key",
        "{index}": "owner",
        "{value}": "nobody",
        "{topic}": topic,
        "{name}": "NoSuchCommand",
        "{type}": "NoSuchType",
        "{id}": "x",
    }.items():
        path = path.replace(name, value)
    if path.endswith("/changes"):
        path += "?from=nowhere"  # 400 once let in, rather than a stream that stays open
    if path.endswith("/rebuild"):
        path = path.replace("/balances/", "/no-such-view/")  # 404 once let in
    return path


def _opens(token_scope: str | None, scope: str) -> bool:
    if scope == OPEN:
        return True
    return token_scope is not None and SCOPES.index(token_scope) >= SCOPES.index(scope)


@EMBEDDED_ONLY
def test_every_route_needs_a_token_of_its_scope_or_above_and_says_so(
    broker: Broker, workers: Callable[..., Worker], unique_name: str
) -> None:
    broker.create_ledger_topics(unique_name)
    env = {"LEDGER_NAME": unique_name} | {
        f"BELVEDERE_{scope.upper()}_TOKEN": token for scope, token in TOKENS.items()
    }
    worker = workers(APP, env).start()
    wait_for(lambda: call(worker.url + "/ready").status == 200, timeout=90, what="ready")
    topic = f"{unique_name}-movements"

    def ask(method: str, path: str, token: str | None) -> Answer:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = {"not": "an envelope"} if method == "POST" else None
        return call(worker.url + path, method, body, headers=headers)

    for method, route, scope in ((r.method, r.path, r.scope) for r in ROUTES):
        path = _concrete(route, topic)
        for token_scope, token in [(None, None), (None, WRONG), *TOKENS.items()]:
            answer = ask(method, path, token)
            where = (method, path, token_scope, token and token[:2], answer.raw[:200])
            if _opens(token_scope, scope):
                assert answer.status not in (0, 401, 403, 500), where
                continue
            assert answer.status == (401 if token is None else 403), where
            assert answer.body["error"] in ("unauthorized", "forbidden"), where
            challenge = answer.headers["WWW-Authenticate"]
            assert challenge.startswith("Bearer ") and f'scope="{scope}"' in challenge, where

    # the tokens that open write publish; a read token does not
    posted = call(f"{worker.url}/events/{topic}", "POST", deposit("a-1", 5))
    assert posted.status == 401, posted.raw
    for token, status in ((TOKENS[READ], 403), (TOKENS[WRITE], 201), (TOKENS[ADMIN], 201)):
        headers = {"Authorization": f"Bearer {token}"}
        assert call(f"{worker.url}/events/{topic}", "POST", deposit("a-1", 5), headers).status == (
            status
        )

    # an app's own faust page is read (GET); faust's built-in routes are not there at all
    assert call(worker.url + "/state").status == 401
    admin = {"Authorization": f"Bearer {TOKENS[ADMIN]}"}
    for path in ("/router/", "/table/", f"/table/{unique_name}-balances/", "/graph/", "/stats/"):
        for headers in ({}, admin):
            gone = call(worker.url + path, headers=headers)
            assert gone.status == 404 and gone.body["error"], (path, gone.raw)

    # the spec declares the scheme and, per operation, the scope ROUTES gives it
    spec = call(worker.url + "/openapi.json").body
    assert spec["components"]["securitySchemes"] == {
        "bearer": {**spec["components"]["securitySchemes"]["bearer"], "type": "http"}
    }
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    declared = {
        (method.upper(), path): operation["security"]
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
    }
    for method, route, scope in ((r.method, r.path, r.scope) for r in ROUTES):
        if route == "/":
            continue  # the status page, not an API operation
        assert declared[(method, route)] == ([] if scope == OPEN else [{"bearer": [scope]}])
    assert spec["paths"]["/events/{topic}"]["post"]["parameters"][0]["schema"]["enum"] == sorted(
        f"{unique_name}-{t}" for t in ("movements", "notes", "orders")
    )

    # the status page asks for the token; what it reads takes the read token
    page = call(worker.url + "/")
    assert page.status == 200 and b'id="token-form"' in page.raw
    assert b"sessionStorage" in page.raw and b"Authorization" in page.raw
    assert call(worker.url + "/views").status == 401
    views = call(worker.url + "/views", headers={"Authorization": f"Bearer {TOKENS[READ]}"})
    assert views.status == 200 and "balances" in {v["name"] for v in views.body["views"]}

    logged = worker.logfile.read_text()
    assert not [t for t in (*TOKENS.values(), WRONG) if t in logged]


@EMBEDDED_ONLY
def test_only_declared_topics_and_types_are_published_over_http(
    broker: Broker, ledger: Worker, unique_name: str
) -> None:
    ledger.start()
    wait_for(lambda: call(ledger.url + "/ready").status == 200, timeout=90, what="ready")
    tally = {"eventType": "Tallied", "eventVersion": 1, "data": {"n": 3}}
    refused = call(f"{ledger.url}/events/{unique_name}-tallies", "POST", tally)
    assert refused.status == 403 and refused.body["error"] == "not-publishable", refused.raw
    assert "http_publish" in refused.body["detail"]
    assert call(f"{ledger.url}/events/{unique_name}-movements", "POST", deposit("x", 1)).status == (
        201
    )


class Opened(belvedere.Event, key="account"):
    account: str


class Noted(belvedere.Event, key="account"):
    account: str


class Open(belvedere.Command, key="account"):
    account: str


class Account(belvedere.Aggregate):
    open: bool = False

    def opened(self, event: Opened) -> None:
        self.open = True


def _with_an_aggregate(where: Path, **publish: object) -> belvedere.App:
    """An app with an aggregate, and a topic ``feed`` that also carries one of its events."""
    app = belvedere.App("access", data_dir=where)
    events = app.event_topic("account-events", Opened, partitions=2, http_publish=True)
    commands = app.event_topic("account-commands", Open, partitions=2, http_publish=True)
    app.event_topic("feed", Opened, Noted, partitions=2, **publish)  # type: ignore[arg-type]
    app.event_topic("closed", Noted, partitions=2)
    app.aggregate(Account, events=events, commands=commands)
    return app


def test_aggregates_topics_and_events_stay_refused_unless_opened_explicitly(
    tmp_path: Path,
) -> None:
    app = _with_an_aggregate(tmp_path / "a", http_publish=True)
    assert "not open to HTTP" in (refused_topic(app, "closed") or "")
    assert "aggregate's topic" in (refused_topic(app, "account-events") or "")
    assert "aggregate's topic" in (refused_topic(app, "account-commands") or "")
    assert refused_topic(app, "feed") is None
    assert event_check(app, "feed")(Noted) is None
    assert "aggregate's event" in (event_check(app, "feed")(Opened) or "")
    assert publishable_topics(app) == ["feed"]

    listed = _with_an_aggregate(tmp_path / "b", http_publish=[Noted])
    assert "not among" in (event_check(listed, "feed")(Opened) or "")
    with pytest.raises(ValueError, match="give True or event types it carries"):
        listed.event_topic("stray", Noted, http_publish=[Opened])

    owned = _with_an_aggregate(tmp_path / "c", http_publish=True, http_publish_owned=True)
    assert event_check(owned, "feed")(Opened) is None
    with pytest.raises(ValueError, match="needs http_publish"):
        owned.event_topic("more", Noted, http_publish_owned=True)


def test_a_worker_other_machines_reach_needs_a_token_for_every_scope(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # refused before anything binds: one line, exit status 2
    result = run_cli(
        "worker",
        APP,
        "--web-host",
        "0.0.0.0",
        "--data-dir",
        str(tmp_path / "cli"),
        env={"LEDGER_NAME": "exposed"},
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "0.0.0.0" in lines[0] and "--insecure-open" in lines[0], lines
    assert "read/write/admin" in lines[0]
    # --insecure-open lets it past that check, to the next one (the port, taken here: it
    # never listens)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run_cli(
            "worker",
            APP,
            "--web-host",
            "0.0.0.0",
            "--web-port",
            port,
            "--insecure-open",
            "--data-dir",
            str(tmp_path / "cli"),
            env={"LEDGER_NAME": "exposed"},
        )
    assert result.returncode == 2 and f"web port {port} on 0.0.0.0" in result.stderr, result.stderr

    def app(name: str, **settings: object) -> belvedere.App:
        return belvedere.App(name, data_dir=tmp_path / name, web_host="0.0.0.0", **settings)  # type: ignore[arg-type]

    with pytest.raises(ValueError, match="admin scope:"):
        app("api-only", api_token="t1").check()
    app("api-admin", api_token="t1", admin_token="t2").check()
    app("three", read_token="t1", write_token="t2", admin_token="t3").check()
    with pytest.raises(ValueError, match="write scope:"):
        app("no-write", read_token="t1", admin_token="t3").check()
    belvedere.App("loopback", data_dir=tmp_path / "loopback").check()

    # --insecure-open (insecure_open): it starts, saying so once
    opened = app("opened", insecure_open=True)
    opened.check()
    with caplog.at_level(logging.WARNING, logger="belvedere.app"):
        opened.on_webserver_init(opened.web)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "insecure_open" in warnings[0].getMessage()
    unchecked = app("unchecked")  # started without the CLI's check: still refused
    with pytest.raises(RuntimeError, match="--insecure-open"):
        unchecked.on_webserver_init(unchecked.web)


def test_workers_sharing_tokens_or_a_secret_sign_forwards_alike(tmp_path: Path) -> None:
    def key(name: str, **settings: object) -> bytes:
        return forward_key(belvedere.App("keys", data_dir=tmp_path / name, **settings))  # type: ignore[arg-type]

    assert key("a", api_token="t") == key("b", api_token="t") != key("c", api_token="u")
    assert key("d", forward_secret="s", api_token="t") == key("e", forward_secret="s")
    assert key("f") == key("g") != key("h", admin_token="t")
