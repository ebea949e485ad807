"""The audit in bounded memory: the ledger read a slice at a time and the copies spilled to
a scratch file give the answer the whole ledger in hand gives, on a real SQLite file and on
the local PostgreSQL, with many copies in one mailbox and every kind of finding; and the
scratch file never outlives the audit, however it ends."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import importlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mailqueue.config import load_config
from mailqueue.mailbox.maildir import MaildirStore, mailbox_path
from mailqueue.queue import _auditscratch as _scratch
from mailqueue.queue import sqlstore
from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.queue.values import Claim, LedgerEntry, NewMessage, Settlement, new_queue_id
from mailqueue.verify.audit import KINDS, Audit, AuditError, Auditor, audit
from mailqueue.verify.instance import audit_queue
from mailqueue.verify.scan import DeliveredCopy, iter_config, store_roots
from tests.helpers import opened_store
from tests.served import write_config

T0 = 1_700_000_000.0
ALICE, BOB, CAROL, DAVE = ("alice@basic.example", "bob@basic.example", "carol@basic.example",
                           "dave@basic.example")
MESSAGES = 400  # into one mailbox, over many slices of the ledger and of the copies


@pytest.fixture(params=["sqlite", "postgresql"])
async def instance(request: pytest.FixtureRequest,
                   tmp_path: Path) -> AsyncIterator[tuple[Path, SqlQueueStore]]:
    """A config and its opened queue (a real SQLite file, or the local PostgreSQL)."""
    config = write_config(tmp_path, 2525)
    if request.param == "postgresql":
        url = str(request.getfixturevalue("pg_url"))
        text = config.read_text()
        config.write_text(text.replace(f"sqlite+aiosqlite:///{tmp_path / 'queue.db'}", url))
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'queue.db'}"
    async with opened_store(url) as store:
        yield config, store


@pytest.fixture
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slices far smaller than the mail: every boundary is crossed many times, also
    inside one message's recipients."""
    monkeypatch.setattr(sqlstore, "_READ_SLICE", 3)
    monkeypatch.setattr(importlib.import_module("mailqueue.verify.audit"), "CHUNK", 7)
    monkeypatch.setattr(_scratch, "CHUNK", 7)


def left(folder: Path) -> list[str]:
    """What is in ``folder`` (the scratch directories still there)."""
    return sorted(os.listdir(folder))


def new_message(*addresses: str, at: float, message_id: str | None = None) -> NewMessage:
    body = f"Subject: {uuid.uuid4().hex}\r\n\r\nhi\r\n".encode()
    return NewMessage(queue_id=new_queue_id(at) + uuid.uuid4().hex[:4], mail_from="a@src.test",
                      recipients=tuple((a, "basic") for a in addresses), body=body,
                      received_at=at, message_id=message_id,
                      digest=hashlib.sha256(body).hexdigest())


def files_of(root: Path, queue_id: str, address: str) -> list[Path]:
    box = mailbox_path(root, address)
    return [p for p in (box / "new").iterdir() if queue_id in p.read_text()]


