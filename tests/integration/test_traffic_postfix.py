"""A real Postfix's log, read into a traffic profile: what was sent comes back.

A private Postfix (:mod:`mailqueue.testing.postfix`) on loopback takes a known pattern of
messages over SMTP — a steady trickle, two bursts, two messages it bounces (and answers
with notices of its own), a last trickle — and logs to its ``maillog_file``, which
``postfix logrotate`` rotates and gzips twice on the way. ``mailqueue traffic profile``
reads the rotated set, handed over in the wrong order, and must recover:

- the count of messages (the bounce notices Postfix made are not arrivals);
- their sizes: each within the bin of what was sent plus the ``Received:`` line Postfix
  adds (under 600 bytes a message), the totals likewise;
- their recipient counts and domains, and their senders' domains, exactly;
- their timing: each arrival within 2 s of when the test sent it (Postfix logs whole
  seconds; a busy machine adds a moment), so the bursts stand where they were.

The same log cut into a Debian-style set (``mail.log.2.gz``, ``mail.log.1``, ``mail.log``)
with other programs' lines between and a last line cut short reads the same; and the
profile, replayed in a rehearsal from the log's first moment, sends each message within
a second of its logged time (three of its sending).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
import random
import shutil
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailqueue.cli.traffic import local_zone
from mailqueue.rehearsal.scenario import load_scenario
from mailqueue.rehearsal.traffic import plan_traffic
from mailqueue.testing.postfix import POSTFIX, Postfix, require_postfix
from mailqueue.timeparse import format_time
from mailqueue.traffic.profile import TrafficProfile, load_profile
from mailqueue.traffic.show import by_doubling
from tests.cli_run import Mq, cli_runner

# A drill: the private Postfix takes half a minute to pass its pattern of mail through.
pytestmark = [pytest.mark.timeout(240), pytest.mark.drill]
OVERHEAD = 600  # bytes a message may grow by in Postfix (its Received: line)


@dataclasses.dataclass(frozen=True)
class Sent:
    at: float
    sender: str
    recipients: tuple[str, ...]
    size: int


@dataclasses.dataclass(frozen=True)
class Run:
    sent: list[Sent]
    logs: list[Path]  # the rotated set Postfix wrote, oldest first


def _message(sender: str, recipients: tuple[str, ...], size: int, n: int) -> bytes:
    head = (f"From: <{sender}>\r\nTo: {', '.join(recipients)}\r\nSubject: pattern {n}\r\n"
            f"Date: Wed, 26 Jun 2019 17:00:00 -0500\r\n"
            f"Message-ID: <pattern-{n}@{sender.partition('@')[2]}>\r\n\r\n").encode()
    line = b"x" * 76 + b"\r\n"
    body = line * ((size - len(head)) // len(line))
    return head + body + b"y" * (size - len(head) - len(body) - 2) + b"\r\n"


def _send(port: int, sent: list[Sent], sender: str, recipients: tuple[str, ...], size: int,
          count: int, every: float = 0.0) -> None:
    """``count`` messages over one connection, ``every`` seconds apart (0: a burst)."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as client:
        for _ in range(count):
            n = len(sent)
            at = time.time()
            client.sendmail(sender, list(recipients), _message(sender, recipients, size, n))
            sent.append(Sent(at, sender, recipients, size))
            if every:
                time.sleep(max(0.0, at + every - time.time()))


