"""The status page at ``/``, in a real (headless) browser."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.brokers import Broker
from tests.support.chromium import Browser
from tests.support.http import call
from tests.support.worker import Worker, wait_for
from tests.test_commands import DESK_TOPICS, pay_orders, serving
from tests.test_projections import movements, total_ops
from tests.test_views_api import deposit

SHOWN = """Object.fromEntries([...document.querySelectorAll('section.view')].map(s => [
  s.dataset.view,
  {keys: s.querySelector('.keys').textContent,
   states: [...s.querySelectorAll('tbody .state')].map(e => e.textContent)}]))"""
#: The page's request for a token (its message), or null while it asks for none.
ASKED = """document.getElementById('token-form').hidden ? null
  : document.getElementById('token-message').textContent"""
GIVE = """document.getElementById('token').value = '%s';
  document.getElementById('token-form').requestSubmit(); true"""
EMBEDDED_ONLY = pytest.mark.parametrize("broker", ["embedded"], indirect=True)


def test_the_status_page_shows_every_view_and_keeps_itself_up_to_date(
    broker: Broker, ledger: Worker, unique_name: str, chromium: str, test_output: Path
) -> None:
    records, fold = movements(600, accounts=30, seed=61)
    broker.produce(f"{unique_name}-movements", records)
    ledger.start()
    ledger.wait_until("/state", lambda s: s["ready"] and total_ops(s) == 600, what="the fold")
    page = call(ledger.url + "/")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")

    browser = Browser(chromium, ledger.url + "/")
    try:
        shown = wait_for(
            lambda: (
                (v := browser.evaluate(SHOWN))
                and v.get("balances", {}).get("keys") == str(len(fold))
                and v
            ),
            timeout=30,
            what="the page showing the balances view",
        )
        assert set(shown) == {"activity", "balances", "notes", "owners", "revenue", "tallies"}
        assert all(v["states"] == ["serving"] * 4 for v in shown.values()), shown
        shot = browser.screenshot(test_output / f"status-page-{broker.name}.png")
        assert shot.stat().st_size > 10_000

        browser.evaluate("window.loadedOnce = true")
        posted = call(
            f"{ledger.url}/events/{unique_name}-movements",
            "POST",
            [deposit(f"new-{i}", 5) for i in range(5)],
        )
        assert posted.status == 201
        wait_for(
            lambda: browser.evaluate(SHOWN)["balances"]["keys"] == str(len(fold) + 5),
            timeout=30,
            what="the page showing the 5 new rows by itself",
        )
        assert browser.evaluate("window.loadedOnce") is True  # updated in place, not reloaded
    finally:
        browser.close()


@EMBEDDED_ONLY
def test_the_status_page_asks_for_a_read_token_once_and_says_when_it_is_refused(
    broker: Broker, ledger: Worker, chromium: str
) -> None:
    ledger.env["BELVEDERE_READ_TOKEN"] = "page-token-3e1"
    ledger.start()
    wait_for(lambda: call(ledger.url + "/ready").status == 200, timeout=90, what="ready")
    browser = Browser(chromium, ledger.url + "/")
    try:
        asked = wait_for(
            lambda: browser.evaluate(ASKED), timeout=30, what="the page asking for a token"
        )
        assert "401" in asked, asked
        browser.evaluate(GIVE % "wrong")
        wait_for(lambda: "403" in (browser.evaluate(ASKED) or ""), timeout=30, what="a refusal")
        browser.evaluate(GIVE % "page-token-3e1")
        shown = wait_for(
            lambda: (v := browser.evaluate(SHOWN)) and "balances" in v and v,
            timeout=30,
            what="the views, with the token",
        )
        assert shown["balances"]["states"] == ["serving"] * 4
        assert browser.evaluate("sessionStorage.getItem('belvedere-read-token')") == (
            "page-token-3e1"
        )
        assert browser.evaluate("document.getElementById('token-form').hidden") is True
    finally:
        browser.close()


#: What each card of the page says: where it is (the app's own or folded away), its facts.
CARDS = """Object.fromEntries([...document.querySelectorAll('section.view')].map(s => [
  s.dataset.view,
  {folded: !!s.closest('details#internal-views'),
   facts: Object.fromEntries([...s.querySelectorAll('dd')].map(d => [d.className, d.textContent.trim()])),
   rows: s.querySelector('a.rows').getAttribute('href'),
   columns: [...s.querySelectorAll('thead th')].map(t => t.textContent.trim())}]))"""
ORDER = "[...document.querySelectorAll('#views > section.view')].map(s => s.dataset.view)"
FOLDED = """[document.getElementById('internal-views').open,
  document.querySelector('#internal-views > summary').textContent]"""


@EMBEDDED_ONLY
def test_the_status_page_puts_the_apps_views_first_and_tells_each_ones_story(
    broker: Broker,
    workers: Callable[..., Worker],
    unique_name: str,
    chromium: str,
    test_output: Path,
) -> None:
    for topic in DESK_TOPICS:  # as tests/test_commands.py's desk
        broker.create_topic(f"{unique_name}-{topic}", 2 if topic == "notifications" else 4)
    desk = serving(workers("tests.apps.order_desk:app", {"DESK_NAME": unique_name}))
    pay_orders(desk, ["o-1", "o-2"])
    views = desk.wait_until(  # the last event's time is told once it is checkpointed
        "/views",
        lambda b: any(v["name"] == "order-status" and v["lastEvent"] for v in b["views"]),
        what="the last event of order-status",
    )
    listed = {v["name"]: v for v in views["views"]}
    status = listed["order-status"]
    assert status["internal"] is False and status["sourceTopics"] == [f"{unique_name}-order-events"]
    assert status["eventsProcessed"] >= 4 and isinstance(status["lastEvent"], int)
    assert status["lag"] == 0
    assert {n for n, v in listed.items() if v["internal"]} == {
        n for n in listed if n.startswith(("aggregate-", "reactor-"))
    } and len(listed) > 4

    page = call(desk.url + "/").raw.decode()  # without JavaScript: a line saying so
    assert re.search(r"<noscript>.*JavaScript is off.*</noscript>", page, re.S)
    assert '<span id="live" hidden>' in page  # no "updated never"

    browser = Browser(chromium, desk.url + "/")
    try:
        wait_for(
            lambda: browser.evaluate(ORDER) == ["order-status", "receipts"],
            timeout=30,
            what="the app's two views first",
        )
        opened, summary = browser.evaluate(FOLDED)
        assert opened is False and summary.startswith(f"{len(listed) - 2} internal views")
        cards = browser.evaluate(CARDS)
        assert set(cards) == set(listed)
        assert all(c["folded"] for n, c in cards.items() if listed[n]["internal"])
        card = cards["order-status"]
        facts = card["facts"]
        assert facts["view-sources"] == f"{unique_name}-order-events"
        assert facts["view-lag"] == "0"
        assert facts["view-last-event"].endswith("ago"), facts
        assert facts["view-dead-letters"] == "—" or facts["view-dead-letters"].isdigit()
        assert facts["view-workers"] == f"{desk.url} · generation 1"  # once, not per partition
        assert facts["view-rebuild"].startswith("none")
        assert card["rows"] == "/views/order-status?limit=20"
        assert "worker" not in card["columns"] and "generation" not in card["columns"]
        assert card["columns"][2].startswith("position")
        assert browser.evaluate("document.getElementById('legend').hidden") is False
        assert browser.evaluate("document.querySelector('a.spec').getAttribute('href')") == (
            "/openapi.json"
        )
        shot = browser.screenshot(test_output / "status-page-desk.png")
        assert shot.stat().st_size > 10_000

        pay_orders(desk, ["o-3", "o-4", "o-5"])  # events/s: from two polls' processed counts
        wait_for(
            lambda: (
                (r := browser.evaluate(CARDS)["order-status"]["facts"]["view-rate"]) != "—"
                and float(r) > 0
            ),
            timeout=30,
            what="a rate of order-status events above 0",
        )
    finally:
        browser.close()
