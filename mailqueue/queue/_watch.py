"""A cheap look at an SQLite queue: has anything changed since the last look?

A running server looks often (several times a second, to follow windows and nodes changed
by the CLI), and almost always nothing has changed. Rereading the tables through
SQLAlchemy would cost a millisecond of CPU each time, and a hop to a thread and back
wakes the event loop each time; :class:`Watch` looks on a thread of its own instead, over
a read-only connection of its own, and wakes the loop only when a look differs from the
one before:

- ``PRAGMA data_version`` changes whenever another connection (any process's, this
  process's other connections included) has committed to the database since the last
  look, and costs no read of the tables;
- only then are the windows' and nodes' rows read again (a few rows), and each store's
  earliest retry time (one step down the due index per store), in the same hop.

The same hop looks at the queue's file (one ``stat``: see
:mod:`mailqueue.queue._queuefile`), so a look keeps that check fresh too.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence

from mailqueue.errors import QueueError, QueueLostError
from mailqueue.queue._dberrors import database_error
from mailqueue.queue._queuefile import QueueFile
from mailqueue.queue.values import Changes
from mailqueue.sqliteurl import file_uri

_CONTROL = ("SELECT * FROM windows ORDER BY name", "SELECT * FROM nodes ORDER BY name")
_DUE = "SELECT min(next_attempt_at) FROM recipients WHERE store = ? AND state = 'queued'"


class Watch:
    """Looks at the SQLite file at ``path`` (blocking calls, for a thread; thread-safe)."""

    def __init__(self, path: str, busy_timeout: float, file: QueueFile | None) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._file = file
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._version: int | None = None
        self._commits = 0  # looks that found the data version moved (or a new connection)
        self._control: Hashable = None
        self._due: dict[str, float | None] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self, stores: Sequence[str], interval: Callable[[], float],
              report: Callable[[Changes | QueueError], None]) -> None:
        """Look every ``interval()`` seconds on a thread of its own; call ``report`` on the
        running event loop with the first look, each one that differs from the last, and
        the error of each look that fails. Once."""
        if self._thread is not None:
            raise RuntimeError("the queue is already watched")
        loop = asyncio.get_running_loop()

        def tell(value: Changes | QueueError) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to tell
                loop.call_soon_threadsafe(report, value)

        self._thread = threading.Thread(target=self._run, args=(stores, interval, tell),
                                        name="queue-watch", daemon=True)
        self._thread.start()

    def _run(self, stores: Sequence[str], interval: Callable[[], float],
             tell: Callable[[Changes | QueueError], None]) -> None:
        last: Changes | None = None
        while True:
            try:
                changes = self.look(stores)
            except QueueError as exc:
                tell(exc)
                last = None
            else:
                if changes != last:
                    tell(changes)
                    last = changes
            if self._stop.wait(interval()):
                return

    def look(self, stores: Sequence[str]) -> Changes:
        """What the database holds now, as :class:`Changes` (``due`` for ``stores``).
        Raises :class:`QueueLostError` when the queue's file is no longer at its path,
        :class:`QueueError` for a database error."""
        if self._file is not None:
            problem = self._file.check()
            if problem is not None:
                raise QueueLostError(problem)
        with self._lock:
            try:
                conn = self._connect()
                (version,) = conn.execute("PRAGMA data_version").fetchone()
                if version != self._version or set(stores) - self._due.keys():
                    self._control = tuple(tuple(conn.execute(query)) for query in _CONTROL)
                    self._due = _due(conn, stores)
                    self._commits += version != self._version
                    self._version = version
                return Changes(self._commits, self._control, _only(self._due, stores))
            except sqlite3.Error as exc:
                self._drop()
                raise database_error(exc) from exc

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            # Autocommit: no read transaction is left open between two looks, so the
            # connection never holds back a checkpoint.
            self._conn = sqlite3.connect(file_uri(self._path), uri=True,
                                         timeout=self._busy_timeout, isolation_level=None,
                                         check_same_thread=False)
            self._version = None  # a new connection's versions say nothing of the old one's
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        """Stop the thread (blocking: waits for a look under way) and close."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._drop()


def _due(conn: sqlite3.Connection, stores: Sequence[str]) -> dict[str, float | None]:
    due = {}
    for store in stores:
        (when,) = conn.execute(_DUE, (store,)).fetchone()
        due[store] = None if when is None else float(when)
    return due


def _only(due: Mapping[str, float | None], stores: Sequence[str]) -> dict[str, float | None]:
    return {store: due[store] for store in stores}
