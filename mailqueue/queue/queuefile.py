"""Whether the SQLite file a queue has open is still the one at its path.

An open file outlives its name: SQLite goes on committing into a database file that was
deleted (``rm var/queue.db*``), replaced by another file, or whose directory was removed,
and those commits are gone at the next start. :class:`QueueFile` remembers the identity
(device and inode) of the file the queue opened and compares it with what the path names
now: one ``stat`` a check. The writers check after every commit, before its sessions hear
250 (see :class:`~mailqueue.queue.sqlitewriter.SqliteWriter`); every other transaction
looks at the last result, checked again off the event loop once it is older than
:data:`MAX_AGE`.

The file is *lost* from the first check that fails until one finds the same file at the
path again (moved back by the operator). Each change is logged once: ``queue_file_lost``
(an error) and ``queue_file_found``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import structlog

from mailqueue.errors import QueueLostError

log = structlog.get_logger("mailqueue.queue")

FileId = tuple[int, int]  # (st_dev, st_ino)
# How old the last check may be when a transaction on the event loop relies on it.
MAX_AGE = 0.5


def file_id(path: str) -> FileId:
    """The identity of the file at ``path`` (raises :class:`OSError`)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def parse_id(text: str) -> FileId | None:
    """:func:`format_id`'s text back to an identity ("" or "-": none)."""
    if text in ("", "-"):
        return None
    dev, _, ino = text.partition(":")
    return int(dev), int(ino)


def format_id(identity: FileId | None) -> str:
    return "-" if identity is None else f"{identity[0]}:{identity[1]}"


class QueueFile:
    """The queue's file: its path, the identity it had when the queue opened, and whether
    the path still names it. Thread-safe (the writer thread and the loop both check).

    ``announce=False`` keeps the changes out of the log: the writer process reports a lost
    file to the server, whose own :class:`QueueFile` logs it."""

    def __init__(self, path: str, identity: FileId, *, announce: bool = True,
                 max_age: float = MAX_AGE) -> None:
        self.path = os.path.abspath(path)
        self.identity = identity
        self._announce = announce
        self._max_age = max_age
        self._lock = threading.Lock()
        self._lost: str | None = None
        self._checked_at = time.monotonic()

    @classmethod
    def pin(cls, path: str) -> QueueFile:
        """The file at ``path`` now is the queue's (blocking: one ``stat``)."""
        return cls(path, file_id(path))

    @property
    def lost(self) -> str | None:
        """Why the file was lost at the last check (None: it was where it should be)."""
        return self._lost

    def check(self) -> str | None:
        """Look at the path now (blocking: one ``stat``); why the file is lost, or None."""
        problem = self._problem()
        self.observe(problem)
        return problem

    def verify(self) -> None:
        """:meth:`check`, raising :class:`QueueLostError` if the file is lost."""
        problem = self.check()
        if problem is not None:
            raise QueueLostError(problem)

    async def current(self) -> str | None:
        """On the event loop: the last check's result, checked again on a thread when it
        is older than ``max_age``."""
        if time.monotonic() - self._checked_at < self._max_age:
            return self._lost
        return await asyncio.to_thread(self.check)

    def observe(self, problem: str | None) -> None:
        """Record a check's result (made here, or by the writer process); log a change."""
        with self._lock:
            self._checked_at = time.monotonic()
            before, self._lost = self._lost, problem
        if not self._announce or (before is None) == (problem is None):
            return
        if problem is not None:
            log.error("queue_file_lost", path=self.path, reason=problem,
                      action="mail is refused with 451 until the file is back at its path; "
                             "restart the server to start on a new queue")
        else:
            log.warning("queue_file_found", path=self.path, previously=before)

    def _problem(self) -> str | None:
        try:
            found = file_id(self.path)
        except FileNotFoundError:
            if not os.path.isdir(os.path.dirname(self.path)):
                return f"the directory of queue file {self.path} is gone"
            return f"queue file {self.path} was deleted"
        except NotADirectoryError:
            return f"the directory of queue file {self.path} is gone"
        except OSError as exc:
            return f"cannot check queue file {self.path}: {exc.strerror or exc}"
        if found != self.identity:
            return f"queue file {self.path} was replaced by another file"
        return None
