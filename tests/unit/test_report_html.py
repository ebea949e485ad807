"""report.html: one file, the chart inlined, the series as JSON that cannot end the script."""

from __future__ import annotations

import json
import re
from pathlib import Path

from mailqueue import web
from mailqueue.rehearsal.html import chart_data, report_html
from mailqueue.rehearsal.report import compute_figures, series_rows
from tests.unit.test_report import observations


def test_the_report_carries_its_chart_and_data(tmp_path: Path) -> None:
    obs = observations(tmp_path)
    obs.timeline = []
    rows = series_rows(obs)
    rows[0]["logins_basic"] = 3  # a column the chart does not know is left alone
    figures = compute_figures(obs, __import__("collections").Counter())
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
    figures = compute_figures(obs, __import__("collections").Counter())
    page = report_html(obs, figures, rows)
    assert page.count("</script>") == 2  # the data's and the chart's own
    assert "&lt;/script&gt;&lt;b&gt;" in page  # the timeline, escaped
    assert chart_data(obs, rows, None)["events"][0]["label"] == "</script><b>x</b>"
