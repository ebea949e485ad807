"""Mail logs read into traffic profiles: Postfix and Exim lines, rotated and compressed
sets, year-less times across New Year, noise, cut lines, clock jumps, bad input."""

from __future__ import annotations

import gzip
import os
import random
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from mailqueue.errors import MailLogError, ProfileError
from mailqueue.timeparse import parse_time
from mailqueue.traffic.profile import TrafficProfile, load_profile, save_profile
from mailqueue.traffic.reader import ReadOptions, profile_logs
from mailqueue.traffic.sources import order_logs
from tests.maillogs import Sent, exim_message, noise, postfix_log

CHICAGO = ZoneInfo("America/Chicago")
START = parse_time("2019-06-26 17:00", "America/Chicago")


def messages(count: int, start: float = START, every: float = 7.0) -> list[Sent]:
    rng = random.Random(count)
    out = []
    for n in range(count):
        rcpts = tuple(f"u{n}x{k}@{rng.choice(['basic.example', 'exchange.example'])}"
                      for k in range(1 + n % 3))
        out.append(Sent(at=start + n * every, sender=f"s{n}@{['a.test', 'b.test'][n % 2]}",
                        recipients=rcpts, size=1000 + 37 * n))
    return out


def write(path: Path, lines: list[str], end: str = "\n", mtime: float | None = None) -> Path:
    data = "".join(line + end for line in lines).encode()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def read(*paths: Path, **options: object) -> TrafficProfile:
    settings: dict[str, object] = {"timezone": "America/Chicago", **options}
    return profile_logs(list(paths), ReadOptions(**settings))  # type: ignore[arg-type]


def test_postfix_lines_make_one_arrival_per_message(tmp_path: Path) -> None:
    sent = messages(30)
    log = write(tmp_path / "mail.log", postfix_log(sent, CHICAGO, defer_first=True),
                mtime=START + 86400)
    profile = read(log)
    assert profile.totals.messages == 30
    assert profile.totals.recipients == sum(len(m.recipients) for m in sent)
    assert profile.totals.bytes == sum(m.size for m in sent)
    assert profile.recipient_counts() == {1: 10, 2: 10, 3: 10}
    domains = {d: sum(r.endswith("@" + d) for m in sent for r in m.recipients)
               for d in ("basic.example", "exchange.example")}
    assert profile.recipient_domains == {d: n for d, n in domains.items() if n}
    assert profile.sender_domains == {"a.test": 15, "b.test": 15}
    assert profile.span.start == "2019-06-26T17:00:00-05:00"
    assert sum(profile.arrivals.counts) == 30
    # one a minute... 7 s apart: 60 s intervals hold 8 or 9
    assert max(profile.arrivals.counts) <= 9 and profile.arrivals.resolution == 60
    assert profile.parse.unknown == profile.parse.other_programs == 0


