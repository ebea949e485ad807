"""A short rehearsal end to end: real SMTP traffic, a window, a flaky node, the report."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from tests.rehearsed import Rehearsals

SCENARIO = """
[scenario]
name = "CI rehearsal"
timezone = "America/Chicago"
start = "2019-06-26 16:30"
end = "2019-06-26 18:30"
speed = 1200  # the extend below has 2 real seconds of margin on a busy machine
seed = 11
sample = "5m"

[server.queue.retry]
initial_delay = "2m"
max_delay = "10m"

[[stores]]
name = "basic"
domains = ["basic.example"]
nodes = 2
users = 20

[[windows]]
name = "upgrade"
stores = ["basic"]
start = "2019-06-26 16:30"
end = "2019-06-26 17:30"

[traffic]
rate = 24
connections = 4
size_median = "2KiB"
size_max = "8KiB"
recipients = [0.7, 0.3]

[[events]]
at = "2019-06-26 16:50"
action = "window.extend"
window = "upgrade"
until = "2019-06-26 18:00"
note = "Overrun: window extended to 6:00 PM"

[[events]]
at = "2019-06-26 18:00"
action = "node.flaky"
nodes = ["basic-1"]
fail_next = 3
note = "basic-1 back with errors"
"""


def rehearse(tmp_path: Path, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    return subprocess.run([sys.executable, "-m", "mailqueue", "rehearse", str(path),
                           "--out", str(tmp_path / "out"), "--workdir",
                           str(tmp_path / "work"), *args],
                          capture_output=True, text=True, timeout=100, check=False)


def test_short_rehearsal_loses_nothing_and_shows_the_window(rehearsals: Rehearsals) -> None:
    # The browser's report test reads this run's report.html.
    result = rehearsals.run(SCENARIO, workdir=True)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "lost: 0   duplicated 0" in result.stdout
    out = result.out
    figures = json.loads((out / "report.json").read_text())["figures"]
    assert figures["lost"] == 0 and figures["duplicated"] == 0 and figures["pending"] == 0
    assert figures["accepted_messages"] == figures["planned_messages"] > 20
    assert figures["delivered"] == figures["accepted_recipients"]
    assert figures["bounced"] == 0 and figures["unexpected_files"] == 0
    assert figures["window_end"] == "2019-06-26T18:00:00-05:00"
    assert figures["drain_seconds"] is not None and figures["peak_depth"] > 0
    assert figures["delay_max_seconds"] >= figures["delay_p95_seconds"] >= \
        figures["delay_p50_seconds"] > 0

    rows = list(csv.DictReader((out / "series.csv").read_text().splitlines()))
    held = [i for i, row in enumerate(rows) if row["window_active"] == "1"]
    assert held, "the window is visible in the series"
    inside = [rows[i] for i in held if i - 1 in held]
    # The window opens with the scenario: nothing reaches a mailbox while it lasts.
    assert inside and all(row["delivered_in_interval"] == "0" for row in inside)
    assert max(int(row["queue_depth"]) for row in inside) > 5
    after = rows[held[-1] + 1:]
    assert sum(int(row["delivered_in_interval"]) for row in after) > 0
    assert after[-1]["queue_depth"] == "0"

    timeline = (out / "timeline.md").read_text()
    assert "Window upgrade begins" in timeline and "(1) Overrun" in timeline
    assert "Everything queued during the window is delivered" in timeline
    assert (out / "queue.png").read_bytes().startswith(b"\x89PNG")


def test_bad_scenario_is_one_line(tmp_path: Path) -> None:
    text = SCENARIO.replace('nodes = ["basic-1"]', 'nodes = ["basic-7"]')
    result = rehearse(tmp_path, text)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"mailqueue: error: {tmp_path / 'scenario.toml'}: events[1].nodes: no node "
        "'basic-7' (basic has nodes basic-1..basic-2)"]
