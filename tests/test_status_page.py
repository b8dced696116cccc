"""The status page at ``/``, in a real (headless) browser."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.brokers import Broker
from tests.support.chromium import Browser
from tests.support.http import call
from tests.support.worker import Worker, wait_for
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
