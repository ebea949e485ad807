"""The SQLite enqueue path: group commit on the writer's thread, multi-row inserts, and
checkpoints off the commit path."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from mailqueue import faults
from mailqueue.errors import QueueError, QueueFullError
from mailqueue.queue import _sqlitewriter as sqlitewriter
from mailqueue.queue.committer import GroupCommitter
from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.queue.values import NewMessage, new_queue_id


def batch(count: int, size: int = 4096) -> list[NewMessage]:
    now = time.time()
    return [NewMessage(queue_id=new_queue_id(now), mail_from="s@src.test",
                       recipients=(("u1@example.test", "vmail"), ("u2@example.test", "vmail")),
                       body=bytes([65 + i % 26]) * size, received_at=now)
            for i in range(count)]


async def test_a_batch_larger_than_one_statement_is_stored_whole(tmp_path: Path) -> None:
    store = SqlQueueStore(f"sqlite+aiosqlite:///{tmp_path / 'q.db'}")
    await store.open()
    try:
        sent = batch(250, size=10)  # 250 x 10 columns: three INSERT statements
        await store.enqueue(sent)
    finally:
        await store.close()
    db = sqlite3.connect(tmp_path / "q.db")
    assert db.execute("SELECT count(*) FROM messages").fetchone() == (250,)
    assert db.execute("SELECT count(*) FROM recipients").fetchone() == (500,)
    stored = dict(db.execute("SELECT queue_id, body FROM messages"))
    assert all(stored[m.queue_id] == m.body for m in sent)


async def test_checkpoints_run_beside_the_writer(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlitewriter, "CHECKPOINT_BYTES", 256 * 1024)
    path = tmp_path / "q.db"
    store = SqlQueueStore(f"sqlite+aiosqlite:///{path}")
    await store.open()
    try:
        before = path.stat().st_size
        for _ in range(10):
            await store.enqueue(batch(20))  # 10 x 20 x 4 KiB: past the threshold often
        deadline = time.monotonic() + 10
        while path.stat().st_size < before + 256 * 1024 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # only a checkpoint writes pages into the main file
        assert path.stat().st_size >= before + 256 * 1024
        if hasattr(os, "SCHED_BATCH"):  # batch-scheduled, whichever thread started it
            thread = next(t for t in threading.enumerate()
                          if t.name.startswith("queue-checkpoint"))
            assert os.sched_getscheduler(thread.native_id) == os.SCHED_BATCH
    finally:
        await store.close()
    assert sqlite3.connect(path).execute("SELECT count(*) FROM messages").fetchone() == (200,)


async def test_the_wal_starts_over_under_back_to_back_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A drain's claims and settles leave the WAL no moment with every frame copied back,
    and SQLite writes it from the start again only at such a moment: it grew without end
    (623 MiB after draining 100,000 messages). Past WAL_RESTART_BYTES a checkpoint makes
    the next writer start over."""
    monkeypatch.setattr(sqlitewriter, "CHECKPOINT_BYTES", 128 * 1024)
    monkeypatch.setattr(sqlitewriter, "WAL_RESTART_BYTES", 512 * 1024)
    path = tmp_path / "q.db"
    store = SqlQueueStore(f"sqlite+aiosqlite:///{path}")
    await store.open()
    try:
        await store.enqueue(batch(20))
        writer = store._writer
        assert writer is not None

        def settle_back_to_back(seconds: float) -> int:
            db = sqlite3.connect(path, isolation_level=None, timeout=30)
            db.execute("PRAGMA wal_autocheckpoint=0")  # as every queue connection
            db.execute("CREATE TABLE IF NOT EXISTS filler (b BLOB)")
            largest, end = 0, time.monotonic() + seconds
            while time.monotonic() < end:
                db.execute("BEGIN IMMEDIATE")
                # New pages every time, as a drain's settles write: a checkpoint of
                # them takes longer than the pause between two transactions.
                db.executemany("INSERT INTO filler VALUES (randomblob(4096))", [()] * 20)
                db.execute("COMMIT")
                writer.wrote(20 * 4096)
                time.sleep(0.002)  # the Maildir writes between a claim and its settle
                largest = max(largest, os.path.getsize(f"{path}-wal"))
            db.close()
            return largest

        largest = await asyncio.to_thread(settle_back_to_back, 4.0)
    finally:
        await store.close()
    assert largest < 4 * 1024 * 1024, largest


async def test_group_commit_on_the_writer_thread(tmp_path: Path) -> None:
    """An SQLite file: sessions hand messages to the writer's own thread, which commits
    what arrived together as one transaction and answers every session in it."""
    store = SqlQueueStore(f"sqlite+aiosqlite:///{tmp_path / 'q.db'}")
    await store.open()
    committer = GroupCommitter(store, max_batch=64)
    writer = asyncio.create_task(committer.run())
    await asyncio.sleep(0)
    try:
        thread = next(t for t in threading.enumerate() if t.name == "queue-writer")
        await asyncio.gather(*(committer.submit(m) for m in batch(200, size=100)))
        if hasattr(os, "SCHED_BATCH"):  # waking it does not preempt the event loop
            assert os.sched_getscheduler(thread.native_id) == os.SCHED_BATCH
    finally:
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer
        await store.close()
    assert committer.committed == 200 and committer.commits <= 200 // 64 + 1
    assert "queue-writer" not in {t.name for t in threading.enumerate()}
    with pytest.raises(QueueError, match="not running"):
        await committer.submit(batch(1)[0])
    db = sqlite3.connect(tmp_path / "q.db")
    assert db.execute("SELECT count(*) FROM messages").fetchone() == (200,)


