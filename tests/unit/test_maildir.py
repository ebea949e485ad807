from __future__ import annotations

import os
from pathlib import Path

from mailqueue.errors import TemporaryDeliveryError
from mailqueue.mailbox.maildir import MaildirStore, maildir_name
from mailqueue.queue.values import Claim


def claim(attempts: int = 1, address: str = "alice@basic.example") -> Claim:
    return Claim(recipient_id=1, queue_id="ABC123", address=address, store="basic",
                 attempts=attempts, mail_from="a@src.test", received_at=1_700_000_000.0,
                 helo="client.test", peer="127.0.0.1", body=b"Subject: x\r\n\r\nbody\r\n")


def files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_delivery_is_idempotent(tmp_path: Path) -> None:
    store = MaildirStore("basic", tmp_path, "mx.test")
    assert store.deliver([claim()]) == [None]
    assert store.deliver([claim(attempts=2)]) == [None]  # repeated after a crash
    assert store.deliver([claim(attempts=1)]) == [None]  # even without the hint
    [path] = files(tmp_path)
    assert path.parent == tmp_path / "basic.example" / "alice" / "new"
    assert path.name == maildir_name(claim(), "mx.test")
    assert list((tmp_path / "basic.example" / "alice" / "tmp").iterdir()) == []


def test_repeat_after_reader_moved_it_to_cur(tmp_path: Path) -> None:
    store = MaildirStore("basic", tmp_path, "mx.test")
    store.deliver([claim()])
    [path] = files(tmp_path)
    os.rename(path, path.parent.parent / "cur" / (path.name + ":2,S"))
    assert store.deliver([claim(attempts=2)]) == [None]
    assert len(files(tmp_path)) == 1


def test_each_recipient_gets_its_own_copy(tmp_path: Path) -> None:
    store = MaildirStore("basic", tmp_path, "mx.test")
    assert store.deliver([claim(), claim(address="bob@basic.example")]) == [None, None]
    assert len(files(tmp_path)) == 2


def test_unwritable_store_is_a_temporary_failure(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    root.write_text("not a directory")
    [outcome] = MaildirStore("basic", root, "mx.test").deliver([claim()])
    assert isinstance(outcome, TemporaryDeliveryError)


def test_check_writable_names_the_problem_and_leaves_nothing(tmp_path: Path) -> None:
    good = MaildirStore("basic", tmp_path / "mail", "mx.test")
    assert good.check_writable() is None
    assert list((tmp_path / "mail").iterdir()) == []
    (tmp_path / "file").write_text("not a directory")
    bad = MaildirStore("basic", tmp_path / "file" / "mail", "mx.test")
    assert bad.check_writable() == "Not a directory"
