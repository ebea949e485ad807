"""The SQLite enqueue path on one dedicated thread with the synchronous driver.

Through aiosqlite every statement of a commit is a round trip between the event loop and
aiosqlite's thread (BEGIN, each executemany, COMMIT, cursor closes), and each hop costs the
event loop — the same loop that speaks SMTP — a wake-up. :class:`SqliteWriter` runs the
whole group-commit transaction as one call on its own thread, with the stdlib ``sqlite3``
module under SQLAlchemy Core and the same pragmas (WAL, ``synchronous=FULL``, ``BEGIN
IMMEDIATE``), so a batch costs the loop one hop and still returns only after the commit is
on disk.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from mailqueue import faults
from mailqueue.errors import QueueError
from mailqueue.queue.dberrors import database_error
from mailqueue.queue.schema import messages, recipients


def configure_sqlite(engine: Engine, busy_timeout: float,
                     immediate: Callable[[Any], bool]) -> None:
    """The durability settings of every SQLite connection: WAL with ``synchronous=FULL``
    (a commit is on disk when it returns), a busy timeout, foreign keys, and BEGIN issued by
    SQLAlchemy — ``BEGIN IMMEDIATE`` where ``immediate(conn)`` says the transaction writes,
    so two writers queue on the busy timeout instead of failing on a lock upgrade."""
    timeout_ms = int(busy_timeout * 1000)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={timeout_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate(conn) else "BEGIN")


class SqliteWriter:
    """Commits ``(message rows, recipient rows)`` batches on a dedicated thread."""

    def __init__(self, url: str, busy_timeout: float = 30.0,
                 instrument: Callable[[Engine], None] | None = None) -> None:
        self._url = make_url(url).set(drivername="sqlite")
        self._busy_timeout = busy_timeout
        self._instrument = instrument
        self._engine: Engine | None = None
        self._thread: ThreadPoolExecutor | None = None

    def open(self) -> None:
        """Create the engine and the thread (the schema must exist already)."""
        if self._engine is not None:
            return
        self._engine = create_engine(self._url, connect_args={
            "timeout": self._busy_timeout, "check_same_thread": False})
        configure_sqlite(self._engine, self._busy_timeout, immediate=lambda _conn: True)
        if self._instrument is not None:
            self._instrument(self._engine)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="queue-writer")

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, thread.shutdown)
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    async def write(self, message_rows: list[dict[str, Any]],
                    recipient_rows: list[dict[str, Any]]) -> None:
        """Insert the rows in one transaction; return once it is committed."""
        if self._thread is None:
            raise QueueError("queue writer is not open")
        await asyncio.get_running_loop().run_in_executor(
            self._thread, self._write, message_rows, recipient_rows)

    def _write(self, message_rows: list[dict[str, Any]],
               recipient_rows: list[dict[str, Any]]) -> None:
        assert self._engine is not None
        try:
            with self._engine.begin() as conn:
                conn.exec_driver_sql(_named_insert(messages.name, tuple(message_rows[0])),
                                     message_rows)
                faults.hit("enqueue.mid_batch")
                conn.exec_driver_sql(_named_insert(recipients.name, tuple(recipient_rows[0])),
                                     recipient_rows)
        except (SQLAlchemyError, OSError) as exc:
            raise database_error(exc) from exc


@functools.cache
def _named_insert(table: str, columns: tuple[str, ...]) -> str:
    """The INSERT for rows with these keys, in sqlite3's named style: the batch goes to
    ``executemany`` as it is, without SQLAlchemy compiling and processing every row."""
    return (f"INSERT INTO {table} ({', '.join(columns)}) "
            f"VALUES ({', '.join(':' + column for column in columns)})")
