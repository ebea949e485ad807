"""Mailbox probes in a rehearsal: simulated users log in over IMAP through a real Dovecot
(or ask the access decision directly) while a window holds one store and one of its nodes
stays down after the window.

The story: ``basic`` (two nodes) is in a window from 4:20 to 5:10 PM; its node ``basic-2``
goes down inside the window and comes back at 5:40 PM; ``hosted-exchange`` is never held.
Its users are refused for maintenance during the window (whatever their node), then only
the user on ``basic-2`` is refused (node down) until it is back. Delivery is capped, so
``basic-2``'s queued mail arrives well after its users can log in again.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from mailqueue.testing.dovecot import require_dovecot_access
from tests.rehearsed import Rehearsals

SCENARIO = """
[scenario]
name = "Mailbox probes"
timezone = "UTC"
start = "2019-06-26 16:00"
end = "2019-06-26 18:30"
speed = 1800
seed = 4
sample = "5m"

[server.queue.retry]
initial_delay = "2m"
max_delay = "5m"

[server.delivery]
max_rate = 60   # recipients per simulated hour: the window's mail takes a while

[[stores]]
name = "basic"
domains = ["basic.example"]
nodes = 2
users = 8

[[stores]]
name = "hosted-exchange"
domains = ["exchange.example"]
users = 4

[[windows]]
name = "upgrade"
stores = ["basic"]
start = "2019-06-26 16:20"
end = "2019-06-26 17:10"

[traffic]
rate = 50
connections = 2
size_median = "1KiB"
size_max = "2KiB"
stores = { basic = 0.8, "hosted-exchange" = 0.2 }

[[events]]
at = "2019-06-26 16:40"
action = "node.down"
nodes = ["basic-2"]
note = "basic-2 is upgraded last"

[[events]]
at = "2019-06-26 17:40"
action = "node.up"
nodes = ["basic-2"]
note = "basic-2 back"