def test_what_is_not_an_arrival_is_counted_apart(tmp_path: Path) -> None:
    z = CHICAGO
    t = START
    stamp = datetime.fromtimestamp(t, z).strftime("%b %d %H:%M:%S")
    lines = postfix_log(messages(2), z)
    lines += [
        # a bounce notice Postfix makes itself
        f"{stamp} mx1 postfix/bounce[5]: 1A2B3C4D5E: sender non-delivery notification: "
        "9F8E7D6C5B",
        f"{stamp} mx1 postfix/cleanup[6]: 9F8E7D6C5B: message-id=<x@mx1>",
        f"{stamp} mx1 postfix/qmgr[7]: 9F8E7D6C5B: from=<>, size=2100, nrcpt=1 "
        "(queue active)",
        f"{stamp} mx1 postfix/qmgr[7]: 9F8E7D6C5B: removed",
        # mail back from a content filter on this host, and its original
        f"{stamp} mx1 postfix/smtpd[8]: 0A0B0C0D0E: client=localhost[127.0.0.1]",
        f"{stamp} mx1 postfix/qmgr[7]: 0A0B0C0D0E: from=<a@a.test>, size=900, nrcpt=1 "
        "(queue active)",
        f"{stamp} mx1 postfix/smtpd[9]: 1F1F1F1F1F: client=client.example[192.0.2.10]",
        f"{stamp} mx1 postfix/qmgr[7]: 1F1F1F1F1F: from=<a@a.test>, size=800, nrcpt=1 "
        "(queue active)",
        f"{stamp} mx1 postfix/smtp[10]: 1F1F1F1F1F: to=<u@basic.example>, "
        "relay=127.0.0.1[127.0.0.1]:10024, delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent "
        "(250 2.0.0 from MTA(smtp:[127.0.0.1]:10025): 250 2.0.0 Ok: queued as 0A0B0C0D0E)",
        f"{stamp} mx1 postfix/qmgr[7]: 1F1F1F1F1F: removed",
        f"{stamp} mx1 postfix/lmtp[11]: 0A0B0C0D0E: to=<u@basic.example>, relay=mbox[private/"
        "dovecot-lmtp], delay=0.1, delays=0/0/0/0.1, dsn=2.0.0, status=sent (250 2.0.0 Saved)",
        f"{stamp} mx1 postfix/qmgr[7]: 0A0B0C0D0E: removed",
        # refused: before a queue id, and by a milter after DATA
        f"{stamp} mx1 postfix/smtpd[8]: NOQUEUE: reject: RCPT from x.example[192.0.2.66]: "
        "554 5.7.1 <spam@basic.example>: Relay access denied; from=<s@x.example> "
        "to=<spam@basic.example> proto=ESMTP helo=<x>",
        f"{stamp} mx1 postfix/smtpd[8]: 2C2C2C2C2C: client=x.example[192.0.2.66]",
        f"{stamp} mx1 postfix/cleanup[6]: 2C2C2C2C2C: milter-reject: END-OF-MESSAGE from "
        "x.example[192.0.2.66]: 5.7.1 Spam; from=<s@x.example> to=<u@basic.example>",
        # begun, never queued (the client went away)
        f"{stamp} mx1 postfix/smtpd[8]: 3D3D3D3D3D: client=y.example[192.0.2.67]",
        f"{stamp} mx1 postfix/qmgr[7]: 3D3D3D3D3D: removed",
        # received before the log begins: its client= line is in an older file
        f"{stamp} mx1 postfix/qmgr[7]: 4E4E4E4E4E: from=<b@b.test>, size=700, nrcpt=1 "
        "(queue active)",
        f"{stamp} mx1 postfix/qmgr[7]: 4E4E4E4E4E: removed",
        # a notice done before the bounce daemon's line about it
        f"{stamp} mx1 postfix/cleanup[6]: 5F5F5F5F5F: message-id=<y@mx1>",
        f"{stamp} mx1 postfix/qmgr[7]: 5F5F5F5F5F: from=<>, size=2100, nrcpt=1 "
        "(queue active)",
        f"{stamp} mx1 postfix/qmgr[7]: 5F5F5F5F5F: removed",
        f"{stamp} mx1 postfix/bounce[5]: 1B1B1B1B1B: sender non-delivery notification: "
        "5F5F5F5F5F",
    ]
    profile = read(write(tmp_path / "mail.log", lines, mtime=START + 3600))
    assert profile.totals.messages == 3  # two, and the original of the filtered one
    parse = profile.parse
    assert (parse.generated, parse.reinjected, parse.rejected, parse.incomplete,
            parse.before_log) == (2, 1, 2, 1, 1)
    assert "<>" not in profile.sender_domains


def test_exim_main_log_in_its_documented_forms(tmp_path: Path) -> None:
    sent = messages(12)
    four = Sent(at=START + 500, sender="<>", size=4000,
                recipients=("a@basic.example", "b@basic.example", "c@exchange.example",
                            "gone@exchange.example"))
    lines = [line for m in sent for line in exim_message(m, CHICAGO)]
    lines += list(exim_message(four, CHICAGO, pid=True, offset=True))
    lines += list(exim_message(sent[0], CHICAGO, received_recipients=True))
    lines += [
        "2019-06-26 17:02:03 1hgXYZ-0005Zq-Kl <= <> R=1h0001-000001-Ab U=Debian-exim "
        "P=local S=2345",  # a bounce Exim makes
        "2019-06-26 17:02:04 1hgXYZ-0005Zq-Kl => s0@a.test R=dnslookup T=remote_smtp",
        "2019-06-26 17:02:04 1hgXYZ-0005Zq-Kl Completed",
        "2019-06-26 17:02:05 H=spam.example [192.0.2.66] F=<s@x.example> rejected RCPT "
        "<nobody@basic.example>: Unknown user",
        "2019-06-26 17:02:06 Start queue run: pid=2400",
        "2019-06-26 17:02:07 End queue run: pid=2400",
    ]
    profile = read(write(tmp_path / "mainlog", lines))
    assert profile.totals.messages == 14
    counts = profile.recipient_counts()
    assert counts == {1: 5, 2: 4, 3: 4, 4: 1}  # sent[0] twice
    assert profile.totals.bytes == sum(m.size for m in sent) + 4000 + sent[0].size
    assert profile.sender_domains["<>"] == 1
    assert profile.parse.generated == 1 and profile.parse.rejected == 1
    assert profile.sources[0].format == "exim"


