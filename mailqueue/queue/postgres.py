"""PostgreSQL specifics of the queue: durability settings, notifications, the reclaim lock.

- Every connection runs with ``synchronous_commit=on`` whatever the server's default, so a
  commit (and the front end's 250 after it) means the WAL is flushed (contract 1).
- ``NOTIFY`` is sent inside the transaction that makes the change, so a listener is woken
  only once the change is visible: :data:`QUEUE_CHANNEL` for new or returned mail,
  :data:`CONTROL_CHANNEL` for window (and node) state.
- Expired leases are returned by one process at a time: the reclaim takes a
  transaction-level advisory lock with ``pg_try_advisory_xact_lock`` and skips when another
  process holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

log = structlog.get_logger("mailqueue.queue")

QUEUE_CHANNEL = "mailqueue_queue"
CONTROL_CHANNEL = "mailqueue_control"
RECLAIM_LOCK = 0x6D71_5243  # "mqRC"
DELAY_WARNING_LOCK = 0x6D71_4457  # "mqDW"
DURABLE_SETTINGS = {"synchronous_commit": "on"}
LISTENER_NAME = "mailqueue-listen"  # application_name of the LISTEN connection
PING_INTERVAL = 5.0  # the LISTEN connection is checked this often (seconds) ...
PING_TIMEOUT = 5.0  # ... and given up when a check takes longer


def is_postgres(url: str) -> bool:
    return url.startswith("postgresql")


def connect_args(url: str) -> dict[str, Any]:
    """Driver arguments that pin the session settings durability depends on."""
    if url.startswith("postgresql+asyncpg"):
        return {"server_settings": dict(DURABLE_SETTINGS)}
    options = " ".join(f"-c {k}={v}" for k, v in DURABLE_SETTINGS.items())
    return {"options": options}


async def notify(conn: AsyncConnection, channel: str) -> None:
    """Queue a notification, delivered when (and only if) the transaction commits."""
    await conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": channel})


async def try_reclaim_lock(conn: AsyncConnection) -> bool:
    """Take the reclaim lock for this transaction; False if another process holds it."""
    result = await conn.execute(text("SELECT pg_try_advisory_xact_lock(:key)"),
                                {"key": RECLAIM_LOCK})
    return bool(result.scalar())


async def delay_warning_lock(conn: AsyncConnection) -> None:
    """Wait for the delay-warning lock, held until this transaction ends."""
    await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                       {"key": DELAY_WARNING_LOCK})


class Listener:
    """A dedicated connection that LISTENs and calls back on notifications.

    :attr:`connected` is set while the connection listens: every change committed
    meanwhile, by any process, calls back. Each callback is also called once when the
    listener starts listening and once when it stops (anything sent while it did not
    listen is missed), so a caller may poll slowly while :attr:`connected` is set and must
    poll at its own pace while it is not: a lost connection costs latency, not
    correctness. The listener reconnects with a backoff; a connection that stops
    answering is given up within :data:`PING_INTERVAL` plus :data:`PING_TIMEOUT` seconds.
    """

    def __init__(self, url: str, callbacks: Mapping[str, Callable[[], None]],
                 retry: float = 1.0) -> None:
        self._url = url
        self._callbacks = dict(callbacks)
        self._retry = retry
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Listen until cancelled (asyncpg only; other drivers rely on polling)."""
        if not self._url.startswith("postgresql+asyncpg"):
            log.info("listen_unavailable", reason="driver is not asyncpg; polling only")
            return
        while True:
            try:
                await self._listen_once()
            except Exception as exc:
                self.connected.clear()
                log.warning("listen_failed", error=str(exc).splitlines()[0] if str(exc)
                            else type(exc).__name__, retry_in=self._retry)
            await asyncio.sleep(self._retry)

    async def _listen_once(self) -> None:
        args = connect_args(self._url)
        args["server_settings"]["application_name"] = LISTENER_NAME
        engine = create_async_engine(self._url, poolclass=NullPool, connect_args=args)
        try:
            async with engine.connect() as conn:
                raw: Any = (await conn.get_raw_connection()).driver_connection
                lost = asyncio.Event()
                raw.add_termination_listener(lambda _c: lost.set())
                for channel in self._callbacks:
                    await raw.add_listener(channel, self._dispatch)
                self.connected.set()
                # Wake everyone once: anything sent while we were not listening is seen.
                self._wake_all()
                try:
                    await _until_lost(raw, lost)
                except Exception:
                    # Notifications may be missed from here on: everyone looks again now,
                    # and polls at its own pace until the listener is back.
                    self.connected.clear()
                    self._wake_all()
                    raise
                finally:
                    self.connected.clear()
        finally:
            await engine.dispose()

    def _wake_all(self) -> None:
        for callback in self._callbacks.values():
            callback()

    def _dispatch(self, _conn: Any, _pid: int, channel: str, _payload: str) -> None:
        callback = self._callbacks.get(channel)
        if callback is not None:
            callback()


async def _until_lost(raw: Any, lost: asyncio.Event) -> None:
    """Wait until the connection ``raw`` is lost or stops answering; raise saying which."""
    while not lost.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(lost.wait(), PING_INTERVAL)
        if not lost.is_set():
            await raw.execute("SELECT 1", timeout=PING_TIMEOUT)  # notice a dead peer
    raise ConnectionError("listen connection closed")