[probes]
interval = "5m"
users = { basic = 2, "hosted-exchange" = 1 }
"""

# The same story with the access decision asked directly, no Dovecot.
DECISION = SCENARIO + 'via = "decision"\n'

WINDOW_START = "2019-06-26T16:20:00+00:00"
WINDOW_END = "2019-06-26T17:10:00+00:00"
NODE_UP = "2019-06-26T17:40:00+00:00"
# Simulated seconds of leeway around the span from a login's start to its answer, within
# which mailqueue decided it.
MARGIN = 60


def rehearse(rehearsals: Rehearsals,
             text: str) -> tuple[dict[str, Any], list[dict[str, Any]], Path]:
    """The report (with the command's output as ``stdout``), the logins and the ``--out``
    directory of the rehearsal of ``text``, run once for all the tests that read it."""
    # No --workdir: the rehearsal's own temporary one, which Dovecot's mail user can enter.
    result = rehearsals.run(text)
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads((result.out / "report.json").read_text())
    report["stdout"] = result.stdout
    logins = list(csv.DictReader((result.out / "logins.csv").read_text().splitlines()))
    return report, logins, result.out


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def expected(row: dict[str, Any], node_up: tuple[float, float]) -> str | None:
    """What a probe login should get (None: mailqueue decided it at a moment too close to
    a change, or while the node was being set up: from its event's time to the end of
    applying it)."""
    at = float(row["epoch"])
    asked = (at - float(row["login_seconds"]) - MARGIN, at + MARGIN)
    if row["store"] == "hosted-exchange":
        return "available"
    if any(asked[0] < change < asked[1] for change in (ts(WINDOW_START), ts(WINDOW_END))) or \
            (asked[0] < node_up[1] and node_up[0] < asked[1]):
        return None
    if ts(WINDOW_START) < at < ts(WINDOW_END):
        return "maintenance"
    if ts(WINDOW_END) < at < node_up[0] and row["node"] == "basic-2":
        return "node-down"
    return "available"


def check_access(report: dict[str, Any], logins: list[dict[str, Any]]) -> None:
    """Refused for maintenance in the window, then only basic-2's user for its node, then
    available; the two moments in order; the same story in figures and timeline."""
    late = next(e["applied_late_seconds"] for e in report["timeline"]
                if e["event"] == "basic-2 back")
    node_up = (ts(NODE_UP), ts(NODE_UP) + late + 1)
    phases: dict[str, int] = {}
    for row in logins:
        want = expected(row, node_up)
        if want is not None:
            assert row["outcome"] == want, row
            phases[want] = phases.get(want, 0) + 1
    assert phases["maintenance"] >= 10 and phases["node-down"] >= 2, phases
    assert phases["available"] >= 20, phases
    refusals = {(r["node"], r["outcome"]) for r in logins if r["outcome"] != "available"}
    assert refusals == {("basic-1", "maintenance"), ("basic-2", "maintenance"),
                        ("basic-2", "node-down")}
    maintenance = next(r["reply"] for r in logins if r["outcome"] == "maintenance")
    assert maintenance == ("Mailbox maintenance: basic is being upgraded (window upgrade) "
                           "until 2019-06-26T17:10:00+00:00; please try again later")
    assert {r["reply"] for r in logins if r["outcome"] == "node-down"} == {
        "Mailbox unavailable: its node basic-2 is down; please try again later"}

    probes = report["figures"]["probes"]
    # A round is due every 5 simulated minutes, 30 of them (a busy machine skips a few).
    assert probes["rounds"] + probes["skipped_rounds"] >= 30 and probes["rounds"] >= 20
    basic, exchange = probes["stores"]["basic"], probes["stores"]["hosted-exchange"]
    assert [u["node"] for u in basic["users"]] == ["basic-1", "basic-2"]
    assert basic["logins"]["error"] == exchange["logins"]["error"] == 0
    # Users read mail again once basic-2 is back; its queued mail arrives later (capped).
    assert node_up[0] < ts(basic["read_again"]) <= node_up[1] + 3 * probes["interval_seconds"]
    assert ts(basic["read_again"]) < ts(basic["mail_arrived"])
    assert basic["window_recipients"] == basic["window_delivered"] > 10
    assert exchange["read_again"] is None and exchange["last_refusal"] is None
    assert exchange["mail_arrived"] is None and exchange["window_recipients"] == 0
    assert "basic users: read mail again 2019-06-26T" in report["stdout"]
    timeline = [e["event"] for e in report["timeline"]]
    assert "basic: its users can read mail again (each probe user's first login that " \
           "succeeds after their last refusal)" in timeline
    assert any(e.startswith("basic: the mail queued for its users during the window has "
                            "arrived") for e in timeline)
    assert any(e.startswith('basic: logins refused (node down); clients show "Mailbox '
                            'unavailable: its node basic-2 is down') for e in timeline)


def test_probes_log_in_over_imap_through_dovecot(rehearsals: Rehearsals) -> None:
    require_dovecot_access()
    report, logins, out = rehearse(rehearsals, SCENARIO)
    check_access(report, logins)
    probes = report["figures"]["probes"]
    assert probes["via"] == "imap"
    assert "IMAP logins through Dovecot; 3 users every 5m" in report["stdout"]
    # After the drain the probe users' INBOXes hold exactly what was delivered to them.
    for store in probes["stores"].values():
        assert store["inbox_messages"] == store["delivered_to_probe_users"] > 0
    rows = list(csv.DictReader((out / "probes.csv").read_text().splitlines()))
    assert set(rows[0]) == {"time", "epoch", "store", "logins", "available", "maintenance",
                            "node_down", "error", "inbox_messages"}
    assert sum(int(r["node_down"]) for r in rows) == probes["stores"]["basic"]["logins"][
        "node-down"]
    assert report["figures"]["lost"] == 0 and report["figures"]["duplicated"] == 0


def test_decision_probes_tell_the_same_story(rehearsals: Rehearsals) -> None:
    # The browser's report test reads this run's report.html.
    report, logins, _ = rehearse(rehearsals, DECISION)
    check_access(report, logins)
    probes = report["figures"]["probes"]
    assert (probes["via"], probes["why"]) == ("decision", 'probes.via = "decision"')
    assert "the access decision, asked directly" in report["stdout"]
    assert all(s["inbox_messages"] is None for s in probes["stores"].values())
    assert {r["inbox_messages"] for r in logins} == {""}


def test_bad_probes_value_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "scenario.toml"
    path.write_text(SCENARIO.replace('interval = "5m"', 'interval = "often"'))
    result = subprocess.run([sys.executable, "-m", "mailqueue", "rehearse", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"mailqueue: error: {path}: probes.interval: not a duration: 'often' (use seconds "
        "or units like 90s, 15m, 1h30m, 2d)"]
