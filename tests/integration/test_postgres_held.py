"""A server on PostgreSQL with a store held: while its LISTEN connection is up, a window's
end reaches it as a notification and it does not reread the control state every 0.1 s;
while the connection is down, or the driver cannot listen, it rereads that often again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import asyncpg
import pytest

from mailqueue.app import MailqueueApp
from mailqueue.control.windows import Window, WindowState
from mailqueue.queue import postgres
from mailqueue.queue.sqlstore import SqlQueueStore
from tests.helpers import make_config, opened_store, running, wait_for
from tests.integration.test_postgres import dsn

BOTH = frozenset({"basic", "hosted-exchange"})


class CountingStore(SqlQueueStore):
    """The real PostgreSQL queue, counting the control plane's rereads."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.reads = 0

    async def windows(self) -> list[Window]:
        self.reads += 1
        return await super().windows()


@pytest.fixture
async def held(tmp_path: Path, pg_url: str) -> AsyncIterator[tuple[MailqueueApp, str]]:
    """A running server on ``pg_url`` whose stores a window (made elsewhere) holds."""
    async with served(tmp_path, pg_url) as app:
        yield app, pg_url


def served(tmp_path: Path, url: str) -> AbstractAsyncContextManager[MailqueueApp]:
    config = make_config(tmp_path, queue={"url": url})
    return running(config, queue=CountingStore(url))


async def hold(app: MailqueueApp, url: str) -> None:
    now = time.time()
    async with opened_store(url) as other:
        await other.save_window(Window(name="upgrade", stores=(), start=now - 1,
                                       end=now + 3600, state=WindowState.ACTIVE,
                                       started_at=now - 1))
    await wait_for(lambda: app.control.blocked() == BOTH, timeout=2, interval=0.01)


async def end_elsewhere(app: MailqueueApp, url: str) -> float:
    """End the window over another connection; how long the server took to follow."""
    async with opened_store(url) as other:
        (window,) = await other.windows()
        await other.save_window(window.ended_now(time.time()))
    ended = time.monotonic()
    await wait_for(lambda: not app.control.blocked(), timeout=3, interval=0.005)
    return time.monotonic() - ended


def reads(app: MailqueueApp) -> int:
    assert isinstance(app.queue, CountingStore)
    return app.queue.reads


async def test_while_listening_a_held_store_is_not_reread_every_tenth_of_a_second(
        held: tuple[MailqueueApp, str]) -> None:
    app, url = held
    assert app.listener is not None
    await asyncio.wait_for(app.listener.connected.wait(), 5)
    await hold(app, url)
    before = reads(app)
    await asyncio.sleep(1.5)
    # Every 0.1 s would be 15; the safety reread every 0.5 s makes 3 (a notification, 4).
    assert reads(app) - before <= 5, reads(app) - before
    assert await end_elsewhere(app, url) < 0.3


async def terminate_listener(url: str) -> int:
    admin = await asyncpg.connect(dsn(url))
    try:
        return int(await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1 AND datname = current_database()",
            postgres.LISTENER_NAME))
    finally:
        await admin.close()


async def test_with_its_listener_lost_the_server_rereads_often_until_it_is_back(
        held: tuple[MailqueueApp, str]) -> None:
    app, url = held
    listener = app.listener
    assert listener is not None
    await asyncio.wait_for(listener.connected.wait(), 5)
    await hold(app, url)
    assert await terminate_listener(url) == 1
    await wait_for(lambda: not listener.connected.is_set(), timeout=2, interval=0.005)
    # The listener reconnects after a second; meanwhile no notification reaches the
    # server, and the held rereads follow the window's end.
    before = reads(app)
    await asyncio.sleep(0.4)
    assert reads(app) - before >= 3, reads(app) - before
    assert await end_elsewhere(app, url) < 0.3
    assert not listener.connected.is_set()  # the rereads did it, not the listener's return
    await asyncio.wait_for(listener.connected.wait(), 5)


async def test_a_driver_that_cannot_listen_rereads_a_held_store_often(
        tmp_path: Path, pg_url: str) -> None:
    url = pg_url.replace("postgresql+asyncpg://", "postgresql+psycopg://", 1)
    async with served(tmp_path, url) as app:
        await hold(app, url)
        await asyncio.sleep(0.3)
        assert app.listener is not None and not app.listener.connected.is_set()
        assert await end_elsewhere(app, url) < 0.3
