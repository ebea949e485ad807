"""Traffic replayed from a profile in ``report.html``: the arrival curves the chart
component draws (what traffic.png's top panel draws: per interval, the messages the server
acknowledged against those the profile puts there times the scale, and the running totals
of both), with the replay's figures as text and every interval in a table that opens."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from mailqueue.rehearsal.replay_report import replay_rows, replay_text
from mailqueue.rehearsal.runner import Observations


def arrival_data(obs: Observations, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``renderArrivalChart`` draws, from the rows of ``traffic.csv``."""
    scenario = obs.scenario
    replay = scenario.replay
    assert replay is not None
    return {
        "title": f"{scenario.info.name}: traffic replayed from {Path(replay.path).name} "
                 f"({scenario.timezone})",
        "zone": scenario.timezone, "interval": scenario.info.sample,
        "start": scenario.start, "end": obs.finished_at or scenario.end,
        "rows": [{"at": r["epoch"], "expected": r["expected"], "accepted": r["accepted"]}
                 for r in rows],
    }


def replay_section(obs: Observations, figures: dict[str, Any] | None
                   ) -> tuple[str, dict[str, Any] | None]:
    """The ``Traffic replayed`` section and its chart's data (("", None) for synthetic
    traffic)."""
    if obs.scenario.replay is None or figures is None:
        return "", None
    rows = replay_rows(obs)
    lines = "".join(f'<tr><th scope="row">{html.escape(name.capitalize())}</th>'
                    f"<td>{html.escape(value)}</td></tr>" for name, value in replay_text(figures))
    head = "".join(f'<th scope="col">{html.escape(t)}</th>' for t in (
        "Interval from", "Profile, times the scale", "Planned", "Acknowledged"))
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
            r["time"], f"{r['expected']:g}", r["planned"], r["accepted"]))
        + "</tr>" for r in rows)
    section = (f"<h2>Traffic replayed</h2><table id=\"replay-figures\">{lines}</table>"
               '<div id="arrival-chart"></div>'
               "<details><summary>Arrivals per interval</summary>"
               f'<table id="arrival-table"><thead><tr>{head}</tr></thead><tbody>{body}'
               "</tbody></table></details>")
    return section, arrival_data(obs, rows)
