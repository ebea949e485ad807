"""A mail reader moves files from ``new/`` to ``cur/`` while mailqueue lists the Maildir:
``verify``, ``verify --against`` and a repeated delivery see every file exactly once,
whichever order the file system lists ``new/`` and ``cur/`` in.

The reader's move is made at the worst moment: right after (or right before) ``cur/`` is
listed, through ``os.scandir``, which every Maildir listing goes through."""

from __future__ import annotations

import os
import shutil
import smtplib
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import TracebackType

import pytest

from mailqueue import faults
from mailqueue.mailbox.maildir import mailbox_path, unique_part
from mailqueue.testing import MailLossError, Mailqueue, MailqueueOptions
from tests.integration.test_verify_cli import mq_here
from tests.served import free_port, write_config

ALICE = "alice@example.com"


class Listed:
    """What ``os.scandir`` returns, with every entry read before it is handed out."""

    def __init__(self, entries: list[os.DirEntry[str]]) -> None:
        self._entries = iter(entries)

    def __iter__(self) -> Listed:
        return self

    def __next__(self) -> os.DirEntry[str]:
        return next(self._entries)

    def __enter__(self) -> Listed:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def close(self) -> None:
        return None


class Reader:
    """A mail reader that takes every file in ``box``'s ``new/`` to ``cur/`` (``:2,S``
    appended) once, at the moment ``cur/`` is listed: just ``after`` its listing, or just
    before it. It renames each file, or with ``link`` links it into ``cur/`` and has yet
    to remove it from ``new/`` (the first half of a move by link and unlink). With
    ``cur_first`` the file system lists ``cur/`` before ``new/`` in ``box`` (as a hashed
    directory may)."""

    def __init__(self, box: Path, *, after: bool = True, link: bool = False,
                 cur_first: bool = False) -> None:
        self.box = Path(os.path.realpath(box))
        self.after = after
        self.link = link
        self.cur_first = cur_first
        self.moved: list[Path] = []
        self._done = False
        self._real = os.scandir

    def scandir(self, path: str = ".") -> Listed:
        here = Path(os.path.realpath(os.fsdecode(path)))
        if here == self.box / "cur" and not self.after:
            self._move()
        with self._real(path) as listing:
            entries = list(listing)
        if here == self.box and self.cur_first:
            entries.sort(key=lambda entry: entry.name != "cur")
        if here == self.box / "cur" and self.after:
            self._move()
        return Listed(entries)

    def _move(self) -> None:
        if self._done:
            return
        self._done = True
        for name in sorted(os.listdir(self.box / "new")):
            target = self.box / "cur" / f"{name}:2,S"
            (os.link if self.link else os.rename)(self.box / "new" / name, target)
            self.moved.append(target)


def reader(monkeypatch: pytest.MonkeyPatch, box: Path, **kwargs: bool) -> Reader:
    moving = Reader(box, **kwargs)
    monkeypatch.setattr(os, "scandir", moving.scandir)
    return moving


def send(mq: Mailqueue, n: int) -> None:
    with smtplib.SMTP(mq.host, mq.port) as smtp:
        smtp.sendmail("a@src.test", [ALICE], f"Subject: m{n}\r\nMessage-ID: <m{n}@test>\r\n"
                      f"\r\nbody {n}\r\n")


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.parent.name in ("new", "cur"))


@pytest.fixture
def served(tmp_path: Path) -> tuple[Path, Path]:
    """Three messages delivered into alice's ``new/``, then mailqueue stopped: the config
    file of that instance (for ``mailqueue verify``) and her Maildir."""
    with Mailqueue(MailqueueOptions().build(tmp_path)) as mq:
        for n in range(3):
            send(mq, n)
        mq.drained()
    box = mailbox_path(tmp_path / "mail" / "mail", ALICE)
    assert len(os.listdir(box / "new")) == 3
    return write_config(tmp_path, free_port(), {"mail": "example.com"}), box


# --- verify -------------------------------------------------------------------------------

