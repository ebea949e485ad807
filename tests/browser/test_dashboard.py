"""The dashboard in headless Chromium against a real ``mailqueue serve``: mail sent over SMTP
moves the chart, the page's own buttons start and end a window, the queue drains on the
page, the search finds a message by its Message-ID, and a token is asked for once."""

from __future__ import annotations

import asyncio
import json
import smtplib
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.conftest import console_problems
from tests.served import free_port, start, wait_listening, write_config

pytestmark = pytest.mark.browser

STORES = {"basic": "basic.example", "exchange": "exchange.example"}


class Served:
    """A running ``mailqueue serve`` with its admin endpoint."""

    def __init__(self, smtp: int, admin: int, proc: subprocess.Popen[bytes]) -> None:
        self.smtp, self.admin, self.proc = smtp, admin, proc

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.admin}/"

    def post(self, path: str, body: dict[str, Any], method: str = "POST") -> Any:
        """POST (or PUT) to the API, as a script in another language would."""
        request = urllib.request.Request(f"{self.url}api/v1{path}", method=method,
                                         data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def send(self, count: int, rcpt: str = "alice@basic.example", tag: str = "m") -> list[str]:
        """``count`` messages over SMTP; their Message-IDs."""
        ids = []
        with smtplib.SMTP("127.0.0.1", self.smtp, timeout=10) as client:
            for i in range(count):
                mid = f"<{tag}-{i}@src.test>"
                client.sendmail("sender@src.test", [rcpt],
                                f"From: sender@src.test\r\nTo: {rcpt}\r\nSubject: {tag} {i}"
                                f"\r\nMessage-ID: {mid}\r\n\r\nhello\r\n")
                ids.append(mid)
        return ids


def serve(tmp_path: Path, token: str | None = None) -> Iterator[Served]:
    smtp, admin = free_port(), free_port()
    extra = f'\n[admin]\nhost = "127.0.0.1"\nport = {admin}\n'
    if token:
        extra += f'token = "{token}"\n'
    proc = start(write_config(tmp_path, smtp, STORES, extra))
    try:
        asyncio.run(wait_listening(smtp, proc))
        asyncio.run(wait_listening(admin, proc))
        yield Served(smtp, admin, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    yield from serve(tmp_path)


def until(driver: Any, check: Any, timeout: float = 20, message: str = "") -> Any:
    # The page redraws its live parts each second: an element found may be gone a moment
    # later, so a wait reads again rather than fail.
    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: check(d), message)


def texts(driver: Any, selector: str) -> list[str]:
    """The text of every element ``selector`` finds, read at one moment (in the page)."""
    return list(driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map((e) => e.textContent)",
        selector))


def chart_value(driver: Any, name: str) -> str | None:
    """One of the chart's data attributes (``latestDepth``, ``points``), read in the page."""
    return driver.execute_script(  # type: ignore[no-any-return]
        "const svg = document.querySelector('#queue-chart svg.queue-chart');"
        "return svg ? svg.dataset[arguments[0]] : null", name)


