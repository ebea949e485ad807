"""The rehearsal report as one self-contained HTML file (``report.html``).

The queue chart is the dashboard's own (``mailqueue/web/static/chart.js``), inlined with
the series embedded as JSON, so the file opens offline in any browser and can be passed
around on its own. It draws what ``queue.png`` draws: queue depth, deliveries per interval,
the windows, the numbered events, with mailbox probes a band of mailbox access per store
(:mod:`mailqueue.rehearsal.probe_html`) and, for remote stores, what their servers
answered; with traffic replayed from a profile, the replayed arrivals against the profile
(:mod:`mailqueue.rehearsal.replay_html`). Each chart has its information as text as well.
"""

from __future__ import annotations

import html
import json
from typing import Any

from mailqueue import web
from mailqueue.rehearsal.probe_html import access_data, access_section
from mailqueue.rehearsal.replay_html import replay_section
from mailqueue.rehearsal.report import local
from mailqueue.rehearsal.runner import Observations
from mailqueue.timeparse import format_duration

DEPTH = "messages queued"  # the one series of the report's depth panel

STYLE = """
body { font-family: system-ui, sans-serif; color: #1f2328; margin: 0; background: #fff; }
main { max-width: 1200px; margin: 0 auto; padding: 1rem 1.25rem 2rem; }
h1 { font-size: 1.4rem; margin: .5rem 0; }
h2 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; }
.muted { color: #57606a; }
table { border-collapse: collapse; font-size: .92rem; }
th, td { text-align: left; padding: .25rem .75rem .25rem 0; border-bottom: 1px solid #d0d7de;
  vertical-align: top; }
th { color: #57606a; font-weight: 600; }
.warn { color: #9a4d00; }
.bad { color: #b3261e; font-weight: 600; }
.good { color: #1a7f37; font-weight: 600; }
ol li { margin: .2rem 0; }
details { margin: .75rem 0; }
summary { cursor: pointer; color: #0b5cad; }
"""


def chart_data(obs: Observations, rows: list[dict[str, Any]],
               backend: list[dict[str, Any]] | None) -> dict[str, Any]:
    """What the chart component draws, from the series rows (``series.csv``): columns it
    does not know are left alone."""
    end = obs.finished_at or (rows[-1]["epoch"] if rows else obs.scenario.end)
    planned = {w.name: w.end_ts for w in obs.scenario.file.windows}
    shown = "queue depth, mailbox access and deliveries" if obs.probes is not None else \
        "queue depth and deliveries"
    data: dict[str, Any] = {
        "title": f"{obs.scenario.info.name}: {shown} ({obs.scenario.timezone})",
        "zone": obs.scenario.timezone, "interval": obs.scenario.info.sample,
        "start": rows[0]["epoch"] if rows else obs.scenario.start, "end": end,
        "stores": [DEPTH], "unit": "messages",
        "points": [{"at": r["epoch"], "depth": {DEPTH: r["queue_depth"]}} for r in rows],
        "delivered": [{"at": r["epoch"], "count": r["delivered_in_interval"]} for r in rows],
        "windows": [{"name": w.name, "start": w.started_at, "end": w.ended_at or end,
                     "planned_end": planned.get(w.name)}
                    for w in obs.windows if w.started_at is not None],
        "events": [{"at": e.at, "label": e.text} for e in obs.timeline
                   if e.kind in ("event", "problem")],
    }
    if backend:
        data["replies"] = _replies(backend)
    access = access_data(obs)
    if access is not None:
        data["access"] = access
    return data