def test_exim_through_syslog(tmp_path: Path) -> None:
    lines = [f"Jun 26 17:00:0{n} mx1 exim[23{n}]: " + line.split(" ", 2)[2]
             for n, line in enumerate(exim_message(messages(1)[0], CHICAGO))]
    profile = read(write(tmp_path / "mail.log", lines, mtime=START + 3600))
    assert profile.totals.messages == 1 and profile.sources[0].format == "exim"


def test_a_rotated_compressed_set_in_any_order_reads_as_one_log(tmp_path: Path) -> None:
    zone = CHICAGO
    lines = postfix_log(messages(80, every=90), zone, defer_first=True)
    whole = read(write(tmp_path / "whole.log", lines, mtime=START + 86400))
    rng = random.Random(3)
    mixed, others = [], 0
    for line in lines:
        mixed.append(line)
        if rng.random() < 0.3:
            mixed.append(noise(START, zone, rng))
            others += "postfix/" not in mixed[-1]
    quarter = len(mixed) // 4  # messages span the cuts: arrival in one file, end in the next
    parts = [mixed[:quarter], mixed[quarter:2 * quarter], mixed[2 * quarter:3 * quarter],
             mixed[3 * quarter:]]
    names = ["mail.log.3.gz", "mail.log.2.gz", "mail.log.1", "mail.log"]
    rotated = tmp_path / "rotated"
    rotated.mkdir()
    paths = [write(rotated / name, part, mtime=START + 86400)
             for name, part in zip(names, parts, strict=True)]
    assert [f.path.name for f in order_logs([paths[1], paths[3], paths[0], paths[2]])[0]] \
        == names
    profile = read(paths[2], paths[0], paths[3], paths[1])
    assert profile.arrivals == whole.arrivals and profile.totals == whole.totals
    assert profile.recipient_counts() == whole.recipient_counts()
    assert profile.parse.other_programs == others > 0
    assert [s.file for s in profile.sources] == [str(p) for p in paths]


def test_dated_rotation_sorts_by_date(tmp_path: Path) -> None:
    names = ["maillog-20190701.gz", "maillog", "maillog-20190624.gz"]
    for name in names:
        write(tmp_path / name, [])
    ordered = order_logs([tmp_path / n for n in names])[0]
    assert [f.path.name for f in ordered] == ["maillog-20190624.gz", "maillog-20190701.gz",
                                              "maillog"]


def test_year_less_times_cross_new_year_through_a_rotated_set(tmp_path: Path) -> None:
    eve = parse_time("2019-12-31 23:50", "America/Chicago")
    sent = messages(20, start=eve, every=60)  # 23:50 to 00:09
    lines = postfix_log(sent, CHICAGO)
    cut = next(i for i, line in enumerate(lines) if line.startswith("Jan"))
    new_year = parse_time("2020-01-02 06:25", "America/Chicago")
    old = write(tmp_path / "mail.log.1", lines[:cut], mtime=new_year - 86400)
    current = write(tmp_path / "mail.log", lines[cut:], mtime=new_year)
    profile = read(current, old)
    assert profile.span.start == "2019-12-31T23:50:00-06:00"
    assert profile.span.end.startswith("2020-01-01T00:09")
    assert profile.totals.messages == 20 and profile.parse.clock_jumps == 0
    # One file across New Year, its year from --year (the year of its last line).
    (tmp_path / "one").mkdir()
    single = write(tmp_path / "one" / "mail.log", lines)
    assert read(single, year=2020).span.start == "2019-12-31T23:50:00-06:00"
    assert read(single, year=2025).span.start == "2024-12-31T23:50:00-06:00"


def test_noise_unknown_lines_and_a_cut_last_line(tmp_path: Path) -> None:
    rng = random.Random(1)
    lines = postfix_log(messages(5), CHICAGO)
    others = [noise(START, CHICAGO, rng, others_only=True) for _ in range(4)]
    lines[3:3] = [*others, "garbage in the log", ""]
    log = tmp_path / "mail.log"
    log.write_bytes(("\n".join(lines) + "\n" + lines[0][:25]).encode())  # cut mid-line
    os.utime(log, (START + 3600, START + 3600))
    profile = read(log)
    assert profile.totals.messages == 5
    assert profile.parse.other_programs == 4 and profile.parse.unknown == 1
    assert profile.parse.truncated == 1
    with pytest.raises(MailLogError, match=r"mail\.log:8: not a Postfix or Exim log line: "
                                           r"'garbage in the log' \(--strict"):
        read(log, strict=True)
    lines.remove("garbage in the log")  # --strict reads the rest; the cut line is counted
    log.write_bytes(("\n".join(lines) + "\n" + lines[0][:25]).encode())
    assert read(log, strict=True).parse.truncated == 1