async def damaged_instance(store: SqlQueueStore, root: Path) -> dict[str, str]:
    """MESSAGES messages to alice (every tenth to bob and carol too), delivered into real
    Maildirs, then one of every finding; returns the queue ids concerned, by finding."""
    sent = [new_message(ALICE, *([BOB, CAROL] if i % 10 == 0 else []), at=T0 + i,
                        message_id=f"<m{i}@src.test>") for i in range(MESSAGES)]
    twice = new_message(ALICE, at=T0 + MESSAGES, message_id="<m1@src.test>")
    bounced = new_message(ALICE, at=T0 + MESSAGES + 1)
    await store.enqueue([*sent, twice, bounced])
    claims = await store.claim(["basic"], 10_000, "w", T0 + 9999, T0 + 99_999)
    assert MaildirStore("basic", root, "mx.test").deliver(claims) == [None] * len(claims)
    await store.settle(Settlement(
        delivered=[c.recipient_id for c in claims if c.queue_id != bounced.queue_id],
        bounced=[(c.recipient_id, "550 no such user") for c in claims
                 if c.queue_id == bounced.queue_id]), "w", T0 + 10_000)
    pending, deleted = (new_message(CAROL, at=T0 + 20_000 + i) for i in range(2))
    await store.enqueue([pending, deleted])
    await store.delete([deleted.queue_id], T0 + 20_010)

    ids = {"missing": sent[5].queue_id, "duplicated": sent[6].queue_id,
           "misplaced": sent[7].queue_id, "corrupted": sent[8].queue_id,
           "bounced": bounced.queue_id, "twice": twice.queue_id, "first": sent[1].queue_id,
           "pending": pending.queue_id, "deleted": deleted.queue_id,
           "unknown": sent[2].queue_id}
    [gone] = files_of(root, ids["missing"], ALICE)
    gone.unlink()
    [dup] = files_of(root, ids["duplicated"], ALICE)
    shutil.copyfile(dup, dup.with_name("1700000000.again.mx.test"))
    [away] = files_of(root, ids["misplaced"], ALICE)
    away.rename(mailbox_path(root, BOB) / "new" / away.name)
    [bad] = files_of(root, ids["corrupted"], ALICE)
    bad.write_bytes(bad.read_bytes() + b"tampered\n")
    # A copy of a message never accepted, one for a recipient its message did not have,
    # and a file mailqueue did not write.
    stranger = Claim(recipient_id=1, queue_id="NEVERACCEPTED", address=BOB, store="basic",
                     attempts=1, mail_from="x@src.test", received_at=T0, helo="", peer="",
                     body=b"hi\r\n")
    unknown = dataclasses.replace(stranger, queue_id=ids["unknown"], address=DAVE)
    assert MaildirStore("basic", root, "mx.test").deliver([stranger, unknown]) == [None] * 2
    (mailbox_path(root, ALICE) / "cur" / "old-mail").write_bytes(b"Subject: old\n\nhello\n")
    return ids


def whole_audit(config: Path, entries: list[LedgerEntry],
                copies: list[DeliveredCopy]) -> Audit:
    roots = store_roots({"basic": load_config(str(config)).stores[0].mailbox_root or Path()})
    return audit(entries, copies, roots)


async def test_sliced_audit_gives_the_whole_ledgers_answer(
        instance: tuple[Path, SqlQueueStore], small_slices: None, scratch_dir: Path) -> None:
    config, store = instance
    root = config.parent / "mail" / "basic"
    ids = await damaged_instance(store, root)

    sliced = await audit_queue(load_config(str(config)), store)
    copies, _ = iter_config(load_config(str(config)))
    assert sliced == whole_audit(config, list(await store.ledger()), list(copies))
    assert left(scratch_dir) == []

    kinds = {kind: [(f.queue_id, f.recipient) for f in sliced.of_kind(kind)]
             for kind in KINDS}
    assert kinds == {
        "missing": [(ids["missing"], ALICE)],
        "duplicated": [(ids["duplicated"], ALICE)],
        "misplaced": [(ids["misplaced"], ALICE)],
        "corrupted": [(ids["corrupted"], ALICE)],
        "unexpected": [(ids["bounced"], ALICE), (ids["unknown"], DAVE),
                       ("NEVERACCEPTED", BOB)]}
    assert len(sliced.of_kind("duplicated")[0].paths) == 2
    assert sliced.of_kind("unexpected")[0].detail == "bounced, yet a copy is in the mailbox"
    assert [f.detail for f in sliced.of_kind("unexpected")[1:]] == [
        "not a recipient of this message", "no such message was accepted"]
    accepted = MESSAGES + MESSAGES // 10 * 2 + 4
    assert (sliced.accepted, sliced.delivered, sliced.bounced, sliced.deleted,
            sliced.queued, sliced.unaccounted) == (accepted, accepted - 3, 1, 1, 1, 0)
    assert sliced.intact == accepted - 3 - 3  # none: missing, misplaced, corrupted
    assert [(f.queue_id, f.detail) for f in sliced.bounces] == \
        [(ids["bounced"], "550 no such user")]
    assert [f.queue_id for f in sliced.pending] == [ids["pending"]]
    assert [f.queue_id for f in sliced.deletions] == [ids["deleted"]]
    assert [f.name for f in map(Path, sliced.foreign_files)] == ["old-mail"]
    [same] = sliced.same_message_id
    assert (same.message_id, same.recipient) == ("<m1@src.test>", ALICE)
    assert same.detail == f"accepted as 2 messages " \
                          f"({', '.join(sorted([ids['first'], ids['twice']]))})"
    assert sliced.by_store == {"basic": {"delivered": accepted - 3, "bounced": 1,
                                         "deleted": 1, "queued": 1}}


