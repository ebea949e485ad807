"""The SQLAlchemy implementation of :class:`~mailqueue.queue.store.QueueStore`.

SQLite (the embedded default) runs in WAL mode with ``synchronous=FULL``, so a commit is
on disk when it returns; write transactions start with ``BEGIN IMMEDIATE`` so that two
writers queue on the busy timeout instead of failing. PostgreSQL keeps its default
``synchronous_commit=on`` and claims with ``FOR UPDATE SKIP LOCKED``; see
:mod:`mailqueue.queue.postgres` for its notifications and the reclaim lock. The schema is
checked (or, for an empty database, created) on :meth:`SqlQueueStore.open`; see
:mod:`mailqueue.queue.migrate`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    any_,
    bindparam,
    event,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from mailqueue import logs
from mailqueue.control.nodes import NodeMode, NodeState
from mailqueue.control.windows import Inbound, Window, WindowSet, WindowState
from mailqueue.errors import QueueError, QueueLostError, SchemaError
from mailqueue.queue import migrate, postgres
from mailqueue.queue._dberrors import database_error
from mailqueue.queue._queuefile import QueueFile
from mailqueue.queue._sqladmin import (
    SqlAdminMixin,
    add_events,
    chunks,
    ids_chunks,
    ids_in,
    ids_param,
    insert_messages,
    message_rows,
    recipient_rows,
)
from mailqueue.queue._sqlitefile import (
    CREATE_HINT,
    create_file,
    open_without_creating,
    queue_tables,
)
from mailqueue.queue._sqlitewriter import SqliteWriter, configure_sqlite, no_autocheckpoint
from mailqueue.queue._watch import Watch
from mailqueue.queue._writerproc import WriterProcess
from mailqueue.queue.schema import messages, nodes, recipients, windows
from mailqueue.queue.store import BlockingEnqueue
from mailqueue.queue.values import (
    FINAL_STATES,
    Changes,
    Claim,
    EventKind,
    LedgerEntry,
    LedgerRecipient,
    NewMessage,
    QueueStats,
    RecipientOutcome,
    RecipientState,
    Settlement,
)
from mailqueue.sqliteurl import sqlite_path

_IMMEDIATE = "mailqueue_write"
# Final states a delivery recorded (a settle never overwrites them).
_OUTCOMES = (RecipientState.DELIVERED.value, RecipientState.BOUNCED.value)


# Rough WAL bytes per claimed and per settled recipient (a settle rewrites the message's
# page to drop its body), counted towards the next checkpoint.
_CLAIM_WAL_BYTES = 256
_SETTLE_WAL_BYTES = 4096
# Rows fetched at a time by a long read, so that the event loop runs between two slices.
_READ_SLICE = 1000


class SqlQueueStore(SqlAdminMixin):
    """A durable queue in SQLite or PostgreSQL."""

    def __init__(self, url: str, *, busy_timeout: float = 30.0,
                 threaded_writer: bool = True, writer_process: bool = False,
                 writer_cpus: Sequence[int] | None = None) -> None:
        self.url = url
        self._sqlite = url.startswith("sqlite")
        # The SQLite file the queue lives in (None: PostgreSQL, in memory, an SQLite URI).
        self._path = sqlite_path(url)
        self._busy_timeout = busy_timeout
        self._engine: AsyncEngine | None = None
        self._write_turn = asyncio.Lock()
        # SQLite files: enqueue commits on a dedicated thread (see sqlitewriter.py).
        self._threaded_writer = threaded_writer and self._path is not None
        self._writer: SqliteWriter | None = None
        # [queue] writer = "process": the group commit's transaction in a child process.
        self._writer_process_wanted = writer_process and self._threaded_writer
        self._writer_cpus = writer_cpus
        self._writer_process: WriterProcess | None = None
        # An SQLite file's identity, pinned at open: see mailqueue.queue._queuefile.
        self._file: QueueFile | None = None
        # An SQLite file's cheap look for changes (watch()), made at open.
        self._watch: Watch | None = None

    # --- lifecycle -------------------------------------------------------------------

    async def open(self, *, create: bool = True) -> None:
        """Connect and check the schema. With ``create`` (the server, ``db upgrade``, tests)
        an empty database, and a SQLite file and its directory, are made into a queue;
        without it (every other command) a database that holds no queue is refused with one
        line naming it, and nothing is created."""
        if self._engine is not None:
            return
        tables = None
        if create:
            await self._make_file()
        else:
            tables = await self._require_queue()
        try:
            await self._pin()
            self._engine = self._create_engine()
            # A write transaction: an empty database is made a queue here, by one process.
            async with self._tx(write=True) as conn:
                found = await conn.run_sync(migrate.prepare, create, tables)
        except SchemaError:
            await self.close()
            raise
        except QueueError as exc:
            await self.close()
            reason = str(exc).removeprefix("queue database error: ")
            raise QueueError(f"cannot open queue {self.safe_url}: {reason}") from exc
        if not found:
            await self.close()
            raise QueueError(self._no_tables())
        if self._path is not None:
            self._watch = Watch(self._path, self._busy_timeout, self._file)
        if self._threaded_writer:
            self._writer = SqliteWriter(self.url, self._busy_timeout, self._instrument,
                                        file=self._file)
            self._writer.open()
        if self._writer_process_wanted:
            # Known to close() before it starts: a start that fails, or an open cancelled
            # while the child starts, leaves no child behind.
            self._writer_process = WriterProcess(
                self.url, self._busy_timeout, self._writer_cpus, *logs.settings(),
                identity=self._file.identity if self._file is not None else None)
            try:
                await asyncio.to_thread(self._writer_process.start)
            except BaseException:
                await self.close()
                raise

    async def upgrade_schema(self) -> tuple[str | None, str | None]:
        """Apply the packaged migrations (``mailqueue db upgrade``); (before, after)."""
        await self.close()
        await self._make_file()
        self._engine = self._create_engine()
        try:
            async with self._tx(write=True) as conn:
                return await conn.run_sync(migrate.upgrade)
        except QueueError as exc:
            reason = str(exc).removeprefix("queue database error: ")
            raise QueueError(f"cannot upgrade queue {self.safe_url}: {reason}") from exc
        finally:
            await self.close()

    async def schema_revision(self) -> str | None:
        """The database's schema revision (None: made before migrations). A database that
        holds no queue is refused as :meth:`open` without ``create`` refuses it."""
        await self.close()
        tables = await self._require_queue()
        self._engine = self._create_engine()
        try:
            async with self._tx() as conn:
                revision = await conn.run_sync(migrate.current, tables)
                if revision is None and not await conn.run_sync(migrate.holds_queue, tables):
                    raise QueueError(self._no_tables())
                return revision
        except QueueError as exc:
            if not str(exc).startswith("queue database error: "):
                raise
            reason = str(exc).removeprefix("queue database error: ")
            raise QueueError(f"cannot open queue {self.safe_url}: {reason}") from exc
        finally:
            await self.close()

    async def _require_queue(self) -> set[str] | None:
        """Refuse a SQLite queue file that is missing, empty or another program's; the
        file's tables (None: no file to look at)."""
        if self._path is None:
            return None
        return await asyncio.to_thread(queue_tables, self._path, self._busy_timeout)

    async def _make_file(self) -> None:
        """Create a SQLite queue file and its directory where there are none. This is the
        one connection that may create the file; every other one opens it without."""
        if self._path is not None:
            await asyncio.to_thread(create_file, self._path)

    async def _pin(self) -> None:
        """Remember the identity of the SQLite file, before any connection opens it."""
        if self._path is None:
            return
        try:
            self._file = await asyncio.to_thread(QueueFile.pin, self._path)
        except OSError as exc:
            raise QueueError(f"queue database error: {exc.strerror or exc}") from exc

    def _no_tables(self) -> str:
        return f"queue database {self.safe_url} has no mailqueue tables ({CREATE_HINT})"

    async def close(self) -> None:
        if self._watch is not None:
            await asyncio.to_thread(self._watch.close)
            self._watch = None
        if self._writer_process is not None:
            await self._writer_process.close()
            self._writer_process = None
        if self._writer is not None:
            await self._writer.close()
            self._writer = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
        self._file = None

    def file_lost(self) -> str | None:
        """Why the queue's file is not the one it opened at its path any more (deleted,
        replaced, its directory gone), as last checked; None while it is, and always for a
        queue without a file (PostgreSQL, an in-memory SQLite). Reads what the last check
        found, without looking: every transaction and commit looks when that is old."""
        return None if self._file is None else self._file.lost

    async def _check_file(self) -> None:
        problem = None if self._file is None else await self._file.current()
        if problem is not None:
            raise QueueLostError(problem)

    @property
    def safe_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    def _instrument(self, engine: Engine) -> None:
        """Called with every engine this store creates (a seam for fault-injecting tests)."""

    def _create_engine(self) -> AsyncEngine:
        if not self._sqlite:
            engine = create_async_engine(self.url, pool_pre_ping=True,
                                         connect_args=postgres.connect_args(self.url))
            self._instrument(engine.sync_engine)
            return engine
        engine = create_async_engine(self.url, connect_args={"timeout": self._busy_timeout})
        if self._path is not None:
            open_without_creating(engine.sync_engine, self._path)
        configure_sqlite(engine.sync_engine, self._busy_timeout,
                         immediate=lambda conn: conn.get_execution_options().get(_IMMEDIATE, False))
        if self._threaded_writer:
            # Claims and settles too: their checkpoints are the writer's (see wrote()).
            event.listen(engine.sync_engine, "connect", no_autocheckpoint)
        self._instrument(engine.sync_engine)
        return engine

    @asynccontextmanager
    async def _tx(self, write: bool = False) -> AsyncIterator[AsyncConnection]:
        if self._engine is None:
            raise QueueError("queue is not open")
        # A file no longer at its path: claims, settles and reads (readiness, metrics)
        # fail as a database that does not answer would, instead of using the orphan.
        await self._check_file()
        # SQLite has one writer at a time: this process's writers queue in FIFO order here
        # instead of polling the busy handler, whose sleeps starve some writers under load.
        turn = self._write_turn if write and self._sqlite else contextlib.nullcontext()
        try:
            async with turn, self._engine.connect() as conn:
                if write and self._sqlite:
                    await conn.execution_options(**{_IMMEDIATE: True})
                async with conn.begin():
                    yield conn
        except (SQLAlchemyError, OSError) as exc:
            # OSError: the server did not answer (asyncpg raises it unwrapped on connect).
            raise await self._failure(exc) from exc

    async def _failure(self, exc: SQLAlchemyError | OSError) -> QueueError:
        """The error to raise for a driver error: the queue's file being lost if a look at
        it now says so (a connection cannot open a file deleted since the last look), else
        the database's own."""
        if self._file is not None:
            problem = await self._file.current(max_age=0)
            if problem is not None:
                return QueueLostError(problem)
        return database_error(exc)

    # --- the write path --------------------------------------------------------------

    def blocking_enqueue(self) -> BlockingEnqueue | None:
        """:meth:`enqueue` as a blocking call, for the group committer's own thread (see
        :mod:`mailqueue.queue.committer`); None where enqueue is asynchronous only, or where
        a subclass changed :meth:`enqueue` (its override is then what must run)."""
        writer = self._writer
        if (writer is None or self._writer_process is not None or
                type(self).enqueue is not SqlQueueStore.enqueue):
            return None
        return lambda batch: writer.write_blocking(message_rows(batch), recipient_rows(batch))

    async def enqueue(self, batch: Sequence[NewMessage]) -> None:
        if not batch:
            return
        if self._writer_process is not None:
            await self._check_file()
            try:
                unchecked = await self._writer_process.write(message_rows(batch),
                                                             recipient_rows(batch))
            except QueueLostError as exc:  # the child checked after its commit
                if self._file is not None:
                    self._file.observe(str(exc))
                raise
            if self._file is not None:
                self._file.observe(None, unchecked)
            return
        if self._writer is not None:
            await self._writer.write(message_rows(batch), recipient_rows(batch))
            return
        async with self._tx(write=True) as conn:
            await insert_messages(conn, batch)
            if not self._sqlite:
                await postgres.notify(conn, postgres.QUEUE_CHANNEL)
        if self._file is not None:  # committed: into the file at the path?
            await asyncio.to_thread(self._file.verify)

    async def claim(self, stores: Sequence[str], limit: int, owner: str, now: float,
                    lease_until: float, max_bytes: int = 0) -> list[Claim]:
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
                result = await conn.execute(
                    update(recipients)
                    .where(self._claimable(due))
                    .values(state=RecipientState.ACTIVE.value, lease_owner=owner,
                            lease_until=lease_until, attempts=recipients.c.attempts + 1)
                    .returning(recipients.c.id))
                claimed.extend(result.scalars())
                if len(claimed) >= limit:
                    break
            if not claimed:
                return []
            if max_bytes:
                claimed = await self._within_bytes(conn, claimed, max_bytes)
            rows = await conn.execute(
                select(recipients.c.id, recipients.c.queue_id, recipients.c.address,
                       recipients.c.store, recipients.c.attempts, messages.c.mail_from,
                       messages.c.received_at, messages.c.helo, messages.c.peer,
                       messages.c.body, messages.c.auth_user, messages.c.tls)
                .join(messages, messages.c.queue_id == recipients.c.queue_id)
                .where(ids_in(conn, recipients.c.id)), {"ids": ids_param(conn, claimed)})
            self._wrote(len(claimed) * _CLAIM_WAL_BYTES)
            # The row's columns in Claim's order, unpacked: a batch is hundreds of rows,
            # and reading each column by name costs several times as much.
            found = [Claim(rid, queue_id, address, store, attempts, mail_from, received_at,
                           helo, peer, body or b"", auth_user, tls)
                     for (rid, queue_id, address, store, attempts, mail_from, received_at,
                          helo, peer, body, auth_user, tls) in rows]
        # In queue id order, sorted here: an ORDER BY has SQLite sort the bodies with the
        # rows, through a temporary file once a batch's bodies pass a few MiB.
        found.sort(key=_by_queue_id)
        return found

    @staticmethod
    async def _within_bytes(conn: AsyncConnection, claimed: list[int],
                            max_bytes: int) -> list[int]:
        """The claimed recipients whose bodies fit in ``max_bytes`` (at least one); the
        others go back to the queue as they were, in the same transaction."""
        sizes = await conn.execute(
            select(recipients.c.id, messages.c.size)
            .join(messages, messages.c.queue_id == recipients.c.queue_id)
            .where(ids_in(conn, recipients.c.id))
            .order_by(recipients.c.next_attempt_at, recipients.c.id),
            {"ids": ids_param(conn, claimed)})
        kept: list[int] = []
        returned: list[int] = []
        total = 0
        for rid, size in sizes:
            if kept and total + size > max_bytes:
                returned.append(rid)
            else:
                kept.append(rid)
                total += size
        if returned:
            await conn.execute(
                update(recipients).where(ids_in(conn, recipients.c.id))
                .values(state=RecipientState.QUEUED.value, lease_owner=None,
                        lease_until=None, attempts=recipients.c.attempts - 1),
                {"ids": ids_param(conn, returned)})
        return kept

    def _claimable(self, due: Select[tuple[int]]) -> ColumnElement[bool]:
        """The claim's WHERE: the due rows, locked and skipped past other claimers'.

        On PostgreSQL the due ids are gathered into an array once and matched on the
        primary key (``id = ANY(ARRAY(...))``): ``IN (subquery)`` or a join plans as a
        hash join over the whole table once the queue is deep — O(queue), not O(batch).
        Rows another transaction has locked are skipped, never waited for.
        """
        if self._sqlite:
            return recipients.c.id.in_(due.scalar_subquery())
        locked = due.with_for_update(skip_locked=True).scalar_subquery()
        return recipients.c.id == any_(func.array(locked))

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
                # but never over a delivery or bounce another worker recorded (never both).
                # It is recorded over a delete: an operator may delete a recipient whose
                # lease expired and was reclaimed while this worker still delivered it, and
                # the ledger says where the mail is.
                await conn.execute(
                    update(recipients).where(
                        ids_in(conn, recipients.c.id),
                        recipients.c.state.not_in(_OUTCOMES))
                    .values(state=RecipientState.DELIVERED.value, settled_at=now,
                            last_error=None, **released),
                    {"ids": ids_param(conn, settlement.delivered)})
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
            await self.record_settlement(conn, settlement, now)
            await self._finish_messages(conn, ids, now)
        self._wrote(len(ids) * _SETTLE_WAL_BYTES)

    def _wrote(self, size: int) -> None:
        if self._writer is not None:
            self._writer.wrote(size)

    async def _finish_messages(self, conn: AsyncConnection, recipient_ids: list[int],
                               now: float) -> None:
        """Mark messages whose recipients are all final as done and drop their bodies."""
        open_rcpt = exists().where(recipients.c.queue_id == messages.c.queue_id,
                                   recipients.c.state.not_in([s.value for s in FINAL_STATES]))
        touched = select(recipients.c.queue_id).where(ids_in(conn, recipients.c.id))
        for part in ids_chunks(conn, recipient_ids):
            await conn.execute(
                update(messages)
                .where(messages.c.queue_id.in_(touched.scalar_subquery()),
                       messages.c.done_at.is_(None), ~open_rcpt)
                .values(done_at=now, body=None), {"ids": ids_param(conn, part)})

    async def reclaim_expired(self, now: float) -> int:
        async with self._tx(write=True) as conn:
            # One process at a time on PostgreSQL (SQLite's BEGIN IMMEDIATE serialises).
            if not self._sqlite and not await postgres.try_reclaim_lock(conn):
                return 0
            result = await conn.execute(
                update(recipients)
                .where(recipients.c.state == RecipientState.ACTIVE.value,
                       recipients.c.lease_until < now)
                .values(state=RecipientState.QUEUED.value, lease_owner=None,
                        lease_until=None, last_error="lease expired; delivery interrupted"))
            count = int(result.rowcount or 0)
            if count and not self._sqlite:
                await postgres.notify(conn, postgres.QUEUE_CHANNEL)
            return count

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

    async def ledger(self) -> list[LedgerEntry]:
        entries: list[LedgerEntry] = []

        async def take(part: list[LedgerEntry]) -> None:
            entries.extend(part)

        await self.read_ledger(take)
        return entries

    async def read_ledger(self, take: Callable[[list[LedgerEntry]], Awaitable[object]]
                          ) -> None:
        # One statement in one transaction (one consistent view of the queue), read in
        # slices: a message's recipients follow it, so an entry is whole once the next
        # message's rows begin.
        states = {state.value: state for state in RecipientState}
        async with self._tx() as conn:
            result = await conn.stream(
                select(messages.c.queue_id, messages.c.message_id, messages.c.digest,
                       messages.c.received_at, messages.c.size, messages.c.rcpt_count,
                       recipients.c.id, recipients.c.address, recipients.c.store,
                       recipients.c.state, recipients.c.last_error)
                .select_from(messages.outerjoin(
                    recipients, recipients.c.queue_id == messages.c.queue_id))
                .order_by(messages.c.received_at, messages.c.queue_id))
            head: Any = None
            rcpts: list[tuple[int, LedgerRecipient]] = []
            async for part in result.partitions(_READ_SLICE):
                whole: list[LedgerEntry] = []
                for row in part:
                    if head is None or row[0] != head[0]:
                        if head is not None:
                            whole.append(_ledger_entry(head, rcpts))
                        head, rcpts = row, []
                    if row[6] is not None:
                        # Interned: a ledger of a million recipients over a thousand
                        # mailboxes holds a thousand address strings, not a million.
                        rcpts.append((row[6], LedgerRecipient(
                            sys.intern(row[7]), sys.intern(row[8]), states[row[9]],
                            row[10])))
                if whole:
                    await take(whole)
            if head is not None:
                await take([_ledger_entry(head, rcpts)])

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
            if not result.rowcount:
                if expect_state is not None:
                    return False
                await conn.execute(insert(windows).values(values))
            await self._notify_control(conn)
            return True

    async def add_window_if_absent(self, window: Window) -> bool:
        async with self._tx(write=True) as conn:
            found = (await conn.execute(
                select(windows.c.name).where(windows.c.name == window.name))).first()
            if found:
                return False
            await conn.execute(insert(windows).values(_window_to_row(window)))
            await self._notify_control(conn)
            return True

    def watch(self, stores: Sequence[str], interval: Callable[[], float],
              report: Callable[[Changes | QueueError], None]) -> bool:
        # An SQLite file: its data version, and the rows only when that moved (_watch.py).
        # PostgreSQL has no such cheap look; its notifications make rereads prompt instead
        # (and, while heard, spare the control plane its frequent ones: app.py).
        if self._watch is None:
            return False
        self._watch.start(stores, interval, report)
        return True

    # --- mailbox nodes (the control plane) -------------------------------------------

    async def nodes(self) -> list[NodeState]:
        async with self._tx() as conn:
            rows = await conn.execute(select(nodes).order_by(nodes.c.name))
            return [NodeState(name=r.name, store=r.store, mode=NodeMode(r.mode),
                              latency=r.latency, failure_rate=r.failure_rate,
                              fail_next=r.fail_next, version=r.version,
                              updated_at=r.updated_at) for r in rows]

    async def save_nodes(self, states: Sequence[NodeState]) -> None:
        async with self._tx(write=True) as conn:
            for node in states:
                values = {"name": node.name, "store": node.store, "mode": node.mode.value,
                          "latency": node.latency, "failure_rate": node.failure_rate,
                          "fail_next": node.fail_next, "version": node.version,
                          "updated_at": node.updated_at}
                result = await conn.execute(
                    update(nodes).where(nodes.c.name == node.name).values(values))
                if not result.rowcount:
                    await conn.execute(insert(nodes).values(values))
            await self._notify_control(conn)

    async def retry_deferred(self, store: str, now: float, pick: Callable[[str], bool],
                             reason: str) -> int:
        # The node of an address is a hash SQL cannot compute, and a backlog can be deep:
        # the waiting recipients are read outside any write transaction and their
        # addresses hashed on a thread, so neither the event loop nor the writer's lock
        # is held meanwhile; the write transaction then only updates the chosen ids.
        ids, addresses = await self._waiting(store, now)
        chosen = await asyncio.to_thread(_picked, ids, addresses, pick)
        if not chosen:
            return 0
        released = 0
        async with self._tx(write=True) as conn:
            for part in chunks(chosen):
                # Still waiting: one claimed, held or made due since the read is left be.
                rows = await conn.execute(
                    update(recipients)
                    .where(recipients.c.id.in_(part),
                           recipients.c.state == RecipientState.QUEUED.value,
                           recipients.c.next_attempt_at > now)
                    .values(next_attempt_at=now)
                    .returning(recipients.c.queue_id, recipients.c.id))
                made = [(r.queue_id, r.id) for r in rows]
                await add_events(conn, made, now, EventKind.RETRY, reason)
                released += len(made)
            if released and not self._sqlite:
                await postgres.notify(conn, postgres.QUEUE_CHANNEL)
        return released

    async def _waiting(self, store: str, now: float) -> tuple[list[int], list[str]]:
        """The ids and addresses of ``store``'s queued recipients whose next attempt is
        after ``now`` (the due index), read in slices so that the loop runs between two,
        into flat lists (of ints and strings, which the garbage collector does not track)."""
        ids: list[int] = []
        addresses: list[str] = []
        async with self._tx() as conn:
            result = await conn.stream(
                select(recipients.c.id, recipients.c.address)
                .where(recipients.c.store == store,
                       recipients.c.state == RecipientState.QUEUED.value,
                       recipients.c.next_attempt_at > now))
            async for part in result.partitions(_READ_SLICE):
                ids += [row[0] for row in part]
                addresses += [row[1] for row in part]
        return ids, addresses

    async def outcomes(self) -> list[RecipientOutcome]:
        async with self._tx() as conn:
            rows = await conn.execute(
                select(recipients.c.queue_id, recipients.c.address, recipients.c.store,
                       recipients.c.state, messages.c.received_at, recipients.c.settled_at,
                       recipients.c.attempts, recipients.c.last_error)
                .join(messages, messages.c.queue_id == recipients.c.queue_id)
                .order_by(recipients.c.id))
            return [RecipientOutcome(queue_id=r.queue_id, address=r.address, store=r.store,
                                     state=RecipientState(r.state), received_at=r.received_at,
                                     settled_at=r.settled_at, attempts=r.attempts,
                                     last_error=r.last_error) for r in rows]

    async def _notify_control(self, conn: AsyncConnection) -> None:
        if not self._sqlite:
            await postgres.notify(conn, postgres.CONTROL_CHANNEL)


def _by_queue_id(claim: Claim) -> str:
    return claim.queue_id


def _picked(ids: Sequence[int], addresses: Sequence[str],
            pick: Callable[[str], bool]) -> list[int]:
    """Those of ``ids`` whose address ``pick`` chooses (run on a thread: ``pick`` hashes
    every address)."""
    return [rid for rid, address in zip(ids, addresses, strict=True) if pick(address)]


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


def _ledger_entry(head: Any, rcpts: list[tuple[int, LedgerRecipient]]) -> LedgerEntry:
    """The ledger entry of a message's row and its recipients (by id: in the order
    accepted)."""
    queue_id, message_id, digest, received_at, size, rcpt_count = head[:6]
    return LedgerEntry(queue_id, message_id, digest, received_at, size, rcpt_count,
                       tuple(r for _, r in sorted(rcpts, key=lambda r: r[0])))
