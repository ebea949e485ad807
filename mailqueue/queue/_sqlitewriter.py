"""The SQLite enqueue path: whole transactions on a thread, with the synchronous driver.

Through aiosqlite every statement of a commit is a round trip between the event loop and
aiosqlite's thread (BEGIN, each executemany, COMMIT, cursor closes), and each hop costs the
event loop — the same loop that speaks SMTP — a wake-up. :class:`SqliteWriter` runs the
whole group-commit transaction as one call on a thread (the group committer's own, see
:mod:`mailqueue.queue.committer`), with the same pragmas (WAL, ``synchronous=FULL``, ``BEGIN
IMMEDIATE``), so it still returns only after the commit is on disk.

The transaction runs on one ``sqlite3`` connection the writer keeps, taken from the
engine's pool (so it has the engine's pragmas) and driven directly: BEGIN IMMEDIATE, one
INSERT per table (more past 999 parameters), COMMIT; no pool checkout, events or result
objects per batch. That is about half the CPU of a commit through the engine
(``benchmarks/writer_cpu.py`` measures it), time in which the writer also holds the GIL the
loop needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from mailqueue import faults, loops
from mailqueue.errors import QueueError, QueueLostError
from mailqueue.queue._dberrors import database_error
from mailqueue.queue._queuefile import QueueFile
from mailqueue.queue._sqlitefile import open_without_creating
from mailqueue.queue.schema import messages, recipients
from mailqueue.sqliteurl import sqlite_path

log = structlog.get_logger("mailqueue.queue")


def configure_sqlite(engine: Engine, busy_timeout: float,
                     immediate: Callable[[Any], bool]) -> None:
    """The settings of every SQLite connection: WAL with ``synchronous=FULL`` (a commit is
    on disk when it returns), a busy timeout, foreign keys, and BEGIN issued by SQLAlchemy —
    ``BEGIN IMMEDIATE`` where ``immediate(conn)`` says the transaction writes, so two
    writers queue on the busy timeout instead of failing on a lock upgrade.

    A freed page is not zeroed on disk (``secure_delete=FAST``; Debian's SQLite zeroes it
    by default). A settle drops each delivered body, and zeroing its pages wrote them to the
    WAL and again at the checkpoint: as many bytes as the Maildir copy itself. The freed
    pages are reused by later mail, as a deleted queue file's blocks are by a file system.
    """
    timeout_ms = int(busy_timeout * 1000)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={timeout_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA secure_delete=FAST")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate(conn) else "BEGIN")


# WAL bytes written between two checkpoints: about SQLite's own default of 1,000 pages.
CHECKPOINT_BYTES = 4 * 1024 * 1024
_ROW_OVERHEAD = 512  # a message's WAL bytes beyond its body: row, recipient, indexes
# A WAL longer than this is made to start over (see SqliteWriter._checkpoint); how long
# that checkpoint may hold new writers off waiting for readers.
WAL_RESTART_BYTES = 64 * 1024 * 1024
RESTART_WAIT_MS = 20


class SqliteWriter:
    """Commits ``(message rows, recipient rows)`` batches: :meth:`write_blocking` on the
    caller's thread (the group committer's), :meth:`write` on a thread of the writer's own.

    Checkpoints (copying the WAL back into the database file, with its own fsyncs) run on a
    second thread. Left to SQLite, the commit that crosses the WAL size limit runs the
    checkpoint itself, and the sessions waiting for that commit wait for it too: every few
    hundred messages a 250 would take several times its usual time.
    """

    def __init__(self, url: str, busy_timeout: float = 30.0,
                 instrument: Callable[[Engine], None] | None = None,
                 file: QueueFile | None = None) -> None:
        self._url = make_url(url).set(drivername="sqlite")
        self._path = sqlite_path(url)
        self._busy_timeout = busy_timeout
        self._instrument = instrument
        # The queue's file, checked after every commit (None: not checked).
        self._file = file
        self._engine: Engine | None = None
        # The writer's own connection (a pool entry held for the writer's life) and the
        # lock that keeps its transactions one at a time (the committer's thread and
        # write()'s share it).
        self._connection: Any = None
        self._connection_lock = threading.Lock()
        self._thread: ThreadPoolExecutor | None = None
        self._checkpointer: ThreadPoolExecutor | None = None
        self._checkpoint_conn: Any = None  # the checkpoint thread's own DBAPI connection
        self._checkpoint_due = 0  # WAL bytes since the last checkpoint was started
        self._checkpoint_lock = threading.Lock()
        self._checkpoint_running = threading.Event()
        self._page_size = 0

    def open(self) -> None:
        """Create the engine and the thread (the schema must exist already)."""
        if self._engine is not None:
            return
        self._engine = create_engine(self._url, connect_args={
            "timeout": self._busy_timeout, "check_same_thread": False})
        if self._path is not None:
            open_without_creating(self._engine, self._path)
        # The pragmas on every connection (the writer's own issues its BEGIN IMMEDIATE
        # itself; the checkpoint thread's runs no transaction).
        configure_sqlite(self._engine, self._busy_timeout, immediate=lambda _conn: True)
        event.listen(self._engine, "connect", no_autocheckpoint)
        if self._instrument is not None:
            self._instrument(self._engine)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="queue-enqueue")
        # Batch-scheduled like the queue writer, whichever thread happens to start it.
        self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="queue-checkpoint",
                                                initializer=loops.behind_the_loop)

    async def close(self) -> None:
        pools = (self._thread, self._checkpointer)
        self._thread = self._checkpointer = None
        for pool in pools:
            if pool is not None:
                await asyncio.get_running_loop().run_in_executor(None, pool.shutdown)
        # A commit may still be on its way (a stop cancelled twice does not wait for it):
        # wait for it off the event loop.
        await asyncio.to_thread(self._connection_lock.acquire)
        try:
            self._drop_connection()
            engine, self._engine = self._engine, None
        finally:
            self._connection_lock.release()
        if self._checkpoint_conn is not None:
            self._checkpoint_conn.close()
            self._checkpoint_conn = None
        if engine is not None:
            engine.dispose()

    async def write(self, message_rows: list[dict[str, Any]],
                    recipient_rows: list[dict[str, Any]]) -> None:
        """Insert the rows in one transaction; return once it is committed."""
        if self._thread is None:
            raise QueueError("queue writer is not open")
        await asyncio.get_running_loop().run_in_executor(
            self._thread, self.write_blocking, message_rows, recipient_rows)

    def connect(self) -> None:
        """Open the writer's connection now (blocking), so that a queue it cannot open is
        reported at start rather than by the first batch."""
        with self._driver_connection() as conn:
            conn.execute("SELECT 1 FROM messages LIMIT 0")

    def write_blocking(self, message_rows: list[dict[str, Any]],
                       recipient_rows: list[dict[str, Any]]) -> None:
        """:meth:`write` for a thread of the caller's own (the group committer's).

        Raises :class:`QueueLostError` when the queue's file is not at its path: before
        the transaction if it was lost at the last check (and still is), and after the
        COMMIT if it is lost now (deleted, replaced, its directory gone), since a commit
        into that file does not survive a restart. A path that cannot be looked at says
        nothing of the file: the commit stands (see :class:`QueueFile`)."""
        file = self._file
        if file is not None and file.lost is not None:
            file.verify()  # lost at the last check: write nothing into it unless it is back
        with self._driver_connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                _insert_rows(conn, messages.name, message_rows)
                faults.hit("enqueue.mid_batch")
                _insert_rows(conn, recipients.name, recipient_rows)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        if file is not None:
            file.verify()
        # Committed into the queue's file: from here on nothing may turn the batch into a
        # failure (its sessions would resend mail that is queued already).
        try:
            self.wrote(sum(row["size"] + _ROW_OVERHEAD for row in message_rows))
        except RuntimeError as exc:  # the checkpoint thread is shutting down
            log.warning("queue_checkpoint_skipped", error=str(exc))

    @contextlib.contextmanager
    def _driver_connection(self) -> Iterator[sqlite3.Connection]:
        """The writer's own ``sqlite3`` connection, one user at a time. A driver error
        raises :class:`QueueError` (:class:`QueueLostError` if the queue's file is lost,
        which a connection that cannot open it is the first to notice) and drops it: the
        next user starts on a fresh one, whatever state this one is in."""
        with self._connection_lock:
            if self._engine is None:
                raise QueueError("queue writer is not open")
            try:
                if self._connection is None:
                    self._connection = self._engine.raw_connection()
                yield self._connection.driver_connection
            except (sqlite3.Error, SQLAlchemyError, OSError) as exc:
                self._drop_connection()
                problem = self._file.check() if self._file is not None else None
                if problem is not None:
                    raise QueueLostError(problem) from exc
                raise database_error(exc) from exc

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(sqlite3.Error, SQLAlchemyError):
                connection.invalidate()

    def wrote(self, size: int) -> None:
        """Count about ``size`` bytes of WAL written by any of this database's connections
        (their own automatic checkpoints are off); past CHECKPOINT_BYTES, checkpoint."""
        with self._checkpoint_lock:
            self._checkpoint_due += size
            if self._checkpoint_due < CHECKPOINT_BYTES or self._checkpoint_running.is_set():
                return
            checkpointer = self._checkpointer
            if checkpointer is None:
                return
            self._checkpoint_due = 0
            self._checkpoint_running.set()
        checkpointer.submit(self._checkpoint)

    def _checkpoint(self) -> None:
        """Copy the WAL into the database (PASSIVE: never waits for, nor blocks, a writer),
        then, once the WAL has grown past WAL_RESTART_BYTES, have it start over.

        SQLite writes the WAL from its start again only when a write transaction begins
        with every frame copied back, and under a drain's back-to-back claims and settles
        that moment never comes: a long drain would leave a WAL larger than the database.
        A RESTART checkpoint holds new writers off while it copies the few frames the
        PASSIVE one left and waits for readers to leave the WAL (for at most
        RESTART_WAIT_MS; then it gives up, as PASSIVE would): a short pause a few times in
        a long drain, against a WAL that stays a small fraction of the database. A failure
        only leaves the WAL longer; the next checkpoint tries again. While the queue's file
        is lost it does nothing: the file at the path, if any, is not the queue's."""
        try:
            if self._file is not None and self._file.lost is not None:
                return
            if self._checkpoint_conn is None:
                assert self._engine is not None
                self._checkpoint_conn = self._engine.raw_connection()
            conn = self._checkpoint_conn.driver_connection
            _busy, frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames * self._frame_bytes(conn) >= WAL_RESTART_BYTES:
                (timeout_ms,) = conn.execute("PRAGMA busy_timeout").fetchone()
                conn.execute(f"PRAGMA busy_timeout={RESTART_WAIT_MS}")
                try:
                    conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
                finally:
                    conn.execute(f"PRAGMA busy_timeout={int(timeout_ms)}")
        except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
            log.warning("queue_checkpoint_failed", error=str(exc))
        finally:
            self._checkpoint_running.clear()

    def _frame_bytes(self, conn: sqlite3.Connection) -> int:
        if not self._page_size:
            self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        return self._page_size + 24  # a WAL frame: a page and its 24-byte header


def no_autocheckpoint(dbapi_conn: Any, _record: Any) -> None:
    """A connection event: leave checkpoints to :class:`SqliteWriter`."""
    dbapi_conn.execute("PRAGMA wal_autocheckpoint=0")


# The fewest parameters an SQLite build may cap a statement at (newer builds allow 32766).
_MAX_VARIABLES = 999


def _insert_rows(conn: sqlite3.Connection, table: str, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` (dicts with the same keys) with as few statements as the parameter
    limit allows.

    Not ``executemany``: sqlite3 releases the GIL around every row's step and must take it
    back before the next, and while the event loop is busy each of those takes up to the
    interpreter's switch interval, so inserting a batch would cost more than committing
    it. One multi-row statement takes the GIL back once.
    """
    columns = tuple(rows[0])
    per_statement = max(1, _MAX_VARIABLES // len(columns))
    for start in range(0, len(rows), per_statement):
        chunk = rows[start:start + per_statement]
        conn.execute(_values_insert(table, columns, len(chunk)),
                     tuple(row[column] for row in chunk for column in columns))


@functools.cache
def _values_insert(table: str, columns: tuple[str, ...], count: int) -> str:
    values = "(" + ", ".join(["?"] * len(columns)) + ")"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([values] * count)}"
