"""A rehearsal that drains into a staging mailbox tier: a real Dovecot over LMTP.

Dovecot knows all but two of the scenario's mailboxes (those two bounce with its own
``550 5.1.1``), and the scenario takes the store's one node down for a while after the
window: the report reads the delivered mail in Dovecot's Maildirs (``verify_path``) and
shows what the backend answered over time.
"""

from __future__ import annotations

import csv
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from mailqueue.testing.dovecot import Dovecot

pytestmark = pytest.mark.usefixtures("dovecot_installed")

USERS = 12
MISSING = ("user00010@basic.example", "user00011@basic.example")

SCENARIO = """
[scenario]
name = "Staging tier"
timezone = "UTC"
start = "2019-06-26 16:00"
end = "2019-06-26 19:00"
speed = 3600
seed = 3
sample = "10m"

[server.queue.retry]
initial_delay = "5m"
max_delay = "10m"
jitter = 0

[[stores]]
name = "basic"
kind = "lmtp"
hosts = ["{host}"]
verify_path = "{root}"
domains = ["basic.example"]
users = {users}

[[windows]]
name = "upgrade"
stores = ["basic"]
start = "2019-06-26 16:00"
end = "2019-06-26 17:00"

[traffic]
rate = 40
connections = 2
size_median = "2KiB"
size_max = "4KiB"
recipients = [0.6, 0.4]

[[events]]
at = "2019-06-26 16:59"
action = "node.down"
nodes = ["basic-1"]
note = "The mailbox tier is still coming up"

[[events]]
at = "2019-06-26 17:20"
action = "node.up"
nodes = ["basic-1"]
note = "The mailbox tier is back"
"""


def test_a_rehearsal_drains_into_dovecot_and_reports_its_replies(tmp_path: Path) -> None:
    users = [f"user{n:05d}@basic.example" for n in range(USERS)]
    with Dovecot(users=[u for u in users if u not in MISSING]) as dovecot:
        path = tmp_path / "scenario.toml"
        path.write_text(SCENARIO.format(host=dovecot.lmtp_host, root=dovecot.mail_root,
                                        users=USERS))
        result = subprocess.run(
            [sys.executable, "-m", "mailqueue", "rehearse", str(path), "--out",
             str(tmp_path / "out"), "--workdir", str(tmp_path / "work")],
            capture_output=True, text=True, timeout=100, check=False)
        assert result.returncode == 0, result.stderr + result.stdout
        delivered_in_dovecot = sum(len(dovecot.files(u)) for u in users)
    out = tmp_path / "out"
    figures = json.loads((out / "report.json").read_text())["figures"]
    assert figures["lost"] == 0 and figures["duplicated"] == 0 and figures["pending"] == 0
    assert figures["unchecked"] == 0 and figures["unexpected_files"] == 0
    assert figures["delivered"] == delivered_in_dovecot > 20
    assert figures["bounced"] > 0
    assert figures["delivered"] + figures["bounced"] == figures["accepted_recipients"]
    replies = figures["backend"]["basic"]
    assert replies["accepted"] == figures["delivered"]
    assert set(replies["bounced"]) == {"550"}
    assert sum(replies["bounced"].values()) == figures["bounced"]
    assert replies["deferred"].get("node", 0) > 0  # the node down after the window
    rows = list(csv.DictReader((out / "backend.csv").read_text().splitlines()))
    assert rows and {"accepted", "deferred", "bounced", "bounced 550",
                     "deferred node"} <= set(rows[0])
    assert sum(int(r["accepted"]) for r in rows) == replies["accepted"]
    assert "basic replies: accepted" in result.stdout
    # The chart gains a third panel, the replies per interval: a taller picture.
    width, height = struct.unpack(">II", (out / "queue.png").read_bytes()[16:24])
    assert (width, height) == (12 * 110, 9 * 110)