def test_a_compressed_file_cut_off_counts_as_cut(tmp_path: Path) -> None:
    data = gzip.compress(("\n".join(postfix_log(messages(40), CHICAGO)) + "\n").encode())
    log = tmp_path / "mail.log.1.gz"
    log.write_bytes(data[: len(data) * 3 // 4])
    os.utime(log, (START + 3600, START + 3600))
    profile = read(log)
    assert 0 < profile.totals.messages < 40 and profile.parse.truncated == 1


def test_a_file_that_is_not_a_mail_log_is_one_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("name,size\nalice,3\n")
    with pytest.raises(MailLogError, match=r"notes\.txt: not a mail log: its first lines are "
                                           r"not syslog, Postfix or Exim log lines \(line 1"):
        read(text)
    binary = tmp_path / "photo.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(MailLogError, match=r"photo\.png: not a mail log \(binary data\)"):
        read(binary)
    zstd = tmp_path / "mail.log.2.zst"
    zstd.write_bytes(b"\x28\xb5\x2f\xfd" + b"\x00" * 20)
    with pytest.raises(MailLogError, match="compressed with zstd; decompress it first"):
        read(zstd)
    other = write(tmp_path / "syslog", [noise(START, CHICAGO, random.Random(n), True)
                                        for n in range(5)], mtime=START)
    with pytest.raises(MailLogError, match=r"no Postfix or Exim lines in .*syslog \(5 lines"):
        read(other)
    with pytest.raises(MailLogError, match="no such file"):
        read(tmp_path / "missing.log")
    with pytest.raises(MailLogError, match="is a directory"):
        read(tmp_path)


def test_clock_jumps_are_counted(tmp_path: Path) -> None:
    sent = messages(10, every=60)
    lines = postfix_log(sent[:5], CHICAGO) + postfix_log(
        [Sent(m.at - 600, m.sender, m.recipients, m.size) for m in sent[5:]], CHICAGO)
    profile = read(write(tmp_path / "mail.log", lines, mtime=START + 3600))
    assert profile.parse.clock_jumps == 1
    assert 300 < profile.parse.largest_clock_jump_seconds <= 600
    assert profile.totals.messages == 10


def test_the_hour_daylight_saving_repeats_is_read_in_order(tmp_path: Path) -> None:
    # 1 November 2020, America/Chicago: 01:00-02:00 comes twice (CDT, then CST).
    first = parse_time("2020-11-01T00:30:00-05:00")
    sent = messages(10, start=first, every=900)  # every 15 min for 2.5 h real time
    profile = read(write(tmp_path / "mail.log", postfix_log(sent, CHICAGO),
                         mtime=first + 86400))
    assert profile.parse.clock_jumps == 0
    assert profile.span.start_ts == first
    assert profile.span.end_ts - profile.span.start_ts == pytest.approx(9 * 900 + 0.6, abs=1)
    assert sum(profile.arrivals.counts) == 10


def test_rfc3339_times(tmp_path: Path) -> None:
    stamp = "2019-06-26T17:00:01.123456-05:00"
    lines = [line.replace(line[:15], stamp, 1)
             for line in postfix_log(messages(1), CHICAGO, padded_zero=True)]
    profile = read(write(tmp_path / "mail.log", lines))
    assert profile.span.start == "2019-06-26T17:00:01-05:00"


def test_since_and_until_and_resolution(tmp_path: Path) -> None:
    log = write(tmp_path / "mail.log", postfix_log(messages(60, every=60), CHICAGO),
                mtime=START + 86400)
    profile = read(log, since=START + 600, until=START + 1200, resolution=10)
    assert profile.totals.messages == 10 and profile.parse.outside == 50
    assert profile.arrivals.resolution == 10


def test_the_profile_file_round_trips_and_bad_ones_are_one_error(tmp_path: Path) -> None:
    log = write(tmp_path / "mail.log", postfix_log(messages(5), CHICAGO), mtime=START + 60)
    profile = read(log)
    path = tmp_path / "p.json"
    save_profile(profile, path)
    assert load_profile(path) == profile
    text = path.read_text()
    assert not any(f"u{n}x0@" in text for n in range(5))  # no address
    for body, message in [("{", "not JSON"), ('{"a": 1}', "not a traffic profile"),
                          (text.replace('"resolution": 60', '"resolution": 0'),
                           "arrivals.resolution")]:
        path.write_text(body)
        with pytest.raises(ProfileError, match=message):
            load_profile(path)
    with pytest.raises(ProfileError, match="no such file"):
        load_profile(tmp_path / "none.json")
