"""report.html: one file, the chart inlined, the series as JSON that cannot end the script."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from mailqueue import web
from mailqueue.clock import ManualClock
from mailqueue.rehearsal.chart import ACCESS_STYLE
from mailqueue.rehearsal.html import chart_data, report_html
from mailqueue.rehearsal.probes import Answer, ProbeLog, ProbeResult, ProbeUser
from mailqueue.rehearsal.replay_html import replay_section
from mailqueue.rehearsal.replay_report import replay_figures
from mailqueue.rehearsal.report import compute_figures, series_rows
from mailqueue.rehearsal.runner import Observations, build_config
from mailqueue.rehearsal.traffic import Accepted, TrafficSender, plan_traffic
from tests.unit.test_report import observations
from tests.unit.test_traffic_replay import scenario as replay_scenario
from tests.unit.test_traffic_replay import week_profile


def test_the_report_carries_its_chart_and_data(tmp_path: Path) -> None:
    obs = observations(tmp_path)
    obs.timeline = []
    rows = series_rows(obs)
    rows[0]["logins_basic"] = 3  # a column the chart does not know is left alone
    figures = compute_figures(obs, Counter())
    page = report_html(obs, figures, rows,
                       [{"epoch": rows[0]["epoch"], "store": "x", "accepted": 1,
                         "deferred": 2, "bounced": 0}])
    assert web.read_asset("chart.js") in page
    assert not re.search(r'(src|href)="', page)  # nothing loaded from elsewhere
    embedded = page.split('id="report-data">', 1)[1].split("</script>", 1)[0]
    data = json.loads(embedded)
    assert data["points"] == [{"at": rows[0]["epoch"], "depth": {"messages queued": 3}}]
    assert data["replies"] == [{"at": rows[0]["epoch"], "accepted": 1, "deferred": 2,
                                "bounced": 0}]


def test_text_in_the_data_cannot_close_the_script(tmp_path: Path) -> None:
    obs = observations(tmp_path)
    obs.timeline = []
    from mailqueue.rehearsal.runner import Entry
    obs.timeline = [Entry(at=obs.scenario.start, text="</script><b>x</b>", depth=1)]
    rows = series_rows(obs)
    figures = compute_figures(obs, Counter())
    page = report_html(obs, figures, rows)
    assert page.count("</script>") == 3  # the two charts' data and the charts' own
    assert "&lt;/script&gt;&lt;b&gt;" in page  # the timeline, escaped
    assert chart_data(obs, rows, None)["events"][0]["label"] == "</script><b>x</b>"


def probed(tmp_path: Path) -> Observations:
    """Two probe users of basic over five rounds: available, both refused for maintenance,
    one refused with its node down, then both available twice."""
    obs = observations(tmp_path)
    obs.timeline = []
    one, two = ProbeUser("u1@basic.example", "basic", "basic-1"), \
        ProbeUser("u2@basic.example", "basic", "basic-2")
    log = ProbeLog(via="decision", why='probes.via = "decision"', interval=300,
                   users=(one, two))
    got = [("available", "available"), ("maintenance", "maintenance"),
           ("available", "node-down"), ("available", "available"), ("available", "available")]
    for number, outcomes in enumerate(got):
        at = obs.scenario.start + 300 * number
        log.rounds.append(at)
        for user, outcome in zip((one, two), outcomes, strict=True):
            log.results.append(ProbeResult(at=at + 1, round=number, user=user,
                                           answer=Answer(outcome)))
    obs.probes = log
    return obs


def test_probes_draw_the_access_band_with_its_text(tmp_path: Path) -> None:
    obs = probed(tmp_path)
    start = obs.scenario.start
    data = chart_data(obs, series_rows(obs), None)
    access = data["access"]
    assert access["label"] == "mailbox access"
    assert access["stores"] == ["basic"]
    # Rounds in a row that got the same are one span; the last two hold until 330 s after.
    assert [(s["start"] - start, s["end"] - start, s["rounds"]) for s in access["spans"]] == [
        (0, 300, 1), (300, 600, 1), (600, 900, 1), (900, 1200 + 330, 2)]
    assert access["spans"][2]["counts"] == {"available": 1, "maintenance": 0,
                                            "node-down": 1, "error": 0}
    # basic-2's user reads mail again at round 3; no window held basic: no mail moment.
    assert access["moments"] == [{"store": "basic", "at": start + 901, "kind": "read_again"}]
    assert "mailbox access" in data["title"]
    page = report_html(obs, compute_figures(obs, Counter()), series_rows(obs))
    table = page.split('id="access-table"', 1)[1].split("</table>", 1)[0]
    assert "available 7, refused: maintenance 2, refused: node down 1" in table
    assert "error" not in table  # listed only when a login failed
    periods = page.split('id="access-periods"', 1)[1].split("</table>", 1)[0]
    assert periods.count("<tr>") == 1 + 4


def test_without_probes_or_replay_the_page_has_neither(tmp_path: Path) -> None:
    obs = observations(tmp_path)
    obs.timeline = []
    page = report_html(obs, compute_figures(obs, Counter()), series_rows(obs))
    assert "access" not in chart_data(obs, series_rows(obs), None)
    assert "<h2>Mailbox access" not in page and "<h2>Traffic replayed" not in page
    assert '<script type="application/json" id="arrival-data">null</script>' in page


def test_the_band_has_the_colours_of_queue_png() -> None:
    script = web.read_asset("chart.js")
    found = dict(re.findall(r'\["([a-z-]+)", "(#[0-9a-f]{6})", "[a-z]*", "[^"]+"\]', script))
    assert found == {outcome: colour.lower() for outcome, (colour, _, _)
                     in ACCESS_STYLE.items()}


def test_a_replay_draws_its_arrivals_with_a_table(tmp_path: Path) -> None:
    loaded = replay_scenario(tmp_path, week_profile())
    obs = Observations(scenario=loaded, speed=3600, seed=1, workdir=tmp_path,
                       config=build_config(loaded, tmp_path, 3600))
    plan = plan_traffic(loaded, 1)
    obs.sender = TrafficSender(plan, ManualClock(0.0), "127.0.0.1", 0, 1, "UTC")
    obs.sender.accepted = [Accepted(seq=p.seq, queue_id=f"Q{p.seq}", recipients=p.recipients,
                                    at=p.at) for p in plan]
    section, data = replay_section(obs, replay_figures(obs))
    assert data is not None
    assert sum(r["accepted"] for r in data["rows"]) == len(plan)
    assert sum(r["expected"] for r in data["rows"]) == pytest.approx(len(plan))
    assert "week.json" in data["title"] and data["interval"] == loaded.info.sample
    assert "correlate 1.00 with the profile" in section
    rows = section.split('id="arrival-table"', 1)[1].split("</table>", 1)[0]
    assert rows.count("<tr>") == 1 + len(data["rows"])