def _rotate(postfix: Postfix) -> None:
    subprocess.run([POSTFIX, "-c", str(postfix.config_dir), "logrotate"], check=True,
                   capture_output=True, timeout=30)
    time.sleep(1.1)  # the next rotation's name has another second


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    require_postfix()
    postfix = Postfix(main={
        "default_transport": "discard",
        "transport_maps": "inline:{ bounce.example=error:nosuchuser }",
        "smtpd_reject_unlisted_recipient": "no",  # accept it, then bounce it
        "maillog_file_compressor": "gzip"})
    postfix.start()
    sent: list[Sent] = []
    try:
        port = postfix.port
        _send(port, sent, "news@news.example", ("ann@basic.example",), 3000, 8, every=1.0)
        time.sleep(2)
        _send(port, sent, "orders@shop.example", ("bob@basic.example", "cy@exchange.example",
                                                  "dee@partner.example"), 24000, 20)
        postfix.wait_log(r": removed", count=28)  # in the file before its rotation
        _rotate(postfix)
        time.sleep(1)
        _send(port, sent, "orders@shop.example", ("eve@exchange.example",
                                                  "fay@exchange.example"), 180000, 12)
        _send(port, sent, "orders@shop.example", ("nobody@bounce.example",), 3000, 2)
        postfix.wait_log(r": removed", count=12 + 2 + 2)  # and the notices Postfix made
        _rotate(postfix)
        _send(port, sent, "alerts@bank.example", ("gil@basic.example",), 3000, 5, every=1.0)
        postfix.wait_log(r": removed", count=5)
    finally:
        keep = tmp_path_factory.mktemp("postfix-logs")
        for log in postfix.base.glob("postfix.log*"):
            shutil.copy2(log, keep / log.name)
        postfix.stop()
    logs = [*sorted(keep.glob("postfix.log.*.gz")), keep / "postfix.log"]
    yield Run(sent=sent, logs=logs)


