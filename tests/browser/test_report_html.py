"""A short rehearsal's report.html in a real browser: offline, its chart drawn, no errors;
with mailbox probes the access band under the queue depth, with traffic replayed from a
profile the arrivals against the profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from mailqueue.traffic.profile import save_profile
from tests.browser.conftest import console_problems, keep
from tests.integration.test_rehearsal import SCENARIO, rehearse
from tests.integration.test_rehearsal_probes import DECISION
from tests.rehearsed import Rehearsals
from tests.unit.test_traffic_replay import week_profile

pytestmark = pytest.mark.browser


def test_report_html_draws_the_queue_chart(rehearsals: Rehearsals, chrome: Any,
                                           artifacts: Path) -> None:
    # The rehearsal test_rehearsal.py checks the figures of.
    result = rehearsals.run(SCENARIO, workdir=True)
    assert result.returncode == 0, result.stderr + result.stdout
    report = result.out / "report.html"
    assert (result.out / "queue.png").exists()

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


def attribute(chrome: Any, selector: str, name: str) -> list[str]:
    return [e.get_attribute(name) for e in chrome.find_elements(By.CSS_SELECTOR, selector)]


def test_report_html_draws_the_mailbox_access_band(rehearsals: Rehearsals, chrome: Any,
                                                   artifacts: Path) -> None:
    # The rehearsal test_rehearsal_probes.py checks the logins of.
    result = rehearsals.run(DECISION)
    assert result.returncode == 0, result.stderr + result.stdout
    report = result.out / "report.html"

    chrome.get(report.as_uri())
    band = chrome.find_element(By.CSS_SELECTOR, "#queue-chart svg g.access-band")
    assert [e.text for e in band.find_elements(By.CSS_SELECTOR, ".access-store")] == [
        "basic", "hosted-exchange"]
    # The three states, node down hatched; errors only if any.
    outcomes = set(attribute(chrome, "g.access-band rect.access", "data-outcome"))
    assert outcomes == {"available", "maintenance", "node-down"}
    assert chrome.find_elements(By.CSS_SELECTOR, "svg pattern#queue-chart-hatch")
    # The band lies between the queue depth and the deliveries, on their time axis.
    depth = chrome.find_element(By.CSS_SELECTOR, "svg .depth-line").rect
    delivered = chrome.find_elements(By.CSS_SELECTOR, "svg .delivered rect")[0].rect
    assert depth["y"] < band.rect["y"] < delivered["y"]
    assert sorted(attribute(chrome, "g.access-band .moment", "data-kind")) == [
        "mail_arrived", "read_again"]
    titles = [t.get_attribute("textContent") for t in chrome.find_elements(
        By.CSS_SELECTOR, "g.access-band .moment title")]
    assert any(t.startswith("basic: users read mail again") for t in titles), titles
    legend = " ".join(e.text for e in chrome.find_elements(By.CSS_SELECTOR, "svg > text"))
    for label in ("refused: maintenance", "refused: node down", "users read mail again",
                  "their queued mail arrived"):
        assert label in legend
    assert "Mailbox access of basic: logins available" in chrome.find_element(
        By.CSS_SELECTOR, "#queue-chart svg desc").get_attribute("textContent")
    # The same as text: per store, its logins and moments.
    table = chrome.find_element(By.ID, "access-table").text
    assert "refused: node down" in table and "hosted-exchange" in table
    assert console_problems(chrome) == []
    chrome.execute_script("window.scrollTo(0, 0)")
    chrome.save_screenshot(str(artifacts / "report-probes.png"))
    keep(report, artifacts)


REPLAY = """
[scenario]
name = "Replayed week"
timezone = "Europe/Berlin"
start = "2024-03-06 16:00"
end = "2024-03-06 17:00"
speed = 600
seed = 2
sample = "5m"

[[stores]]
name = "basic"
domains = ["own.example"]
users = 20

[traffic]
profile = "week.json"
connections = 2
"""


def test_report_html_draws_the_replay_against_its_profile(tmp_path: Path, chrome: Any,
                                                          artifacts: Path) -> None:
    save_profile(week_profile(), tmp_path / "week.json")
    result = rehearse(tmp_path, REPLAY)
    assert result.returncode == 0, result.stderr + result.stdout
    report = tmp_path / "out" / "report.html"
    assert (tmp_path / "out" / "traffic.png").exists()

    chrome.get(report.as_uri())
    svg = chrome.find_element(By.CSS_SELECTOR, "#arrival-chart svg.arrival-chart")
    assert svg.get_attribute("data-rows") == "12"
    assert chrome.find_elements(By.CSS_SELECTOR, "svg .replayed rect")
    assert len(chrome.find_elements(By.CSS_SELECTOR, "svg .profile path")) == 1
    assert len(chrome.find_elements(By.CSS_SELECTOR, "svg .running path")) == 2
    # Wednesday 16:00 in Berlin is the profile's third day: 30 + 16 messages an hour.
    assert "46 messages replayed and acknowledged, for 46 the profile puts" in \
        svg.find_element(By.CSS_SELECTOR, "desc").get_attribute("textContent")
    assert "replayed from week.json" in chrome.find_element(By.ID, "replay-figures").text
    assert not chrome.find_elements(By.CSS_SELECTOR, "g.access-band")
    assert console_problems(chrome) == []
    chrome.execute_script("document.getElementById('arrival-chart').scrollIntoView()")
    chrome.save_screenshot(str(artifacts / "report-replay.png"))
    keep(report, artifacts)