def _replies(backend: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The remote stores' replies per interval, all stores together (as the PNG stacks them)."""
    totals: dict[float, dict[str, Any]] = {}
    for row in backend:
        slot = totals.setdefault(row["epoch"], {"at": row["epoch"], "accepted": 0,
                                                "deferred": 0, "bounced": 0})
        for outcome in ("accepted", "deferred", "bounced"):
            slot[outcome] += int(row[outcome])
    return [totals[at] for at in sorted(totals)]


def timeline_lines(obs: Observations) -> list[tuple[str, str]]:
    """The status timeline as (local time, text), events numbered as on the chart."""
    lines, number = [], 0
    for entry in obs.timeline:
        mark = ""
        if entry.kind in ("event", "problem"):
            number += 1
            mark = f"({number}) "
        unit = "message" if entry.depth == 1 else "messages"
        lines.append((local(obs, entry.at),
                      f"{mark}{entry.text.rstrip('.')}. Queue: {entry.depth} {unit}."))
    return lines


def report_html(obs: Observations, figures: dict[str, Any], rows: list[dict[str, Any]],
                backend: list[dict[str, Any]] | None = None) -> str:
    """The whole page: the verdict, the chart, mailbox access, the figures, the replay,
    warnings, the status timeline."""
    script = web.read_asset("chart.js")
    if "</script" in script.lower():  # would end the inline script early
        raise ValueError("chart.js must not contain '</script'")
    data = _json(chart_data(obs, rows, backend))
    replay, arrivals = replay_section(obs, figures.get("replay"))
    name = html.escape(obs.scenario.info.name)
    description = obs.scenario.info.description.strip()
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{name} — rehearsal report</title>
<style>{STYLE}</style>
</head>
<body>
<main>
<h1>{name} — rehearsal report</h1>
{f'<p class="muted">{html.escape(description)}</p>' if description else ''}
{_verdict(figures)}
<div id="queue-chart"></div>
{access_section(obs, figures.get("probes"))}
<h2>Figures</h2>
{_figures_table(figures)}
{replay}
{_warnings(figures)}
<h2>Status timeline</h2>
<ol>
{"".join(f"<li><strong>{html.escape(at)}</strong> — {html.escape(text)}</li>"
         for at, text in timeline_lines(obs))}
</ol>
</main>
<script type="application/json" id="report-data">{data}</script>
<script type="application/json" id="arrival-data">{_json(arrivals)}</script>
<script type="module">
{script}
const read = (id) => JSON.parse(document.getElementById(id).textContent);
const reportData = read("report-data");
const arrivalData = read("arrival-data");
const drawReport = () => {{
  renderQueueChart(document.getElementById("queue-chart"), reportData);
  if (arrivalData) renderArrivalChart(document.getElementById("arrival-chart"), arrivalData);
}};
drawReport();
window.addEventListener("resize", drawReport);
</script>
</body>
</html>
"""


def _json(value: Any) -> str:
    """JSON to embed in a script element: no ``</`` to end it early."""
    return json.dumps(value).replace("</", "<\\/")


def _verdict(figures: dict[str, Any]) -> str:
    lost, duplicated, pending = figures["lost"], figures["duplicated"], figures["pending"]
    if not (lost or duplicated or pending):
        return ('<p class="good" id="verdict">No message lost or duplicated; '
                "nothing left in the queue.</p>")
    return (f'<p class="bad" id="verdict">{lost} lost, {duplicated} duplicated, '
            f"{pending} still pending.</p>")


def _figures_table(figures: dict[str, Any]) -> str:
    def dur(key: str) -> str:
        value = figures[key]
        return "-" if value is None else format_duration(value)

    rows = [
        ("Accepted", f"{figures['accepted_messages']} messages, "
                     f"{figures['accepted_recipients']} recipients"),
        ("Delivered", f"{figures['delivered']} recipients"),
        ("Bounced", f"{figures['bounced']} (expired {figures['expired']})"),
        ("Deleted", str(figures["deleted"])),
        ("Pending", str(figures["pending"])),
        ("Lost / duplicated", f"{figures['lost']} / {figures['duplicated']}"),
        ("Peak queue", f"{figures['peak_depth']} messages, {figures['peak_bytes']} bytes "
                       f"({figures['peak_depth_at']})"),
        ("Window end", f"{figures['window_end']}; queue empty {dur('drain_seconds')} later"
         if figures["window_end"] else "no window ended"),
        ("Delivery delay", f"p50 {dur('delay_p50_seconds')}, p95 {dur('delay_p95_seconds')}, "
                           f"max {dur('delay_max_seconds')}"),
        ("Run", f"{figures['wall_seconds']} s wall at {figures['speed']:g}x, "
                f"seed {figures['seed']}"),
    ]
    body = "".join(f"<tr><th scope=\"row\">{html.escape(name)}</th>"
                   f"<td>{html.escape(value)}</td></tr>" for name, value in rows)
    return f"<table>{body}</table>"


def _warnings(figures: dict[str, Any]) -> str:
    if not figures["warnings"]:
        return ""
    items = "".join(f"<li>{html.escape(w)}</li>" for w in figures["warnings"])
    return f'<h2>Warnings</h2><ul class="warn">{items}</ul>'