async def test_the_ledger_read_in_slices_is_the_ledger(
        instance: tuple[Path, SqlQueueStore], small_slices: None) -> None:
    config, store = instance
    await damaged_instance(store, config.parent / "mail" / "basic")
    slices: list[int] = []
    entries: list[LedgerEntry] = []

    async def take(part: list[LedgerEntry]) -> None:
        slices.append(len(part))
        entries.extend(part)

    await store.read_ledger(take)
    whole = await store.ledger()
    assert entries == whole and len(whole) == MESSAGES + 4
    assert max(slices) <= 3 and len(slices) > len(whole) // 3
    assert [len(e.recipients) for e in whole[:11]] == [3] + [1] * 9 + [3]
    assert [r.address for r in whole[0].recipients] == [ALICE, BOB, CAROL]


def test_an_in_memory_audit_leaves_no_scratch_file(scratch_dir: Path, tmp_path: Path) -> None:
    copies = [DeliveredCopy("basic", tmp_path / "x" / "new" / "f", "Q", ALICE, "d")]
    result = audit([], copies)
    assert [f.kind for f in result.findings] == ["unexpected"]
    assert left(scratch_dir) == []


def test_an_interrupted_scan_removes_the_scratch_file(scratch_dir: Path,
                                                      tmp_path: Path) -> None:
    def copies() -> Iterator[DeliveredCopy]:
        for i in range(20_000):
            if i == 12_345:
                assert len(left(scratch_dir)) == 1
                raise KeyboardInterrupt  # Ctrl-C in the middle of the scan
            yield DeliveredCopy("basic", tmp_path / f"f{i}", f"Q{i}", ALICE, "d")

    with pytest.raises(KeyboardInterrupt):
        audit([], copies())
    assert left(scratch_dir) == []


async def test_a_cancelled_audit_removes_the_scratch_file(
        instance: tuple[Path, SqlQueueStore], small_slices: None, scratch_dir: Path) -> None:
    config, store = instance
    await damaged_instance(store, config.parent / "mail" / "basic")
    task = asyncio.create_task(audit_queue(load_config(str(config)), store))
    while not left(scratch_dir):
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert left(scratch_dir) == []


def test_an_auditor_closed_from_another_thread_stops(scratch_dir: Path) -> None:
    auditor = Auditor()
    auditor.close()
    with pytest.raises(AuditError, match="stopped"):
        auditor.add_copies([DeliveredCopy("basic", Path("f"), "Q", ALICE, "d")])
    assert left(scratch_dir) == []
    auditor.close()  # again: nothing to do


def test_no_room_for_the_scratch_file_is_one_line(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(AuditError) as caught, Auditor(directory=str(not_a_dir)) as auditor:
        auditor.result()
    assert str(caught.value) == (
        f"cannot make the audit's scratch directory in {not_a_dir}: Not a directory "
        "(set TMPDIR to a writable directory with room)")


def test_ctrl_c_during_verify_removes_the_scratch_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, 2525)
    root = tmp_path / "mail" / "basic"

    async def fill() -> None:
        async with opened_store(f"sqlite+aiosqlite:///{tmp_path / 'queue.db'}") as store:
            await store.enqueue([new_message(ALICE, at=T0 + i) for i in range(3000)])
            claims = await store.claim(["basic"], 10_000, "w", T0 + 9999, T0 + 99_999)
            MaildirStore("basic", root, "mx.test").deliver(claims)
            await store.settle(Settlement(delivered=[c.recipient_id for c in claims]), "w",
                               T0 + 10_000)

    asyncio.run(fill())
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "mailqueue", "verify", "-c", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(scratch)})
    deadline = time.monotonic() + 30
    while not left(scratch) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    # Interrupted (130), or done before the signal came.
    assert proc.returncode in (130, 0), err
    assert "Traceback" not in err
    assert proc.returncode == 130 or "OK: nothing lost" in out
    assert left(scratch) == []