def test_verify_sees_a_file_moved_to_cur_just_after_cur_was_listed(
        served: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    config, box = served
    moving = reader(monkeypatch, box)
    result = mq_here(config, "verify")
    assert len(moving.moved) == 3
    assert result.returncode == 0, result.stdout + result.stderr
    assert "MISSING" not in result.stdout
    assert "OK: nothing lost, nothing delivered twice" in result.stdout


def test_verify_against_a_snapshot_sees_a_file_moved_during_the_scan(
        served: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    config, box = served
    snapshot = config.parent / "before.json"
    assert mq_here(config, "verify", "--snapshot", str(snapshot)).returncode == 0
    moving = reader(monkeypatch, box)
    result = mq_here(config, "verify", "--against", str(snapshot))
    assert len(moving.moved) == 3
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 files checked, 0 missing, 0 changed, 0 new since" in result.stdout


def test_a_file_seen_in_both_listings_is_one_file(
        served: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # Moved after new/ was listed and before cur/ is: in both listings, read once.
    config, box = served
    snapshot = config.parent / "before.json"
    assert mq_here(config, "verify", "--snapshot", str(snapshot)).returncode == 0
    moving = reader(monkeypatch, box, after=False)
    result = mq_here(config, "verify")
    assert len(moving.moved) == 3
    assert result.returncode == 0, result.stdout + result.stderr
    assert "DUPLICATED" not in result.stdout

    monkeypatch.undo()
    for path in moving.moved:  # a reader takes them back, to be moved again
        path.rename(box / "new" / unique_part(path.name))
    moving = reader(monkeypatch, box, after=False)
    result = mq_here(config, "verify", "--against", str(snapshot))
    assert len(moving.moved) == 3
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 files checked, 0 missing, 0 changed, 0 new since" in result.stdout


def test_a_file_half_moved_by_link_is_one_file(
        served: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # Linked into cur/ and not yet removed from new/: two names, one file, read once.
    config, box = served
    snapshot = config.parent / "before.json"
    assert mq_here(config, "verify", "--snapshot", str(snapshot)).returncode == 0
    moving = reader(monkeypatch, box, after=False, link=True)
    result = mq_here(config, "verify")
    assert len(moving.moved) == 3 and len(os.listdir(box / "new")) == 3
    assert result.returncode == 0, result.stdout + result.stderr
    assert "DUPLICATED" not in result.stdout
    result = mq_here(config, "verify", "--against", str(snapshot))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 files checked, 0 missing, 0 changed, 0 new since" in result.stdout


def test_two_files_under_one_unique_part_are_two_copies(served: tuple[Path, Path]) -> None:
    # The same name in new/ and (flags appended) in cur/, but two files: a second copy.
    config, box = served
    first = sorted((box / "new").iterdir())[0]
    shutil.copy(first, box / "cur" / f"{first.name}:2,S")
    result = mq_here(config, "verify")
    assert result.returncode == 1
    assert "DUPLICATED (1):" in result.stdout


# --- a repeated delivery ------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def mq(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mailqueue]:
    config = {"queue": {"url": request.getfixturevalue("pg_url")}} \
        if request.param == "postgresql" else None
    with Mailqueue(MailqueueOptions(config=config).build(tmp_path)) as running:
        yield running


def first_attempt_left_a_copy(mq: Mailqueue) -> Path:
    """One message whose first delivery writes its file and then fails (deferred, as a
    crash before the settle would leave it); the file."""
    faults.arm("deliver.linked:raise")
    try:
        send(mq, 1)
        deadline = time.monotonic() + 10
        while not any("fault injected" in (r.last_error or "")
                      for e in mq.ledger().entries for r in e.recipients):
            assert time.monotonic() < deadline, "the first attempt was not deferred"
            time.sleep(0.05)
    finally:
        faults.arm("")
    [path] = files(mq.maildir_root())
    return path


def test_a_copy_moved_to_cur_during_the_repeat_is_not_written_again(
        mq: Mailqueue, monkeypatch: pytest.MonkeyPatch) -> None:
    path = first_attempt_left_a_copy(mq)
    moving = reader(monkeypatch, path.parent.parent, cur_first=True)
    mq.advance(timedelta(hours=2))  # the retry falls due: a second attempt
    mq.drained()
    assert moving.moved == [path.parent.parent / "cur" / f"{path.name}:2,S"]
    assert files(mq.maildir_root()) == moving.moved
    monkeypatch.undo()
    mq.ledger().assert_ok()


@pytest.mark.parametrize("renamed", ["cur/1796600000.M5P7.reader:2,S",
                                     ".Archive/cur/1796600000.M5P7.reader:2,S",
                                     ".Archive/cur/{name}:2,S"])
def test_a_copy_the_check_cannot_know_is_written_again_and_reported(
        mq: Mailqueue, renamed: str) -> None:
    # A repeated delivery knows an earlier copy by the unique part of its name in new/ and
    # cur/. A reader that throws the name away, or files the copy in a folder before the
    # repeat, leaves a copy it cannot know: a second one is written, and the ledger says so.
    path = first_attempt_left_a_copy(mq)
    target = path.parent.parent / renamed.format(name=path.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    path.rename(target)
    mq.advance(timedelta(hours=2))
    mq.drained()
    assert len(files(mq.maildir_root())) == 2
    ledger = mq.ledger()
    ledger.assert_no_loss()
    with pytest.raises(MailLossError, match=r"DUPLICATED \(1\)"):
        ledger.assert_no_duplicates()
