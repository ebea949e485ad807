"""What only PostgreSQL does: the claim's plan, the reclaim lock, NOTIFY, durable commits."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event, text

from mailqueue.control.windows import Window
from mailqueue.queue import postgres
from mailqueue.queue.committer import GroupCommitter
from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.queue.values import NewMessage, new_queue_id
from tests.helpers import opened_store

T0 = 1_700_000_000.0


def new_message(address: str, store: str = "basic", n: int = 0) -> NewMessage:
    # Ids made in one millisecond share their time bits: spread them over n ms.
    return NewMessage(queue_id=new_queue_id(T0 + n / 1000), mail_from="a@src.test",
                      recipients=((address, store),), body=b"x", received_at=T0,
                      digest=hashlib.sha256(b"x").hexdigest())


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[SqlQueueStore]:
    async with opened_store(pg_url) as queue:
        yield queue


def dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def test_claim_walks_indexes_not_the_table(store: SqlQueueStore, pg_url: str) -> None:
    # A queue deep enough that the planner prefers indexes over scanning (a backlog).
    await store.enqueue([new_message(f"u{i}@b.example", ("basic", "hx")[i % 2], i)
                         for i in range(5000)])
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().startswith("UPDATE recipients SET state"):
            captured.append((statement, params))

    assert store._engine is not None
    event.listen(store._engine.sync_engine, "before_cursor_execute", capture)
    assert len(await store.claim(["basic"], 100, "w1", T0, T0 + 60)) == 100
    statement, params = captured[0]
    conn = await asyncpg.connect(dsn(pg_url))
    try:
        await conn.execute("ANALYZE recipients")
        async with conn.transaction():
            plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + statement, *params))
    finally:
        await conn.close()
    assert "LockRows" in plan and "ix_recipients_due" in plan, plan
    assert "Seq Scan" not in plan, plan  # O(batch), whatever the queue's depth


async def test_reclaim_runs_in_one_process_at_a_time(store: SqlQueueStore, pg_url: str) -> None:
    await store.enqueue([new_message(f"u{i}@b.example") for i in range(5)])
    assert len(await store.claim(["basic"], 10, "crashed", T0, T0 + 60)) == 5
    other = await asyncpg.connect(dsn(pg_url))
    try:
        # Another process is reclaiming: this one skips rather than repeating the work.
        await other.execute("SELECT pg_advisory_lock($1)", postgres.RECLAIM_LOCK)
        assert await store.reclaim_expired(T0 + 61) == 0
        await other.execute("SELECT pg_advisory_unlock($1)", postgres.RECLAIM_LOCK)
    finally:
        await other.close()
    assert await store.reclaim_expired(T0 + 61) == 5


async def test_concurrent_reclaims_return_each_lease_once(store: SqlQueueStore) -> None:
    await store.enqueue([new_message(f"u{i}@b.example") for i in range(50)])
    assert len(await store.claim(["basic"], 50, "crashed", T0, T0 + 60)) == 50
    counts = await asyncio.gather(*(store.reclaim_expired(T0 + 61) for _ in range(8)))
    assert sum(counts) == 50


async def test_notify_wakes_listeners_on_mail_and_windows(store: SqlQueueStore,
                                                          pg_url: str) -> None:
    mail, control = asyncio.Event(), asyncio.Event()
    listener = postgres.Listener(pg_url, {postgres.QUEUE_CHANNEL: mail.set,
                                          postgres.CONTROL_CHANNEL: control.set})
    task = asyncio.create_task(listener.run())
    try:
        await asyncio.wait_for(listener.connected.wait(), 5)
        mail.clear()
        control.clear()
        await store.enqueue([new_message("a@b.example")])
        await asyncio.wait_for(mail.wait(), 2)
        assert not control.is_set()
        await store.save_window(Window(name="w", stores=(), start=T0, end=T0 + 10))
        await asyncio.wait_for(control.wait(), 2)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_commits_are_synchronous_even_if_the_server_says_otherwise(
        fresh_pg_url: str) -> None:
    conn = await asyncpg.connect(dsn(fresh_pg_url))
    try:
        database = fresh_pg_url.rsplit("/", 1)[1]
        await conn.execute(f'ALTER DATABASE "{database}" SET synchronous_commit = off')
    finally:
        await conn.close()
    queue = SqlQueueStore(fresh_pg_url)
    await queue.open()
    try:
        assert queue._engine is not None
        async with queue._engine.connect() as sa_conn:
            setting = (await sa_conn.execute(text("SHOW synchronous_commit"))).scalar()
        assert setting == "on"
    finally:
        await queue.close()


async def test_group_commit_shares_transactions(store: SqlQueueStore) -> None:
    committer = GroupCommitter(store, max_batch=64)
    writer = asyncio.create_task(committer.run())
    await asyncio.sleep(0)
    try:
        await asyncio.gather(*(committer.submit(new_message(f"u{i}@b.example"))
                               for i in range(200)))
    finally:
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer
    assert committer.committed == 200 and committer.commits < 200
    assert (await store.stats()).messages_pending == 200


async def test_listener_reconnects_after_losing_its_connection(store: SqlQueueStore,
                                                                pg_url: str) -> None:
    mail = asyncio.Event()
    heard: list[bool] = []  # whether it was listening at each call

    def woken() -> None:
        heard.append(listener.connected.is_set())
        mail.set()

    listener = postgres.Listener(pg_url, {postgres.QUEUE_CHANNEL: woken}, retry=0.1)
    task = asyncio.create_task(listener.run())
    try:
        await asyncio.wait_for(listener.connected.wait(), 5)
        assert heard == [True]  # once on listening: whatever was sent before is looked for
        admin = await asyncpg.connect(dsn(pg_url))
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1 AND datname = current_database()",
                postgres.LISTENER_NAME)
        finally:
            await admin.close()
        assert killed == 1
        await wait_until(lambda: not listener.connected.is_set())
        assert heard == [True, False]  # once on losing it: what is sent now is missed
        await asyncio.wait_for(listener.connected.wait(), 5)
        mail.clear()
        await store.enqueue([new_message("a@b.example")])
        await asyncio.wait_for(mail.wait(), 2)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0.02)