@pytest.fixture
def mq(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Mq:
    return cli_runner(capsys, monkeypatch)


def _arrival_times(profile: TrafficProfile) -> list[float]:
    return [profile.interval_start(i) for i, n in enumerate(profile.arrivals.counts)
            for _ in range(n)]


def _check_recovers(profile: TrafficProfile, sent: list[Sent]) -> None:
    assert profile.totals.messages == len(sent) == 47
    assert profile.parse.generated == 2  # the notices Postfix sent back are not arrivals
    assert profile.recipient_counts() == {1: 15, 2: 12, 3: 20}
    assert profile.totals.recipients == sum(len(m.recipients) for m in sent)
    assert profile.recipient_domains == {"basic.example": 33, "exchange.example": 44,
                                         "partner.example": 20, "bounce.example": 2}
    assert profile.sender_domains == {"shop.example": 34, "news.example": 8,
                                      "bank.example": 5}
    sizes = sum(m.size for m in sent)
    assert sizes < profile.totals.bytes < sizes + OVERHEAD * len(sent)
    want: dict[int, int] = {}
    for m in sent:
        for low, _, _ in by_doubling([(m.size, m.size + 1, 1)]):
            want[low] = want.get(low, 0) + 1
    assert {low: n for low, _, n in by_doubling(profile.sizes)} == want
    # Timing: paired in order, every logged arrival within 2 s of its sending.
    logged = _arrival_times(profile)
    assert all(abs(log - m.at) <= 2.0 for log, m in
               zip(logged, sorted(sent, key=lambda m: m.at), strict=True)), \
        [(round(log - m.at, 2)) for log, m in zip(logged, sent, strict=True)]


def test_the_profile_recovers_what_was_sent(run: Run, mq: Mq, tmp_path: Path) -> None:
    assert len(run.logs) == 3 and run.logs[0].read_bytes()[:2] == b"\x1f\x8b"
    shuffled = [run.logs[2], run.logs[0], run.logs[1]]
    result = mq("traffic", "profile", *shuffled, "-o", tmp_path / "p.json",
                "--resolution", "1s")
    assert result.code == 0, result.err
    profile = load_profile(tmp_path / "p.json")
    assert [Path(s.file).name for s in profile.sources] == [p.name for p in run.logs]
    _check_recovers(profile, run.sent)
    assert profile.parse.unknown == 0 and profile.parse.truncated == 0
    # The bursts are where they were: twenty messages within two seconds, then twelve.
    counts = profile.arrivals.counts
    assert max(counts[i] + counts[i + 1] for i in range(len(counts) - 1)) >= 12
    # By the minute (the default), the same messages.
    assert mq("traffic", "profile", *run.logs, "-o", tmp_path / "m.json").code == 0
    minute = load_profile(tmp_path / "m.json")
    assert minute.arrivals.resolution == 60 and minute.totals == profile.totals
    assert "busiest minute" in mq("traffic", "show", tmp_path / "m.json").out


def test_a_debian_style_set_with_noise_and_a_cut_line_reads_the_same(
        run: Run, mq: Mq, tmp_path: Path) -> None:
    text = b"".join(gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
                    for p in run.logs).decode()
    rng = random.Random(7)
    lines, others = [], 0
    for line in text.splitlines():
        lines.append(line)
        if rng.random() < 0.25:
            stamp = line[:15]
            lines.append(rng.choice([f"{stamp} pf CRON[812]: (root) CMD (run-parts --report "
                                     "/etc/cron.hourly)",
                                     f"{stamp} pf dovecot: imap-login: Login: user=<ann>, "
                                     "method=PLAIN, rip=127.0.0.1, lip=127.0.0.1",
                                     f"{stamp} pf kernel: [ 812.118] audit: type=1400"]))
            others += 1
    third = len(lines) // 3
    parts = [lines[:third], lines[third:2 * third], lines[2 * third:]]
    stamp = os.stat(run.logs[-1]).st_mtime
    for name, part in zip(["mail.log.2.gz", "mail.log.1", "mail.log"], parts, strict=True):
        data = ("\n".join(part) + "\n").encode()
        if name == "mail.log":
            data += part[-1][:30].encode()  # the line being written when the copy was made
        (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
        os.utime(tmp_path / name, (stamp, stamp))
    result = mq("traffic", "profile", tmp_path / "mail.log", tmp_path / "mail.log.1",
                tmp_path / "mail.log.2.gz", "-o", tmp_path / "p.json", "--resolution", "1s")
    assert result.code == 0, result.err
    profile = load_profile(tmp_path / "p.json")
    _check_recovers(profile, run.sent)
    assert profile.parse.other_programs == others and profile.parse.truncated == 1
    strict = mq("traffic", "profile", tmp_path / "mail.log", tmp_path / "mail.log.1",
                tmp_path / "mail.log.2.gz", "-o", tmp_path / "s.json", "--strict")
    assert strict.code == 0, strict.err  # other programs and a cut last line are no error


REPLAY = """
[scenario]
name = "Replay of a real Postfix"
timezone = "{zone}"
start = "{start}"
end = "{end}"
speed = 20
seed = 3
sample = "10s"

[[stores]]
name = "basic"
domains = ["basic.example"]
users = 50

[[stores]]
name = "hosted-exchange"
domains = ["exchange.example"]
users = 50

[traffic]
profile = "p.json"
shift = "{start}"
connections = 4
"""


def test_the_profile_replays_in_a_rehearsal(run: Run, mq: Mq, tmp_path: Path) -> None:
    assert mq("traffic", "profile", *run.logs, "-o", tmp_path / "p.json",
              "--resolution", "1s").code == 0
    profile = load_profile(tmp_path / "p.json")
    zone = local_zone()
    start = profile.arrivals.start_ts
    seconds = len(profile.arrivals.counts)  # the log, second by second
    (tmp_path / "replay.toml").write_text(REPLAY.format(
        zone=zone, start=format_time(start, zone)[:19].replace("T", " "),
        end=format_time(start + seconds, zone)[:19].replace("T", " ")))
    result = subprocess.run([sys.executable, "-m", "mailqueue", "rehearse",
                             str(tmp_path / "replay.toml"), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())["figures"]
    replay = report["replay"]
    assert replay["planned_messages"] == replay["accepted_messages"] == 47
    assert replay["expected_messages"] == 47 and replay["coverage"] == 1.0
    assert report["lost"] == 0 and report["delivered"] == report["accepted_recipients"]
    # partner.example and bounce.example are no store's: spread over the two stores.
    assert set(replay["store_share"]) == {"basic", "hosted-exchange"}
    # Recipient counts are drawn from the profile's distribution, message by message.
    assert set(replay["recipients_by_count"]) <= {"1", "2", "3"}
    assert sum(replay["recipients_by_count"].values()) == 47
    rows = (tmp_path / "out" / "traffic.csv").read_text().splitlines()
    assert rows[0] == "time,epoch,expected,planned,accepted"
    assert len(rows) == 1 + math.ceil(seconds / 10)
    assert (tmp_path / "out" / "traffic.png").exists()
    assert "replayed from" in result.stdout
    # The plan, drawn again from the same seed: each message within a second of its
    # logged arrival (the profile's interval), so within three of its sending.
    plan = plan_traffic(load_scenario(tmp_path / "replay.toml"), 3)
    assert all(abs(item.at - m.at) <= 3.0 for item, m in
               zip(plan, sorted(run.sent, key=lambda m: m.at), strict=True))
