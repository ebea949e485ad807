"""``[queue] writer = "process"``: the group commit's transaction in a child process."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from pathlib import Path

import aiosmtplib
import pytest

from mailqueue.errors import QueueError, QueueFullError
from mailqueue.loops import child_cpus
from mailqueue.queue._sqladmin import message_rows, recipient_rows
from mailqueue.queue._writerproc import WriterProcess
from mailqueue.queue.committer import GroupCommitter
from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.queue.values import NewMessage
from mailqueue.testing.drills import children
from tests.integration.test_sqlite_writer import batch
from tests.served import free_port, start, wait_listening, write_config


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has ended too (its parent has not waited for it yet).
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def _queue(tmp_path: Path) -> str:
    """The URL of a new queue file with the schema in place (as the server's store leaves
    it before it starts a writer process)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'q.db'}"
    store = SqlQueueStore(url)
    await store.open()
    await store.close()
    return url


async def _started(url: str) -> WriterProcess:
    process = WriterProcess(url, 5.0, None)
    await asyncio.to_thread(process.start)
    return process


async def _write(process: WriterProcess, messages: list[NewMessage]) -> None:
    await process.write(message_rows(messages), recipient_rows(messages))


def _count(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
    finally:
        db.close()


async def test_sessions_are_answered_after_the_child_committed(tmp_path: Path) -> None:
    store = SqlQueueStore(f"sqlite+aiosqlite:///{tmp_path / 'q.db'}", writer_process=True)
    await store.open()
    committer = GroupCommitter(store, max_batch=64)
    writer = asyncio.create_task(committer.run())
    await asyncio.sleep(0)
    try:
        pid = store._writer_process.pid if store._writer_process else None
        assert pid is not None and pid != os.getpid() and _alive(pid)
        sent = batch(300, size=500)
        await asyncio.gather(*(committer.submit(m) for m in sent))
        # Every answered message is in the file, read by another connection.
        assert _count(tmp_path / "q.db") == 300
    finally:
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer
        await store.close()
    assert committer.committed == 300 and committer.commits < 300
    assert not _alive(pid)
    db = sqlite3.connect(tmp_path / "q.db")
    stored = dict(db.execute("SELECT queue_id, body FROM messages"))
    assert all(stored[m.queue_id] == m.body for m in sent)


async def test_a_child_dead_during_a_commit_fails_that_batch_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = await _queue(tmp_path)
    # Armed in the children only (this process read MAILQUEUE_FAULTS long ago): the first
    # child dies inside its second transaction, message rows written, recipients not.
    monkeypatch.setenv("MAILQUEUE_FAULTS", "enqueue.mid_batch:kill@2")
    process = await _started(url)
    monkeypatch.delenv("MAILQUEUE_FAULTS")
    try:
        first = batch(3)
        await _write(process, first)
        old = process.pid
        with pytest.raises(QueueError, match=r"ended during a commit.*outcome is unknown"):
            second = batch(2)
            await _write(process, second)
        third = batch(4)
        await _write(process, third)
        assert process.pid not in (None, old)
    finally:
        await process.close()
    assert _count(tmp_path / "q.db") == 7  # the second batch rolled back whole


async def test_a_child_dead_between_batches_costs_no_batch(tmp_path: Path) -> None:
    url = await _queue(tmp_path)
    process = await _started(url)
    try:
        first = batch(1)
        await _write(process, first)
        old = process.pid
        assert old is not None
        os.kill(old, signal.SIGKILL)
        while _alive(old):
            await asyncio.sleep(0.01)
        second = batch(2)
        await _write(process, second)
        assert process.pid not in (None, old)
    finally:
        await process.close()
    assert _count(tmp_path / "q.db") == 3


async def test_a_failed_batch_is_answered_and_the_child_carries_on(tmp_path: Path) -> None:
    url = await _queue(tmp_path)
    process = await _started(url)
    try:
        first = batch(2)
        await _write(process, first)
        pid = process.pid
        # The same queue ids again: the whole batch is refused, nothing of it is kept.
        again = first + batch(1)
        with pytest.raises(QueueError, match="UNIQUE constraint") as caught:
            await _write(process, again)
        assert not isinstance(caught.value, QueueFullError)
        good = batch(1)
        await _write(process, good)
        assert process.pid == pid
    finally:
        await process.close()
    assert _count(tmp_path / "q.db") == 3


async def test_a_queue_the_child_cannot_open_fails_the_start(tmp_path: Path) -> None:
    process = WriterProcess(f"sqlite+aiosqlite:///{tmp_path / 'no' / 'such' / 'q.db'}",
                            1.0, None)
    with pytest.raises(QueueError, match="cannot open the queue in the writer process"):
        await asyncio.to_thread(process.start)
    assert process.pid is None


def test_the_child_runs_where_the_server_does_not() -> None:
    assert child_cpus(None, None, (0, 1, 2, 3)) is None
    assert child_cpus(None, (0,), (0, 1, 2, 3)) == (1, 2, 3)
    assert child_cpus(None, (0, 1), (0, 1)) == (0, 1)
    assert child_cpus((3,), (0,), (0, 1, 2, 3)) == (3,)


async def test_a_served_instance_outlives_its_writer_and_its_writer_dies_with_it(
        tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    text = config.read_text().replace("[delivery]", 'writer = "process"\n[delivery]', 1)
    config.write_text(text)
    proc = start(config)
    try:
        await wait_listening(port, proc)
        (child,) = children(proc.pid)
        message = b"Subject: one\r\n\r\nbody\r\n"
        await aiosmtplib.send(message, sender="s@src.test", recipients=["a@basic.example"],
                              hostname="127.0.0.1", port=port)
        os.kill(child, signal.SIGKILL)
        # The next message may meet the dead child (a 451); the one after, a new child.
        answers = []
        for _ in range(2):
            try:
                await aiosmtplib.send(message, sender="s@src.test",
                                      recipients=["a@basic.example"],
                                      hostname="127.0.0.1", port=port)
                answers.append(250)
            except aiosmtplib.SMTPResponseException as exc:
                answers.append(exc.code)
        assert answers in ([250, 250], [451, 250]), answers
        assert proc.poll() is None
        (new_child,) = children(proc.pid)
        assert new_child != child
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while _alive(new_child) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not _alive(new_child), "the writer process outlived a killed server"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _count(tmp_path / "queue.db") == 1 + answers.count(250)


async def test_a_cancelled_exchange_never_answers_the_next_batch(tmp_path: Path) -> None:
    """Cancelled while the child commits, the write leaves that child behind: the next
    batch goes to a new child and is answered by its own commit, not the old reply."""
    url = await _queue(tmp_path)
    process = await _started(url)
    try:
        warm = batch(1)
        await _write(process, warm)  # connected now
        big = batch(2000, size=4096)
        old = process.pid
        write = asyncio.create_task(_write(process, big))
        await asyncio.sleep(0)  # sent; waiting for the child's answer, which takes longer
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
        small = batch(3)
        await _write(process, small)
        assert process.pid not in (None, old)
        db = sqlite3.connect(tmp_path / "q.db")
        ids = {row[0] for row in db.execute("SELECT queue_id FROM messages")}
        db.close()
        assert {m.queue_id for m in small} <= ids
    finally:
        await process.close()


async def test_a_batch_stops_at_its_byte_limit(tmp_path: Path) -> None:
    store = SqlQueueStore(f"sqlite+aiosqlite:///{tmp_path / 'q.db'}", writer_process=True)
    await store.open()
    committer = GroupCommitter(store)
    writer = asyncio.create_task(committer.run())
    await asyncio.sleep(0)
    try:
        # Three bodies of 7 MiB: at most 16 MiB of bodies a batch, so two commits.
        large = batch(3, size=7 * 1024 * 1024)
        await asyncio.gather(*(committer.submit(m) for m in large))
    finally:
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer
        await store.close()
    assert (committer.commits, committer.committed) == (2, 3)
    assert _count(tmp_path / "q.db") == 3
