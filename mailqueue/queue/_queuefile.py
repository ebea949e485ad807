"""Whether the SQLite file a queue has open is still the one at its path.

An open file outlives its name: SQLite goes on committing into a database file that was
deleted (``rm var/queue.db*``), replaced by another file, or whose directory was removed,
and those commits are gone at the next start. :class:`QueueFile` remembers the identity
(device and inode) of the file the queue opened and compares it with what the path names
now: one ``stat`` a check. The writers check after every commit, before its sessions hear
250 (see :class:`~mailqueue.queue._sqlitewriter.SqliteWriter`); every other transaction
looks at the last result, checked again off the event loop once it is older than
:data:`MAX_AGE`, and the queue's watch looks at least every half second (see
:mod:`mailqueue.queue._watch`). The SMTP
front end reads the last result without waiting (:attr:`QueueFile.lost`).

The file is *lost* from the first check that finds the path naming nothing or another file
until one finds the same file at the path again (moved back by the operator). A path that
cannot be looked at at all (no search permission, a stale NFS handle) says nothing of the
file: the queue goes on with it, acknowledging its commits. Each change is logged once:
``queue_file_lost`` (an error), ``queue_file_found``, ``queue_file_unchecked`` (a warning)
and ``queue_file_checked``.
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

    A look at the path has three outcomes. The path names the file: all is well. The path
    names nothing or another file, or its directory is gone: the file is *lost*, for
    certain. The path cannot be looked at (``stat`` fails with EACCES, ESTALE, EIO ...):
    the file is *unchecked* and nothing says it is gone, so it is used as before (a commit
    into it is acknowledged); a file already lost stays lost, as nothing says it is back.

    ``announce=False`` keeps the changes out of the log: the writer process reports them
    to the server, whose own :class:`QueueFile` logs them."""

    def __init__(self, path: str, identity: FileId, *, announce: bool = True,
                 max_age: float = MAX_AGE) -> None:
        self.path = os.path.abspath(path)
        self.identity = identity
        self._announce = announce
        self._max_age = max_age
        self._lock = threading.Lock()
        self._lost: str | None = None
        self._unchecked: str | None = None
        self._checked_at = time.monotonic()
        self._checking: asyncio.Future[str | None] | None = None  # current()'s, on the loop

    @classmethod
    def pin(cls, path: str) -> QueueFile:
        """The file at ``path`` now is the queue's (blocking: one ``stat``)."""
        return cls(path, file_id(path))

    @property
    def lost(self) -> str | None:
        """Why the file is lost, as last seen (None: it is not known to be)."""
        return self._lost

    @property
    def unchecked(self) -> str | None:
        """Why the path could not be looked at, the last time (None: it could)."""
        return self._unchecked

    def check(self) -> str | None:
        """Look at the path now (blocking: one ``stat``); why the file is lost, or None."""
        self.observe(*self._look())
        return self._lost

    def verify(self) -> None:
        """:meth:`check`, raising :class:`QueueLostError` if the file is lost."""
        problem = self.check()
        if problem is not None:
            raise QueueLostError(problem)

    async def current(self, max_age: float | None = None) -> str | None:
        """On the event loop: the last check's result, checked again on a thread when it
        is older than ``max_age`` (default: the one given at construction; 0: check now).
        Callers that come while a check is under way wait for that one: a burst of
        transactions starts one ``stat``, not one each."""
        limit = self._max_age if max_age is None else max_age
        if time.monotonic() - self._checked_at < limit:
            return self._lost
        if self._checking is None:
            self._checking = asyncio.ensure_future(self._check_on_thread())
        return await asyncio.shield(self._checking)

    async def _check_on_thread(self) -> str | None:
        try:
            return await asyncio.to_thread(self.check)
        finally:
            self._checking = None

    def observe(self, lost: str | None, unchecked: str | None = None) -> None:
        """Record a look at the path (made here, or by the writer process): ``lost``, why
        the file is lost; else ``unchecked``, why the path could not be looked at. Log
        each change once."""
        with self._lock:
            self._checked_at = time.monotonic()
            if lost is None and unchecked is not None and self._lost is not None:
                return  # lost, and nothing says it is back
            before = self._lost, self._unchecked
            self._lost, self._unchecked = lost, unchecked if lost is None else None
            after = self._lost, self._unchecked
        if self._announce and before != after:
            self._log_change(*before, *after)

    def _log_change(self, was_lost: str | None, was_unchecked: str | None,
                    lost: str | None, unchecked: str | None) -> None:
        if lost is not None and was_lost is None:
            log.error("queue_file_lost", path=self.path, reason=lost,
                      action="mail is refused with 451 until the file is back at its path; "
                             "restart the server to start on a new queue")
        elif lost is None and was_lost is not None:
            log.warning("queue_file_found", path=self.path, previously=was_lost)
        if unchecked is not None and was_unchecked is None:
            log.warning("queue_file_unchecked", path=self.path, reason=unchecked,
                        action="mail is still accepted into the open file; let the server "
                               "look at the path again")
        elif unchecked is None and was_unchecked is not None and lost is None:
            log.info("queue_file_checked", path=self.path, previously=was_unchecked)

    def _look(self) -> tuple[str | None, str | None]:
        """(why the file is lost, why the path could not be looked at): at most one set."""
        try:
            found = file_id(self.path)
        except FileNotFoundError:
            if not os.path.isdir(os.path.dirname(self.path)):
                return f"the directory of queue file {self.path} is gone", None
            return f"queue file {self.path} was deleted", None
        except NotADirectoryError:
            return f"the directory of queue file {self.path} is gone", None
        except OSError as exc:
            return None, f"cannot check queue file {self.path}: {exc.strerror or exc}"
        if found != self.identity:
            return f"queue file {self.path} was replaced by another file", None
        return None, None