def live(driver: Any, served: Served) -> None:
    driver.get(served.url)
    until(driver, lambda d: d.find_element(By.ID, "connection").get_attribute("data-state")
          == "live", message="the event stream connects")
    until(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#stores tr")) == 2)


def window_item(driver: Any, name: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, f'#windows li[data-window="{name}"]')


def test_the_page_loads_without_console_errors(chrome: Any, served: Served) -> None:
    live(chrome, served)
    assert chrome.title == "mailqueue"
    until(chrome, lambda d: d.find_element(By.ID, "fig-waiting").text == "0")
    stores = [row.get_attribute("data-store") for row in
              chrome.find_elements(By.CSS_SELECTOR, "#stores tr")]
    assert stores == ["basic", "exchange"]
    assert console_problems(chrome) == []


def start_window_from_the_page(driver: Any) -> None:
    driver.find_element(By.ID, "new-window").click()
    dialog = driver.find_element(By.ID, "confirm")
    assert dialog.get_attribute("open") is not None
    name = driver.find_element(By.ID, "field-name")
    assert driver.switch_to.active_element == name  # the dialog starts in its first field
    name.clear()
    name.send_keys("upgrade")
    driver.find_element(By.CSS_SELECTOR, '#confirm input[value="basic"]').click()
    driver.find_element(By.ID, "confirm-ok").click()
    until(driver, lambda d: d.find_element(By.ID, "confirm").get_attribute("open") is None,
          message="the start dialog closes")
    until(driver, lambda d: window_item(d, "upgrade").get_attribute("data-state") == "active")


def test_a_window_from_start_to_drain_on_the_page(chrome: Any, served: Served,
                                                  artifacts: Path) -> None:
    live(chrome, served)
    start_window_from_the_page(chrome)
    until(chrome, lambda d: "held" in d.find_element(
        By.CSS_SELECTOR, '#stores tr[data-store="basic"]').text)

    before = texts(chrome, "#queue-chart svg desc")
    served.send(4)
    until(chrome, lambda d: chart_value(d, "latestDepth") == "4",
          message="the chart shows the four queued recipients")
    served.send(3)
    until(chrome, lambda d: chart_value(d, "latestDepth") == "7")
    lines = chrome.execute_script("return [...document.querySelectorAll("
                                  "'#queue-chart .depth-line')].map((e) => e.dataset.store)")
    assert lines == ["basic"]  # the one store holding mail
    assert texts(chrome, "#queue-chart svg desc") != before
    assert chrome.find_element(By.ID, "fig-waiting").text == "7"

    # From the keyboard: the End button opens its confirmation; Escape leaves it unasked.
    end = window_item(chrome, "upgrade").find_element(By.CSS_SELECTOR, '[data-action="end"]')
    end.send_keys(Keys.ENTER)
    until(chrome, lambda d: d.find_element(By.ID, "confirm").get_attribute("open") is not None)
    assert chrome.switch_to.active_element.get_attribute("id") == "confirm-cancel"
    chrome.switch_to.active_element.send_keys(Keys.TAB)
    assert chrome.switch_to.active_element.get_attribute("id") == "confirm-ok"
    chrome.switch_to.active_element.send_keys(Keys.ESCAPE)
    until(chrome, lambda d: d.find_element(By.ID, "confirm").get_attribute("open") is None)
    assert chrome.switch_to.active_element == end  # focus back where it was
    assert window_item(chrome, "upgrade").get_attribute("data-state") == "active"

    # Extend, confirmed with a duration: a numbered mark on the chart, a later end.
    ends = window_item(chrome, "upgrade").find_element(By.CSS_SELECTOR, ".window-meta + "
                                                       ".window-meta").text
    window_item(chrome, "upgrade").find_element(By.CSS_SELECTOR,
                                                '[data-action="extend"]').click()
    by = chrome.find_element(By.ID, "field-by")
    assert chrome.switch_to.active_element == by
    by.clear()
    by.send_keys("30m", Keys.ENTER)
    until(chrome, lambda d: texts(d, "#queue-chart g.event title"),
          message="the extension is marked on the chart")
    assert "extended" in texts(chrome, "#queue-chart g.event title")[0]
    until(chrome, lambda d: window_item(d, "upgrade").find_element(
        By.CSS_SELECTOR, ".window-meta + .window-meta").text.split(" — ")[0] !=
        ends.split(" — ")[0], message="the window's end moves")

    # Now for real: End, confirmed; the queue drains and the page says so.
    end = window_item(chrome, "upgrade").find_element(By.CSS_SELECTOR, '[data-action="end"]')
    end.click()
    chrome.find_element(By.ID, "confirm-ok").click()
    until(chrome, lambda d: d.find_element(By.ID, "drain").get_attribute("data-done") == "true",
          timeout=30, message="the drain completes on the page")
    assert "Drained: 7 recipients settled" in chrome.find_element(By.ID, "drain-text").text
    until(chrome, lambda d: chart_value(d, "latestDepth") == "0")
    assert window_item(chrome, "upgrade").get_attribute("data-state") == "ended"
    until(chrome, lambda d: d.find_element(By.ID, "fig-waiting").text == "0")
    chrome.save_screenshot(str(artifacts / "dashboard-drained.png"))
    assert console_problems(chrome) == []


def test_a_node_down_shows_with_its_deferrals(chrome: Any, served: Served,
                                              artifacts: Path) -> None:
    """A window holding basic while exchange's node is down: both stories on one page (the
    screenshot in the docs)."""
    served.post("/windows/platform-upgrade/start", {"duration": "2h", "stores": ["basic"]})
    held = len(served.send(3, tag="before"))
    live(chrome, served)
    # Opened mid-window: the curve so far is drawn from the mail waiting (a step each).
    until(chrome, lambda d: int(chart_value(d, "points") or 0) >= 4)
    for batch in range(1, 4):
        held += len(served.send(3 + batch, tag=f"b{batch}"))
        if batch == 2:  # exchange's first mail is delivered, the rest waits for its node
            served.post("/nodes/exchange-1", {"mode": "down"}, method="PUT")
        served.send(2, rcpt=f"carol{batch}@exchange.example", tag=f"x{batch}")
        until(chrome, lambda d, n=held: int(chart_value(d, "latestDepth") or 0) >= n)
        asyncio.run(asyncio.sleep(1.5))  # so the curve climbs in steps
    until(chrome, lambda d: "exchange-1 down" in texts(d, '#stores tr[data-store="exchange"]')[0])
    until(chrome, lambda d: len(texts(d, "#problems tr")) >= 4, message="deferrals are listed")
    row = texts(chrome, "#problems tr")[0]
    assert "deferred" in row and "exchange-1" in row and "down" in row
    assert any("exchange-1 down" in m for m in texts(chrome, "#queue-chart g.event title"))
    chrome.save_screenshot(str(artifacts / "dashboard.png"))
    assert console_problems(chrome) == []


def test_search_finds_a_message_by_message_id(chrome: Any, served: Served) -> None:
    served.post("/windows/upgrade/start", {"duration": "1h", "stores": ["basic"]})
    live(chrome, served)
    served.send(2, rcpt="bob@exchange.example", tag="other")
    mid = served.send(1, rcpt="carol@basic.example", tag="wanted")[0]
    box = chrome.find_element(By.ID, "search-q")
    box.send_keys(mid.strip("<>"), Keys.ENTER)
    until(chrome, lambda d: "1 message found" in d.find_element(By.ID, "search-status").text)
    rows = chrome.find_elements(By.CSS_SELECTOR, "#results tr")
    assert len(rows) == 1 and mid in rows[0].text
    button = rows[0].find_element(By.CSS_SELECTOR, "button")
    button.click()
    until(chrome, lambda d: d.find_element(By.ID, "detail").get_attribute("open") is not None)
    until(chrome, lambda d: "carol@basic.example" in d.find_element(By.ID, "detail-body").text)
    body = chrome.find_element(By.ID, "detail-body").text
    # Held by the window, so its headers are still kept.
    assert mid in body and "sender@src.test" in body and "Subject: wanted 0" in body
    assert "queued" in body
    chrome.switch_to.active_element.send_keys(Keys.ESCAPE)
    until(chrome, lambda d: d.find_element(By.ID, "detail").get_attribute("open") is None)
    assert chrome.switch_to.active_element == button
    assert console_problems(chrome) == []


def test_the_page_asks_for_the_token_once(chrome: Any, tmp_path: Path) -> None:
    for served in serve(tmp_path, token="s3cret"):
        chrome.get(served.url)
        until(chrome, lambda d: d.find_element(By.ID, "token").get_attribute("open")
              is not None, message="the page asks for the token")
        field = chrome.find_element(By.ID, "token-input")
        field.send_keys("wrong", Keys.ENTER)
        until(chrome, lambda d: "does not take" in d.find_element(By.ID, "token-error").text)
        field.clear()
        field.send_keys("s3cret", Keys.ENTER)
        until(chrome, lambda d: d.find_element(By.ID, "connection").get_attribute(
            "data-state") == "live", message="the stream takes the token too")
        until(chrome, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#stores tr")) == 2)
        chrome.refresh()  # kept for the session: not asked again
        until(chrome, lambda d: d.find_element(By.ID, "connection").get_attribute(
            "data-state") == "live")
        assert chrome.find_element(By.ID, "token").get_attribute("open") is None
        # The wrong token's 401 is the one console error the page caused.
        problems = console_problems(chrome)
        assert all("401" in p for p in problems), problems
