"""A short rehearsal's report.html in a real browser: offline, its chart drawn, no errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from tests.browser.conftest import console_problems, keep
from tests.integration.test_rehearsal import SCENARIO, rehearse

pytestmark = pytest.mark.browser


def test_report_html_draws_the_queue_chart(tmp_path: Path, chrome: Any,
                                           artifacts: Path) -> None:
    result = rehearse(tmp_path, SCENARIO)
    assert result.returncode == 0, result.stderr + result.stdout
    report = tmp_path / "out" / "report.html"
    assert (tmp_path / "out" / "queue.png").exists()

    chrome.get(report.as_uri())
    svg = chrome.find_element(By.CSS_SELECTOR, "#queue-chart svg.queue-chart")
    assert int(svg.get_attribute("data-points")) > 10
    assert int(chrome.find_element(By.CSS_SELECTOR, "#queue-chart").size["height"]) > 200
    # The depth curve, the shaded window, deliveries and the numbered events are drawn.
    assert chrome.find_elements(By.CSS_SELECTOR, "svg .depth-line")
    assert chrome.find_elements(By.CSS_SELECTOR, "svg rect.window")
    assert chrome.find_elements(By.CSS_SELECTOR, "svg .delivered rect")
    marks = [m.text for m in chrome.find_elements(By.CSS_SELECTOR, "svg g.event text")]
    assert "1" in marks and "2" in marks
    assert "Queue depth now 0 messages" in chrome.find_element(
        By.CSS_SELECTOR, "svg desc").get_attribute("textContent")
    assert "No message lost" in chrome.find_element(By.ID, "verdict").text
    assert console_problems(chrome) == []
    chrome.save_screenshot(str(artifacts / "report.png"))
    keep(report, artifacts)