async def test_a_stop_lets_the_commit_on_its_way_answer(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelled while its thread commits, the writer waits for that commit, and the
    sessions in it hear 'committed' (a 250), not a failure that would make them resend."""
    store = SqlQueueStore(f"sqlite+aiosqlite:///{tmp_path / 'q.db'}")
    await store.open()
    enqueue = store.blocking_enqueue()
    assert enqueue is not None
    started = threading.Event()

    def slow(messages: Sequence[NewMessage]) -> None:
        started.set()
        time.sleep(0.3)
        enqueue(messages)

    monkeypatch.setattr(store, "blocking_enqueue", lambda: slow)
    committer = GroupCommitter(store)
    writer = asyncio.create_task(committer.run())
    await asyncio.sleep(0)
    try:
        sessions = [asyncio.create_task(committer.submit(m)) for m in batch(5, size=100)]
        await asyncio.to_thread(started.wait, 5)
        writer.cancel()
        await asyncio.gather(*sessions)  # no QueueError: their commit finished
        with pytest.raises(asyncio.CancelledError):
            await writer
    finally:
        await store.close()
    assert committer.committed == 5


async def test_a_failed_batch_leaves_nothing_and_the_next_one_commits(tmp_path: Path) -> None:
    """The writer drives its sqlite3 connection itself: a batch that fails inside its
    transaction is rolled back whole, and the writer carries on with a fresh connection."""
    store = SqlQueueStore(f"sqlite+aiosqlite:///{tmp_path / 'q.db'}")
    await store.open()
    enqueue = store.blocking_enqueue()
    assert enqueue is not None
    faults.arm("enqueue.mid_batch:raise")  # message rows written, recipients not yet
    try:
        with pytest.raises(QueueError, match="fault injected"):
            await asyncio.to_thread(enqueue, batch(3))
        await asyncio.to_thread(enqueue, batch(2))
    finally:
        faults.arm("")
        await store.close()
    db = sqlite3.connect(tmp_path / "q.db")
    assert db.execute("SELECT count(*) FROM messages").fetchone() == (2,)
    assert db.execute("SELECT count(*) FROM recipients").fetchone() == (4,)


async def test_a_full_database_is_reported_as_full_and_the_writer_recovers(
        tmp_path: Path) -> None:
    """SQLite's own 'database or disk is full' from the writer's connection becomes
    QueueFullError (the front end answers 452), and once there is room again the next batch
    commits on a fresh connection."""
    store = SqlQueueStore(f"sqlite+aiosqlite:///{tmp_path / 'q.db'}")
    await store.open()
    enqueue = store.blocking_enqueue()
    assert enqueue is not None and store._writer is not None
    writer = store._writer
    try:
        await asyncio.to_thread(enqueue, batch(1))
        connection = writer._connection.driver_connection
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        connection.execute(f"PRAGMA max_page_count={pages}")  # no room to grow
        with pytest.raises(QueueFullError, match="full"):
            await asyncio.to_thread(enqueue, batch(20))
        assert writer._connection is None  # dropped: the next batch gets a fresh one
        await asyncio.to_thread(enqueue, batch(2))
    finally:
        await store.close()
    db = sqlite3.connect(tmp_path / "q.db")
    assert db.execute("SELECT count(*) FROM messages").fetchone() == (3,)


@pytest.mark.parametrize("writer_process", [False, True], ids=["thread", "process"])
async def test_a_session_gone_before_the_hand_over_is_not_committed(
        tmp_path: Path, writer_process: bool) -> None:
    """It never heard a 250; committing its message would make its resend a second copy.
    (With a writer process the committer is a task, which leaves it out the same way.)"""
    store = SqlQueueStore(f"sqlite+aiosqlite:///{tmp_path / 'q.db'}",
                          writer_process=writer_process)
    await store.open()
    committer = GroupCommitter(store)
    writer = asyncio.create_task(committer.run())
    await asyncio.sleep(0)
    try:
        gone, kept = batch(2, size=100)
        session = asyncio.create_task(committer.submit(gone))
        await asyncio.sleep(0)  # it has handed its message in; the hand-over is next pass
        session.cancel()
        await committer.submit(kept)
    finally:
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer
        await store.close()
    assert session.cancelled() and committer.committed == 1
    db = sqlite3.connect(tmp_path / "q.db")
    assert db.execute("SELECT queue_id FROM messages").fetchall() == [(kept.queue_id,)]
