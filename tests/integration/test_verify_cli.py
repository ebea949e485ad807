"""``mailqueue verify`` against a served instance (a subprocess), with injected damage."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import aiosmtplib

from mailqueue.cli import main
from mailqueue.mailbox.maildir import copy_key
from tests.helpers import all_files, message, wait_for
from tests.served import free_port, start, wait_listening, write_config

BASIC, EXCHANGE = "basic.example", "exchange.example"
STORES = {"basic": BASIC, "hosted-exchange": EXCHANGE}


def mq(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The command line in a process of its own, exactly as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "mailqueue", *args, "-c", str(config)],
                          capture_output=True, text=True, timeout=60)


def mq_here(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The same entry point (``main``) in this process: quicker for repeated checks."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([*args, "-c", str(config)])
        except SystemExit as exc:
            code = int(exc.code or 0)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


async def send(port: int, rcpts: list[str], subject: str) -> None:
    errors, _ = await aiosmtplib.send(message(subject, f"body of {subject}"),
                                      sender="a@src.test", recipients=rcpts,
                                      hostname="127.0.0.1", port=port)
    assert not errors


def existing_mail(tmp_path: Path) -> Path:
    """Mailbox content from before the window, not written by mailqueue."""
    box = tmp_path / "mail" / "basic" / BASIC / "alice"
    for sub in ("new", "cur", "tmp"):
        (box / sub).mkdir(parents=True, exist_ok=True)
    old = box / "cur" / "1500000000.M1P1.oldhost:2,S"
    old.write_bytes(b"From: boss@corp.example\nSubject: kept safe\n\nolder mail\n")
    return old


async def serve_and_send(tmp_path: Path, config: Path, port: int) -> None:
    """Exchange is in a window; basic delivers. 7 recipients accepted, 4 delivered."""
    proc = start(config)
    try:
        await wait_listening(port, proc)
        for i in range(3):
            await send(port, [f"alice@{BASIC}"], f"a{i}")
        for i in range(2):
            await send(port, [f"carol@{EXCHANGE}"], f"c{i}")
        await send(port, [f"alice@{BASIC}", f"carol@{EXCHANGE}"], "both")
        await wait_for(lambda: len(all_files(tmp_path / "mail" / "basic")) == 4, timeout=20)
        await asyncio.sleep(0.5)  # the settle after the last file
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_verify_a_served_instance(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port, STORES)
    old = existing_mail(tmp_path)
    snap = mq_here(config, "verify", "--snapshot", str(tmp_path / "before.json"))
    assert snap.returncode == 0 and "snapshot: 1 mailbox files in 2 stores" in snap.stdout

    assert mq_here(config, "db", "upgrade").returncode == 0  # the queue the server will use
    assert mq_here(config, "window", "start", "upgrade", "--for", "1h",
                   "--stores", "hosted-exchange").returncode == 0
    asyncio.run(serve_and_send(tmp_path, config, port))
    clean = mq_here(config, "verify")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "accepted 7 = delivered 4 + bounced 0 + deleted 0 + still queued 3  (recipients)\n" \
        "  basic: delivered 4 + bounced 0 + deleted 0 + still queued 0\n" \
        "  hosted-exchange: delivered 0 + bounced 0 + deleted 0 + still queued 3\n" \
        in clean.stdout
    assert "OK: nothing lost, nothing delivered twice" in clean.stdout
    against = mq_here(config, "verify", "--against", str(tmp_path / "before.json"))
    assert against.returncode == 0, against.stdout
    assert "1 files checked, 0 missing, 0 changed, 4 new since" in against.stdout

    # Damage the mailboxes: one lost, one twice, one altered, one nobody sent.
    files = sorted(p for p in all_files(tmp_path / "mail" / "basic") if copy_key(p.name))
    lost, doubled, altered = files[0], files[1], files[2]
    lost.unlink()
    shutil.copy(doubled, doubled.with_name("dup-" + doubled.name))
    altered.write_bytes(altered.read_bytes().replace(b"body of", b"BODY OF"))
    stray = doubled.read_bytes().replace(b"X-Mailqueue-Id: ", b"X-Mailqueue-Id: ZZZ", 1)
    (doubled.parent / "stray").write_bytes(stray)

    result = mq(config, "verify")
    assert result.returncode == 1
    out = result.stdout
    lost_id = (copy_key(lost.name) or ("?",))[0]
    assert f"MISSING (1):\n  {lost_id} " in out and "marked delivered; no file" in out
    assert "DUPLICATED (1):" in out and f"dup-{doubled.name}" in out
    assert "CORRUPTED (1):" in out and str(altered) in out
    assert "UNEXPECTED (1):" in out and "no such message was accepted" in out
    assert "FAILED" in out

    data = json.loads(mq_here(config, "verify", "--json").stdout)
    assert data["ok"] is False and data["accepted"] == 7 and data["queued"] == 3
    assert [f["queue_id"] for f in data["missing"]] == [lost_id]
    assert len(data["duplicated"]) == len(data["corrupted"]) == len(data["unexpected"]) == 1
    assert data["foreign_files"] == [str(old)]


def test_snapshot_reports_changed_and_missing(tmp_path: Path) -> None:
    config = write_config(tmp_path, free_port(), STORES)
    old = existing_mail(tmp_path)
    second = old.parent.parent / "new" / "1500000001.M2P1.oldhost"
    second.write_bytes(b"Subject: unread\n\nstill here\n")
    third = old.parent / "1500000002.M3P1.oldhost:2,"
    third.write_bytes(b"Subject: third\n\nthird\n")
    before = tmp_path / "before.json"
    assert mq_here(config, "verify", "--snapshot", str(before)).returncode == 0

    # A reader moves and flags a message: the same file, not a change.
    second.rename(old.parent / (second.name + ":2,S"))
    same = mq_here(config, "verify", "--against", str(before))
    assert same.returncode == 0 and "3 files checked, 0 missing, 0 changed" in same.stdout

    old.write_bytes(b"overwritten by the upgrade\n")
    third.unlink()
    result = mq_here(config, "verify", "--against", str(before))
    assert result.returncode == 1
    assert f"MISSING (1):\n  {third}" in result.stdout
    assert f"CHANGED (1):\n  {old}" in result.stdout
    data = json.loads(mq_here(config, "verify", "--against", str(before), "--json").stdout)
    assert data["ok"] is False and [r["path"] for r in data["missing"]] == [str(third)]


def test_verify_errors_are_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, free_port(), STORES)
    missing_db = mq(config, "verify")
    assert missing_db.returncode == 1
    assert missing_db.stderr.startswith("mailqueue: error: no queue database at ")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    result = mq_here(config, "verify", "--against", str(bad))
    assert result.returncode == 1 and "not a mailqueue snapshot" in result.stderr
    both = mq_here(config, "verify", "--snapshot", "a", "--against", "b")
    assert both.returncode == 2 and "not both" in both.stderr
    assert "Traceback" not in missing_db.stderr + result.stderr + both.stderr
