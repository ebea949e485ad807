"""The SQLAlchemy implementation of :class:`~mailqueue.queue.models.QueueStore`.

SQLite (the embedded default) runs in WAL mode with ``synchronous=FULL``, so a commit is
on disk when it returns; write transactions start with ``BEGIN IMMEDIATE`` so that two
writers queue on the busy timeout instead of failing. PostgreSQL keeps its default
``synchronous_commit=on`` and claims with ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import and_, bindparam, event, exists, func, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from mailqueue import faults
from mailqueue.errors import QueueError, QueueFullError
from mailqueue.queue.models import (
    FINAL_STATES,
    Claim,
    NewMessage,
    QueueStats,
    RecipientState,
    Settlement,
)
from mailqueue.queue.schema import messages, metadata, recipients, windows
from mailqueue.windows import Inbound, Window, WindowSet, WindowState

_IMMEDIATE = "mailqueue_write"


class SqlQueueStore:
    """A durable queue in SQLite or PostgreSQL."""

    def __init__(self, url: str, *, busy_timeout: float = 30.0) -> None:
        self.url = url
        self._sqlite = url.startswith("sqlite")
        self._busy_timeout = busy_timeout
        self._engine: AsyncEngine | None = None

    # --- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        if self._engine is not None:
            return
        self._engine = self._create_engine()
        try:
            async with self._engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
        except SQLAlchemyError as exc:
            await self.close()
            raise QueueError(f"cannot open queue {self.safe_url}: {_reason(exc)}") from exc

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    @property
    def safe_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    def _create_engine(self) -> AsyncEngine:
        if not self._sqlite:
            return create_async_engine(self.url, pool_pre_ping=True)
        database = make_url(self.url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(self.url, connect_args={"timeout": self._busy_timeout})
        timeout_ms = int(self._busy_timeout * 1000)

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy's "begin" event below issue BEGIN itself.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute(f"PRAGMA busy_timeout={timeout_ms}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn: Any) -> None:
            immediate = conn.get_execution_options().get(_IMMEDIATE, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    @asynccontextmanager
    async def _tx(self, write: bool = False) -> AsyncIterator[AsyncConnection]:
        if self._engine is None:
            raise QueueError("queue is not open")
        try:
            async with self._engine.connect() as conn:
                if write and self._sqlite:
                    await conn.execution_options(**{_IMMEDIATE: True})
                async with conn.begin():
                    yield conn
        except SQLAlchemyError as exc:
            if _storage_full(exc):
                raise QueueFullError(f"queue storage full: {_reason(exc)}") from exc
            raise QueueError(f"queue database error: {_reason(exc)}") from exc

    # --- the write path --------------------------------------------------------------

    async def enqueue(self, batch: Sequence[NewMessage]) -> None:
        if not batch:
            return
        message_rows = [{
            "queue_id": m.queue_id, "mail_from": m.mail_from, "received_at": m.received_at,
            "size": len(m.body), "message_id": m.message_id, "digest": m.digest,
            "helo": m.helo, "peer": m.peer, "rcpt_count": len(m.recipients), "body": m.body,
        } for m in batch]
        recipient_rows = [{
            "queue_id": m.queue_id, "address": address, "store": store,
            "state": RecipientState.QUEUED.value, "attempts": 0,
            "next_attempt_at": m.received_at,
        } for m in batch for address, store in m.recipients]
        async with self._tx(write=True) as conn:
            await conn.execute(insert(messages), message_rows)
            faults.hit("enqueue.mid_batch")
            await conn.execute(insert(recipients), recipient_rows)

    async def claim(self, stores: Sequence[str], limit: int, owner: str, now: float,
                    lease_until: float) -> list[Claim]:
        if not stores or limit <= 0:
            return []
        claimed: list[int] = []
        async with self._tx(write=True) as conn:
            # Windows are read in the claiming transaction, so a window saved before it
            # began is honoured even if the caller's view of the windows is a moment old.
            current = WindowSet([_window_from_row(row._mapping)
                                 for row in await conn.execute(select(windows))], now)
            stores = [s for s in stores if current.blocking(s) is None]
            if not stores:
                return []
            per_store = max(1, limit // len(stores))
            for store in stores:
                due = (select(recipients.c.id)
                       .where(recipients.c.store == store,
                              recipients.c.state == RecipientState.QUEUED.value,
                              recipients.c.next_attempt_at <= now)
                       .order_by(recipients.c.next_attempt_at)
                       .limit(min(per_store, limit - len(claimed))))
                if not self._sqlite:
                    due = due.with_for_update(skip_locked=True)
                result = await conn.execute(
                    update(recipients)
                    .where(recipients.c.id.in_(due.scalar_subquery()))
                    .values(state=RecipientState.ACTIVE.value, lease_owner=owner,
                            lease_until=lease_until, attempts=recipients.c.attempts + 1)
                    .returning(recipients.c.id))
                claimed.extend(result.scalars())
                if len(claimed) >= limit:
                    break
            if not claimed:
                return []
            rows = await conn.execute(
                select(recipients.c.id, recipients.c.queue_id, recipients.c.address,
                       recipients.c.store, recipients.c.attempts, messages.c.mail_from,
                       messages.c.received_at, messages.c.helo, messages.c.peer,
                       messages.c.body)
                .join(messages, messages.c.queue_id == recipients.c.queue_id)
                .where(recipients.c.id.in_(claimed))
                .order_by(recipients.c.queue_id))
            return [Claim(recipient_id=r.id, queue_id=r.queue_id, address=r.address,
                          store=r.store, attempts=r.attempts, mail_from=r.mail_from,
                          received_at=r.received_at, helo=r.helo, peer=r.peer,
                          body=r.body or b"") for r in rows]

    async def settle(self, settlement: Settlement, owner: str, now: float) -> None:
        if not len(settlement):
            return
        ids = settlement.delivered + [i for i, _, _ in settlement.deferred] + \
            [i for i, _ in settlement.bounced]
        mine = and_(recipients.c.id == bindparam("rid"),
                    recipients.c.state == RecipientState.ACTIVE.value,
                    recipients.c.lease_owner == owner)
        released = {"lease_owner": None, "lease_until": None}
        async with self._tx(write=True) as conn:
            if settlement.delivered:
                # A delivered file exists: record it even if the lease was lost meanwhile,
                # but never over a final state another worker recorded (never both).
                await conn.execute(
                    update(recipients).where(
                        recipients.c.id.in_(settlement.delivered),
                        recipients.c.state.not_in([s.value for s in FINAL_STATES]))
                    .values(state=RecipientState.DELIVERED.value, settled_at=now,
                            last_error=None, **released))
            if settlement.deferred:
                await conn.execute(
                    update(recipients).where(mine).values(
                        state=RecipientState.QUEUED.value,
                        next_attempt_at=bindparam("due"), last_error=bindparam("err"),
                        **released),
                    [{"rid": i, "due": due, "err": err} for i, due, err in settlement.deferred])
            if settlement.bounced:
                await conn.execute(
                    update(recipients).where(mine).values(
                        state=RecipientState.BOUNCED.value, settled_at=now,
                        last_error=bindparam("err"), **released),
                    [{"rid": i, "err": err} for i, err in settlement.bounced])
            await self._finish_messages(conn, ids, now)

    async def _finish_messages(self, conn: AsyncConnection, recipient_ids: list[int],
                               now: float) -> None:
        """Mark messages whose recipients are all final as done and drop their bodies."""
        touched = select(recipients.c.queue_id).where(recipients.c.id.in_(recipient_ids))
        open_rcpt = exists().where(recipients.c.queue_id == messages.c.queue_id,
                                   recipients.c.state.not_in([s.value for s in FINAL_STATES]))
        await conn.execute(
            update(messages)
            .where(messages.c.queue_id.in_(touched.scalar_subquery()),
                   messages.c.done_at.is_(None), ~open_rcpt)
            .values(done_at=now, body=None))

    async def reclaim_expired(self, now: float) -> int:
        async with self._tx(write=True) as conn:
            result = await conn.execute(
                update(recipients)
                .where(recipients.c.state == RecipientState.ACTIVE.value,
                       recipients.c.lease_until < now)
                .values(state=RecipientState.QUEUED.value, lease_owner=None,
                        lease_until=None, last_error="lease expired; delivery interrupted"))
            return int(result.rowcount or 0)

    # --- reads -----------------------------------------------------------------------

    async def capacity(self) -> tuple[int, int]:
        async with self._tx() as conn:
            row = (await conn.execute(
                select(func.count(), func.coalesce(func.sum(messages.c.size), 0))
                .where(messages.c.done_at.is_(None)))).one()
            return int(row[0]), int(row[1])

    async def stats(self) -> QueueStats:
        async with self._tx() as conn:
            by_state = {state.value: 0 for state in RecipientState}
            for state, count in await conn.execute(
                    select(recipients.c.state, func.count()).group_by(recipients.c.state)):
                by_state[state] = int(count)
            pending = (await conn.execute(
                select(func.count(), func.coalesce(func.sum(messages.c.size), 0),
                       func.min(messages.c.received_at))
                .where(messages.c.done_at.is_(None)))).one()
            total = (await conn.execute(select(func.count()).select_from(messages))).scalar()
            return QueueStats(recipients=by_state, messages_pending=int(pending[0]),
                              bytes_pending=int(pending[1]), oldest_pending=pending[2],
                              messages_total=int(total or 0))

    # --- windows (the control plane) -------------------------------------------------

    async def windows(self) -> list[Window]:
        async with self._tx() as conn:
            rows = await conn.execute(select(windows).order_by(windows.c.start))
            return [_window_from_row(row._mapping) for row in rows]

    async def save_window(self, window: Window, expect_state: str | None = None) -> bool:
        values = _window_to_row(window)
        async with self._tx(write=True) as conn:
            query = update(windows).where(windows.c.name == window.name)
            if expect_state is not None:
                query = query.where(windows.c.state == expect_state)
            result = await conn.execute(query.values(values))
            if result.rowcount:
                return True
            if expect_state is not None:
                return False
            await conn.execute(insert(windows).values(values))
            return True

    async def add_window_if_absent(self, window: Window) -> bool:
        async with self._tx(write=True) as conn:
            found = (await conn.execute(
                select(windows.c.name).where(windows.c.name == window.name))).first()
            if found:
                return False
            await conn.execute(insert(windows).values(_window_to_row(window)))
            return True


def _window_to_row(window: Window) -> dict[str, Any]:
    return {"name": window.name, "stores": ",".join(window.stores), "start": window.start,
            "end": window.end, "state": window.state.value, "inbound": window.inbound.value,
            "timezone": window.timezone, "started_at": window.started_at,
            "ended_at": window.ended_at}


def _window_from_row(row: Any) -> Window:
    return Window(name=row["name"], stores=tuple(s for s in row["stores"].split(",") if s),
                  start=row["start"], end=row["end"], state=WindowState(row["state"]),
                  inbound=Inbound(row["inbound"]), timezone=row["timezone"],
                  started_at=row["started_at"], ended_at=row["ended_at"])


# SQLite's SQLITE_FULL; PostgreSQL's disk_full (53100) and out-of-memory class 53.
_FULL_MARKERS = ("database or disk is full", "No space left on device", "could not extend file")


def _storage_full(exc: SQLAlchemyError) -> bool:
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code == "53100" or getattr(orig, "sqlite_errorcode", None) == 13:
        return True
    return any(marker in str(orig if orig is not None else exc) for marker in _FULL_MARKERS)


def _reason(exc: SQLAlchemyError) -> str:
    """The driver's own message, without SQL text or parameters."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
