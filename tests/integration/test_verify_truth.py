"""``mailqueue verify`` tells the truth about what the Maildirs hold, against a served
instance: a copy moved into another mailbox, one Message-ID accepted twice, files renamed
by mail readers (by hand as GNU mailutils does, and by mailutils itself when installed)."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
from pathlib import Path

import aiosmtplib

from mailqueue.mailbox.maildir import copy_key, mailbox_path
from tests.helpers import all_files, wait_for
from tests.integration.test_verify_cli import mq, mq_here
from tests.served import free_port, start, wait_listening, write_config

BASIC, EXCHANGE = "basic.example", "exchange.example"
STORES = {"basic": BASIC, "hosted-exchange": EXCHANGE}


def mail(subject: str, message_id: str | None = None) -> str:
    mid = message_id or f"<{subject}@src.test>"
    return (f"From: a@src.test\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n\r\n"
            f"body of {subject}\r\n")


async def serve(tmp_path: Path, config: Path, port: int,
                sends: list[tuple[list[str], str]], files: int) -> None:
    """Serve, send each (recipients, message), wait for ``files`` delivered, stop."""
    proc = start(config)
    try:
        await wait_listening(port, proc)
        for rcpts, body in sends:
            errors, _ = await aiosmtplib.send(body, sender="a@src.test", recipients=rcpts,
                                              hostname="127.0.0.1", port=port)
            assert not errors
        await wait_for(lambda: len(delivered(tmp_path)) == files, timeout=20)
        await asyncio.sleep(0.5)  # the settle after the last file
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def delivered(tmp_path: Path) -> list[Path]:
    return sorted(p for p in all_files(tmp_path / "mail") if copy_key(p.name))


def box(tmp_path: Path, store: str, address: str) -> Path:
    return mailbox_path(tmp_path / "mail" / store, address)


def copy_for(tmp_path: Path, subject: str) -> Path:
    [path] = [p for p in delivered(tmp_path) if f"Subject: {subject}\n".encode() in
              p.read_bytes()]
    return path


def test_a_copy_moved_into_another_mailbox_is_misplaced(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port, STORES)
    asyncio.run(serve(tmp_path, config, port, [
        ([f"alice@{BASIC}"], mail("for-alice")), ([f"bob@{BASIC}"], mail("for-bob")),
        ([f"carol@{EXCHANGE}"], mail("for-carol"))], files=3))
    assert mq_here(config, "verify").returncode == 0
    alice = copy_for(tmp_path, "for-alice")
    qid = (copy_key(alice.name) or ("?",))[0]

    # Into bob's Maildir (as an admin's misdirected mv would put it).
    moved = box(tmp_path, "basic", f"bob@{BASIC}") / "new" / alice.name
    alice.rename(moved)
    result = mq(config, "verify")
    assert result.returncode == 1, result.stdout
    assert f"MISPLACED (1):\n  {qid} <for-alice@src.test> -> alice@{BASIC}: in " \
           f"{moved.parent.parent}, not in the mailbox of alice@{BASIC} " \
           f"({box(tmp_path, 'basic', f'alice@{BASIC}')})\n      {moved}" in result.stdout
    assert "MISSING" not in result.stdout and "FAILED" in result.stdout
    data = json.loads(mq_here(config, "verify", "--json").stdout)
    assert data["ok"] is False and [f["queue_id"] for f in data["misplaced"]] == [qid]

    # Into another store's tree, at the very path alice's mailbox has in her own store.
    elsewhere = box(tmp_path, "hosted-exchange", f"alice@{BASIC}") / "cur"
    elsewhere.mkdir(parents=True)
    moved = moved.rename(elsewhere / (alice.name + ":2,S"))
    result = mq_here(config, "verify")
    assert result.returncode == 1 and "MISPLACED (1):" in result.stdout
    assert f"in {moved.parent.parent}, not in the mailbox" in result.stdout

    # Back home, read and filed in one of her folders: in place.
    folder = box(tmp_path, "basic", f"alice@{BASIC}") / ".Archive" / "cur"
    folder.mkdir(parents=True)
    moved.rename(folder / moved.name)
    result = mq_here(config, "verify")
    assert result.returncode == 0, result.stdout
    assert "OK: nothing lost, nothing delivered twice" in result.stdout


def test_one_message_id_accepted_twice_is_information(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port, STORES)
    post = mail("post", "<post-1@list.example>")
    # A list copy and a direct copy of one post; a client sending again after a timeout.
    asyncio.run(serve(tmp_path, config, port, [
        ([f"alice@{BASIC}", f"bob@{BASIC}"], post), ([f"alice@{BASIC}"], post),
        ([f"carol@{EXCHANGE}"], mail("resent", "<r@src.test>")),
        ([f"carol@{EXCHANGE}"], mail("resent", "<r@src.test>"))], files=5))
    result = mq(config, "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "SAME MESSAGE-ID (2, information: separate accepted messages, each delivered " \
           "on its own; --strict fails on them):" in out
    assert f"\n  <post-1@list.example> -> alice@{BASIC}: accepted as 2 messages (" in out
    assert f"\n  <r@src.test> -> carol@{EXCHANGE}: accepted as 2 messages (" in out
    assert "DUPLICATED" not in out and "OK: nothing lost, nothing delivered twice" in out

    strict = mq_here(config, "verify", "--strict")
    assert strict.returncode == 1
    assert "FAILED (--strict): a Message-ID was accepted as several messages" in strict.stdout
    data = json.loads(mq_here(config, "verify", "--json").stdout)
    assert data["ok"] is True and data["duplicated"] == []
    assert sorted(g["message_id"] for g in data["same_message_id"]) == [
        "<post-1@list.example>", "<r@src.test>"]
    assert all(len(g["paths"]) == 2 for g in data["same_message_id"])
    strict_json = mq_here(config, "verify", "--json", "--strict")
    assert strict_json.returncode == 1 and json.loads(strict_json.stdout)["ok"] is False

    # A copy of one accepted message twice in the mailbox is still a duplicated delivery.
    [bobs] = (box(tmp_path, "basic", f"bob@{BASIC}") / "new").iterdir()
    shutil.copy(bobs, bobs.parent.parent / "cur" / f"copy-of-{bobs.name}")
    doubled = mq_here(config, "verify")
    assert doubled.returncode == 1 and "DUPLICATED (1):" in doubled.stdout


def existing_mail(tmp_path: Path) -> list[Path]:
    """Alice's mail from before the window, not written by mailqueue."""
    home = box(tmp_path, "basic", f"alice@{BASIC}")
    for sub in ("new", "cur", "tmp"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    old = [home / "cur" / "1500000000.M1P1.oldhost:2,S", home / "new" / "1500000001.M2P1.oldhost",
           home / "cur" / "1500000002.M3P1.oldhost:2,"]
    for n, path in enumerate(old):
        path.write_bytes(f"From: boss@corp.example\nSubject: old {n}\n\nkept safe {n}\n".encode())
    return old


def test_files_renamed_by_a_reader_still_verify(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port, STORES)
    old = existing_mail(tmp_path)
    snapshot = str(tmp_path / "before.json")
    assert mq_here(config, "verify", "--snapshot", snapshot).returncode == 0
    asyncio.run(serve(tmp_path, config, port, [([f"alice@{BASIC}"], mail(f"m{n}"))
                                               for n in range(3)], files=3))

    # GNU mailutils reads the mailbox: new/NAME -> cur/NAME,u=N:2,(flags).
    for n, path in enumerate(delivered(tmp_path) + old[:2], start=1):
        path.rename(path.parent.parent / "cur" / f"{path.name.split(':')[0]},u={n}:2,S")
    # Another reader renames one old message altogether.
    old[2].rename(old[2].parent / "1796600000.R5.otherreader:2,S")

    result = mq_here(config, "verify")
    assert result.returncode == 0, result.stdout
    assert "accepted 3 = delivered 3 + bounced 0 + deleted 0 + still queued 0" in result.stdout
    against = mq_here(config, "verify", "--against", snapshot)
    assert against.returncode == 0, against.stdout
    assert "3 files checked, 0 missing, 0 changed, 3 new since, 1 moved by a reader" in \
        against.stdout
    assert f"MOVED (1, renamed or filed by a reader, content unchanged):\n  {old[2]} -> " \
           in against.stdout


def test_mailutils_reading_the_mailbox_changes_nothing(tmp_path: Path) -> None:
    import pytest

    if shutil.which("mail") is None or shutil.which("messages") is None:
        pytest.skip("GNU mailutils (mail, messages) not installed")
    version = subprocess.run(["mail", "--version"], capture_output=True, text=True)
    if "GNU Mailutils" not in version.stdout:
        pytest.skip("`mail` is not GNU mailutils")
    port = free_port()
    config = write_config(tmp_path, port, STORES)
    existing_mail(tmp_path)
    snapshot = str(tmp_path / "before.json")
    assert mq_here(config, "verify", "--snapshot", snapshot).returncode == 0
    asyncio.run(serve(tmp_path, config, port, [([f"alice@{BASIC}"], mail(f"m{n}"))
                                               for n in range(5)], files=5))
    home = box(tmp_path, "basic", f"alice@{BASIC}")
    read = subprocess.run(["mail", "--no-config", "-N", "-f", f"maildir:{home}"],
                          input="type *\nquit\n", capture_output=True, text=True, timeout=60)
    assert read.returncode == 0, read.stderr
    assert list((home / "new").iterdir()) == []  # all moved to cur/ and renamed
    assert all(",u=" in p.name for p in (home / "cur").iterdir())
    counted = subprocess.run(["messages", "--no-config", "-q", f"maildir:{home}"],
                             capture_output=True, text=True, timeout=60)
    assert counted.stdout.strip() == "8"
    assert mq_here(config, "verify").returncode == 0
    against = mq_here(config, "verify", "--against", snapshot)
    assert against.returncode == 0, against.stdout
    assert "3 files checked, 0 missing, 0 changed, 5 new since" in against.stdout


def test_stores_sharing_one_root_verify(tmp_path: Path) -> None:
    # Both stores keep their Maildirs under one directory ({root}/{domain}/{local}).
    port = free_port()
    config = write_config(tmp_path, port, STORES)
    shared = tmp_path / "mail" / "shared"
    text = config.read_text()
    for name in STORES:
        text = text.replace(f'path = "{tmp_path / "mail" / name}"', f'path = "{shared}"')
    config.write_text(text)
    asyncio.run(serve(tmp_path, config, port, [
        ([f"alice@{BASIC}", f"carol@{EXCHANGE}"], mail("both"))], files=2))
    assert sorted(p.relative_to(shared).parts[:2] for p in delivered(tmp_path)) == [
        (BASIC, "alice"), (EXCHANGE, "carol")]
    result = mq_here(config, "verify")
    assert result.returncode == 0, result.stdout
    assert "mailboxes: 2 delivered copies expected, 2 found intact" in result.stdout


def test_a_snapshot_into_a_missing_directory_is_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, free_port(), STORES)
    result = mq(config, "verify", "--snapshot", str(tmp_path / "absent" / "before.json"))
    assert result.returncode == 1
    assert result.stderr == f"mailqueue: error: {tmp_path / 'absent' / 'before.json'}: " \
        "cannot write the snapshot: No such file or directory\n"
