"""The demo page in a real headless Chromium rides through a real zero-downtime deploy.

The page is opened through nginx and left running while `inv local.deploy` replaces the app
container; everything is then checked from the page itself: its `window.handoverStats` and the
text it shows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .browser import Browser, browser_session, chromedriver, have_browser
from .conftest import ROOT, StackHandle

pytestmark = pytest.mark.integration

SCREENSHOT = ROOT / "artifacts" / "browser-deploy.png"
PLANNED_CLOSE_CODES = {1001, 1012}
SETTLE_SECONDS = 4.0
WAIT_TIMEOUT = 30.0

READ_PAGE = """
const stats = window.handoverStats;
if (!stats) return null;
const text = (id) => document.getElementById(id).textContent;
return {
  stats: JSON.parse(JSON.stringify(stats)),
  badge: text("state"),
  serverId: text("server-id"),
  version: text("version"),
  history: text("server-history"),
  log: Array.from(document.querySelectorAll("#log li"), (li) => ({kind: li.className, text: li.textContent})),
};
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not have_browser():
        pytest.fail("chromium and chromedriver are needed: run scripts/bootstrap.sh")
    with chromedriver() as endpoint, browser_session(endpoint) as session:
        yield session


def read_page(browser: Browser) -> dict[str, Any]:
    page: dict[str, Any] | None = browser.run(READ_PAGE)
    assert page is not None, "the page did not set window.handoverStats"
    return page


def wait_for(browser: Browser, what: str, ok: Callable[[dict[str, Any]], bool],
             timeout: float = WAIT_TIMEOUT) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        page = read_page(browser)
        if ok(page):
            return page
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; the page shows {page}")
        time.sleep(0.25)


def log_texts(page: dict[str, Any], kind: str | None = None) -> list[str]:
    return [entry["text"] for entry in page["log"] if kind is None or kind in entry["kind"].split()]


def save_screenshot(browser: Browser, path: Path) -> None:
    browser.screenshot(path)
    assert path.stat().st_size > 0


def test_page_stays_connected_through_a_deploy(stack: StackHandle, browser: Browser) -> None:
    browser.get(f"{stack.url}/")
    before = wait_for(browser, "an open connection with a server id",
                      lambda p: p["stats"]["state"] == "open" and p["stats"]["serverId"] is not None)
    old_id = before["stats"]["serverId"]
    assert old_id == stack.info()["server_id"]
    assert before["serverId"] == old_id and before["badge"] == "open"
    # Let a few messages go out on the old server first.
    wait_for(browser, "a message acked by the old server", lambda p: p["stats"]["acked"] >= 1)

    version = f"browser-{time.strftime('%Y%m%d%H%M%S')}-{time.monotonic_ns() % 1_000_000:06d}"
    stack.inv("local.deploy", "--version", version)
    new_info = stack.info()
    new_id = new_info["server_id"]
    assert new_id != old_id and new_info["version"] == version

    time.sleep(SETTLE_SECONDS)
    try:
        page = wait_for(browser, "the new server and every message acked",
                        lambda p: p["stats"]["serverId"] == new_id and p["stats"]["state"] == "open"
                        and p["stats"]["unacked"] == 0)
    finally:
        save_screenshot(browser, SCREENSHOT)  # also when it failed: the page tells what went wrong
    stats = page["stats"]

    # What the page recorded: the old server, then the new one, via a planned reconnect only.
    assert stats["serverIds"] == [old_id, new_id]
    assert stats["version"] == version
    assert stats["reconnects"] >= 1
    assert stats["abnormalCloses"] == 0
    assert stats["closeCodes"] and set(stats["closeCodes"]) <= PLANNED_CLOSE_CODES, stats["closeCodes"]
    assert stats["lastGapMs"] is not None
    assert stats["sent"] == stats["acked"] and stats["sent"] >= 2

    # What the page shows.
    assert page["badge"] == "open"
    assert page["serverId"] == new_id and page["version"] == version
    assert page["history"] == f"{old_id} → {new_id}"
    assert log_texts(page, "error") == []
    assert any(f"connected to {old_id}" in text for text in log_texts(page))
    assert any(f"reconnected to {new_id}" in text for text in log_texts(page, "reconnect"))
    assert any(f"now on server {new_id} (version {version})" in text for text in log_texts(page, "server"))
