"""The Maildir writer pool: a batch written by several threads, still exactly once."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from mailqueue.mailbox.maildir import MaildirStore
from mailqueue.queue.values import Claim


def claims(count: int, mailboxes: int, attempts: int = 1) -> list[Claim]:
    return [Claim(recipient_id=i, queue_id=f"Q{i:06d}", address=f"u{i % mailboxes}@b.example",
                  store="basic", attempts=attempts, mail_from="a@src.test",
                  received_at=1_700_000_000.0, helo="h", peer="127.0.0.1",
                  body=f"Subject: {i}\r\n\r\nbody {i}\r\n".encode()) for i in range(count)]


def new_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.parent.name == "new")


def test_a_batch_written_by_a_pool_lands_once_each(tmp_path: Path) -> None:
    store = MaildirStore("basic", tmp_path, "mx.test", writers=4)
    try:
        batch = claims(60, mailboxes=7)
        assert store.deliver(batch) == [None] * 60
        assert store.deliver([dataclasses.replace(c, attempts=2) for c in batch]) == [None] * 60
        found = new_files(tmp_path)
        assert len(found) == 60
        assert {p.read_bytes().split(b"\n\n", 1)[1] for p in found} == {
            f"body {i}\n".encode() for i in range(60)}
        assert not [p for p in tmp_path.rglob("tmp/*")]
    finally:
        store.close()


def test_a_mailbox_removed_between_batches_is_recreated(tmp_path: Path) -> None:
    store = MaildirStore("basic", tmp_path, "mx.test", writers=2)
    try:
        first, second = claims(2, mailboxes=1), claims(4, mailboxes=1)[2:]
        assert store.deliver(first) == [None, None]
        shutil.rmtree(tmp_path / "b.example")
        outcomes = store.deliver(second)
        retried = store.deliver([c for c, o in zip(second, outcomes, strict=True) if o])
        assert all(o is None for o in retried)
        assert len(new_files(tmp_path)) == 2
    finally:
        store.close()
