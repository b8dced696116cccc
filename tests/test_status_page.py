"""The status page at ``/``, in a real (headless) browser."""

from __future__ import annotations

from pathlib import Path

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
