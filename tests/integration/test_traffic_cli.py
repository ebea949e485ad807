"""``mailqueue traffic profile`` and ``show`` as a user runs them: the profile file, the
printed shape, the chart, one-line errors, a progress bar on a terminal, a large log in
bounded memory."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from mailqueue.timeparse import parse_time
from tests.cli_run import Mq, cli_runner, one_line_error, write_config
from tests.maillogs import Sent, postfix_log

CHICAGO = ZoneInfo("America/Chicago")
START = parse_time("2019-06-26 09:00", "America/Chicago")


@pytest.fixture
def mq(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Mq:
    return cli_runner(capsys, monkeypatch)


def mail_log(path: Path, count: int = 40, every: float = 30.0) -> Path:
    sent = [Sent(at=START + n * every, sender=f"s{n}@sender{n % 3}.test",
                 recipients=tuple(f"u{n}{k}@{d}" for k, d in
                                  enumerate(["basic.example", "exchange.example",
                                             "elsewhere.example"][: 1 + n % 3])),
                 size=3000 + 100 * n) for n in range(count)]
    path.write_text("".join(line + "\n" for line in postfix_log(sent, CHICAGO)))
    os.utime(path, (START + 86400, START + 86400))
    return path


def test_profile_then_show_with_a_chart(tmp_path: Path, mq: Mq) -> None:
    log = mail_log(tmp_path / "mail.log")
    result = mq("traffic", "profile", log, "-o", tmp_path / "p.json", "--timezone",
                "America/Chicago")
    assert result.code == 0, result.err
    assert "messages: 40 " in result.out and "busiest hour: Wed 2019-06-26 09:00-10:00" \
        in result.out
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["format"] == "mailqueue-traffic-profile" and data["totals"]["messages"] == 40
    assert data["stores"] is None
    assert "@" not in json.dumps({k: v for k, v in data.items() if k != "sources"})
    shown = mq("traffic", "show", tmp_path / "p.json", "--chart", tmp_path / "p.png")
    assert shown.code == 0, shown.err
    assert "per message: 1: 35.0%  2: 32.5%  3: 32.5%" in shown.out
    assert "sizes:" in shown.out and "chart: " in shown.out
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_with_a_config_recipients_are_counted_per_store(tmp_path: Path, mq: Mq) -> None:
    config = write_config(tmp_path)
    result = mq("traffic", "profile", mail_log(tmp_path / "mail.log"), "-o",
                tmp_path / "p.json", "-c", config, "--timezone", "America/Chicago")
    assert result.code == 0, result.err
    stores = json.loads((tmp_path / "p.json").read_text())["stores"]
    # 40 messages with 1, 2, 3 recipients in turn: basic every time, exchange 26, else 13.
    assert stores == {"basic": 40, "hosted-exchange": 26, "(unmapped)": 13}
    assert "stores: basic 50.6%, hosted-exchange 32.9%, (unmapped) 16.5%" in result.out


@pytest.mark.parametrize(("args", "fragments"), [
    (["--resolution", "7s"], ["--resolution: give a length that divides an hour"]),
    (["--timezone", "Mars/Olympus"], ["--timezone: unknown time zone 'Mars/Olympus'"]),
    (["--since", "yesterday-ish"], ["--since: not a time: 'yesterday-ish'"]),
])
def test_bad_options_are_one_line(tmp_path: Path, mq: Mq, args: list[str],
                                  fragments: list[str]) -> None:
    result = mq("traffic", "profile", mail_log(tmp_path / "mail.log"), "-o",
                tmp_path / "p.json", *args)
    one_line_error(result, *fragments)
    assert result.code == 2 and not (tmp_path / "p.json").exists()


def test_bad_input_is_one_line(tmp_path: Path, mq: Mq) -> None:
    log = mail_log(tmp_path / "mail.log")
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not a log\n")
    one_line_error(mq("traffic", "profile", log, notes, "-o", tmp_path / "p.json"),
                   "notes.txt: not a mail log")
    one_line_error(mq("traffic", "profile", log, "-o", tmp_path), "is a directory")
    one_line_error(mq("traffic", "profile", log), "Missing option '-o'")
    one_line_error(mq("traffic", "show", notes), "notes.txt: not a traffic profile")
    one_line_error(mq("traffic", "show", tmp_path / "none.json"), "none.json: no such file")
    assert mq("traffic", "profile", log, "-o", tmp_path / "p.json").code == 0
    one_line_error(mq("traffic", "show", tmp_path / "p.json", "--chart",
                      tmp_path / "no" / "dir" / "c.png"), "--chart: cannot write")
    assert not (tmp_path / "no").exists()


def _log_of(path: Path, megabytes: int) -> Path:
    """A Postfix log of about ``megabytes`` MB: one day of mail, repeated day after day."""
    sent = [Sent(at=START + n * 9.0, sender=f"s{n}@sender{n % 7}.test",
                 recipients=(f"u{n % 500}@basic.example",), size=2000 + n) for n in range(1200)]
    day = "".join(line + "\n" for line in postfix_log(sent, CHICAGO)).encode()
    with path.open("wb") as out:
        for n in range(max(1, megabytes * 1024 * 1024 // len(day))):
            out.write(day.replace(b"Jun 26 ", f"Jul {1 + n % 28:2d} ".encode()))
    os.utime(path, (START + 40 * 86400,) * 2)
    return path


MEASURE = """
import resource, sys
from pathlib import Path
from mailqueue.traffic.reader import ReadOptions, profile_logs
profile = profile_logs([Path(sys.argv[1])], ReadOptions(timezone="America/Chicago"))
print(profile.totals.messages, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.timeout(300)
def test_a_large_log_is_read_in_bounded_memory(tmp_path: Path) -> None:
    peaks = []
    for size in (2, 40):
        log = _log_of(tmp_path / f"mail-{size}.log", size)
        out = subprocess.run([sys.executable, "-c", MEASURE, str(log)], capture_output=True,
                             text=True, timeout=240, check=True).stdout.split()
        peaks.append(int(out[1]))  # KiB
        assert int(out[0]) > 1000 * size
    # Twenty times the log, the same memory (give or take the interpreter's own noise).
    assert peaks[1] - peaks[0] < 16 * 1024, peaks


def test_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    log = _log_of(tmp_path / "mail.log", 4)
    main, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "mailqueue", "traffic", "profile", str(log),
                             "-o", str(tmp_path / "p.json")], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=terminal,
                            env={**os.environ, "TERM": "xterm", "COLUMNS": "100"})
    os.close(terminal)
    seen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    os.close(main)
    assert proc.wait(30) == 0
    assert b"reading logs" in seen and b"MB" in seen
    # Not on a pipe: the output a script reads has no bar.
    piped = subprocess.run([sys.executable, "-m", "mailqueue", "traffic", "profile", str(log),
                            "-o", str(tmp_path / "q.json")], capture_output=True, timeout=60)
    assert piped.returncode == 0 and b"reading logs" not in piped.stderr + piped.stdout
