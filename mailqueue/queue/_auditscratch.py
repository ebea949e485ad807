"""The audit's scratch file (:mod:`mailqueue.verify`): recipients and copies, on disk.

A million recipients and a million copies do not fit in a small process, so the audit
spills both into a throwaway SQLite file in a temporary directory and lets SQLite match
them (its sorter and page cache are bounded; the rest stays on disk). The file is not the
queue: it is written without a journal or syncs, indexed once loaded, and removed on
:meth:`Scratch.close` (also when the audit fails or is interrupted). :class:`ScratchFile`
is that much, for any comparison too large to hold (the snapshot's,
:mod:`mailqueue.queue._snapshotscratch`).

Text goes in as UTF-8 blobs with surrogates passed through: a name read from a file may
hold undecodable bytes (``surrogateescape``), and blobs compare in code point order, the
order Python sorts strings in.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

from mailqueue.errors import MailqueueError

# Rows are written this many at a time; SQLite's page cache is held to this many KiB.
CHUNK = 5000
_CACHE_KIB = 4 * 1024

_SCHEMA = """
CREATE TABLE rcpt (seq INTEGER PRIMARY KEY, queue_id BLOB, rkey BLOB, address TEXT,
                   store TEXT, state TEXT, message_id TEXT, digest TEXT);
CREATE TABLE entry (queue_id BLOB PRIMARY KEY, message_id TEXT) WITHOUT ROWID;
CREATE TABLE copy (id INTEGER PRIMARY KEY, queue_id BLOB, rkey BLOB, path BLOB,
                   digest TEXT);
"""
_INDEXES = """
CREATE INDEX rcpt_key ON rcpt (queue_id, rkey);
CREATE INDEX copy_key ON copy (queue_id, rkey);
CREATE INDEX entry_message_id ON entry (message_id);
"""

# A recipient (in ledger order) with each copy of its queue id and recipient, in the order
# they were found: every recipient that has a copy, and every delivered one.
_EXPECTED = """
SELECT r.seq, r.queue_id, r.address, r.store, r.state, r.message_id, r.digest,
       c.path, c.digest
FROM rcpt r LEFT JOIN copy c ON c.queue_id = r.queue_id AND c.rkey = r.rkey
WHERE c.id IS NOT NULL OR r.state = ?
ORDER BY r.seq, c.id
"""

# Copies whose queue id and recipient no recipient of the ledger has, by key; whether
# their queue id was accepted, and its Message-ID.
_UNEXPECTED = """
SELECT c.queue_id, c.rkey, e.queue_id IS NOT NULL, e.message_id, c.path
FROM copy c LEFT JOIN entry e ON e.queue_id = c.queue_id
WHERE NOT EXISTS (SELECT 1 FROM rcpt r WHERE r.queue_id = c.queue_id AND r.rkey = c.rkey)
ORDER BY c.queue_id, c.rkey, c.id
"""

# The first copy of each queue id and recipient whose Message-ID another queue id delivered
# to the same recipient, by Message-ID and recipient, then in the order found. Only the
# messages that share a Message-ID with another are looked at (usually few).
_SAME_MESSAGE_ID = """
WITH shared_mid AS (
    SELECT message_id FROM entry WHERE message_id IS NOT NULL AND message_id != ''
    GROUP BY message_id HAVING count(*) > 1),
first AS (
    SELECT e.message_id AS mid, c.rkey, c.queue_id, min(c.id) AS id, c.path
    FROM shared_mid s JOIN entry e ON e.message_id = s.message_id
    JOIN copy c ON c.queue_id = e.queue_id
    GROUP BY c.queue_id, c.rkey),
shared AS (SELECT mid, rkey FROM first GROUP BY mid, rkey HAVING count(*) > 1)
SELECT f.mid, f.rkey, f.queue_id, f.path
FROM first f JOIN shared s ON s.mid = f.mid AND s.rkey = f.rkey
ORDER BY f.mid, f.rkey, f.id
"""

Expected = tuple[int, str, str, str, str, str | None, str, list[tuple[str, str | None]]]


class AuditError(MailqueueError):
    """The audit's scratch file cannot be made or written (no room, no temp directory)."""


class Interrupted(AuditError):
    """The scratch file was closed while the audit still used it."""


def blob(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def text(data: bytes) -> str:
    return data.decode("utf-8", "surrogatepass")


class ScratchFile:
    """A throwaway SQLite file in a temporary directory: the tables of ``SCHEMA``, filled,
    then the ``INDEXES`` script run once before the first query.

    One thread at a time may use it; :meth:`close` may be called from another thread while
    it is in use (it stops the work in hand, then removes the file). Its errors say what it
    is for (``owner``, as in "the audit's scratch file") and are ``error`` (``interrupted``
    once closed)."""

    SCHEMA: ClassVar[str] = ""
    INDEXES: ClassVar[str] = ""
    FILE: ClassVar[str] = "scratch.db"

    def __init__(self, directory: str | None, owner: str, error: type[MailqueueError],
                 interrupted: type[MailqueueError] | None = None) -> None:
        # Made when first used (in the thread that uses it), so that work cancelled before
        # then leaves nothing behind, and work cancelled after finds it to remove.
        self._where = directory
        self._owner = owner
        self._error_type = error
        self._interrupted_type = interrupted or error
        self._dir: str | None = None
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._indexed = False

    def _open(self) -> sqlite3.Connection:
        try:
            self._dir = tempfile.mkdtemp(prefix="mailqueue-verify-", dir=self._where)
        except OSError as exc:
            where = self._where or os.environ.get("TMPDIR") or "the temporary directory"
            raise self._error_type(
                f"cannot make the {self._owner}'s scratch directory in {where}: "
                f"{exc.strerror or exc} (set TMPDIR to a writable directory with room)"
            ) from None
        db = sqlite3.connect(os.path.join(self._dir, self.FILE), check_same_thread=False,
                             isolation_level=None)
        self._db = db
        db.executescript("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; "
                         f"PRAGMA cache_size = -{_CACHE_KIB}; PRAGMA temp_store = FILE;"
                         + self.SCHEMA)
        db.execute("BEGIN")
        return db

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """Stop what the file is being used for, close it and remove its directory (from
        any thread; again is a no-op)."""
        self._closed.set()
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.interrupt()
        with self._lock:
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
            if self._dir is not None:
                _remove(self._dir, self.FILE)

    def _insert(self, sql: str, rows: Iterable[tuple[object, ...]]) -> None:
        with self._using() as db:
            db.executemany(sql, rows)

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> Iterator[Any]:
        with self._using() as db:
            if not self._indexed:
                db.execute("COMMIT")  # executescript() would commit it anyway
                db.executescript(self.INDEXES + "ANALYZE;")
                self._indexed = True
            cursor = db.execute(sql, args)
        while True:
            with self._using():
                rows = cursor.fetchmany(CHUNK)
            if not rows:
                return
            yield from rows

    @contextlib.contextmanager
    def _using(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed.is_set():
                raise self._stopped()
            try:
                yield self._db if self._db is not None else self._open()
            except sqlite3.Error as exc:
                if self._closed.is_set():
                    raise self._stopped() from None
                raise self._error(exc) from None

    def _error(self, exc: sqlite3.Error) -> MailqueueError:
        return self._error_type(f"cannot write the {self._owner}'s scratch file in "
                                f"{self._dir}: {exc} (set TMPDIR to a directory with room)")

    def _stopped(self) -> MailqueueError:
        return self._interrupted_type(f"the {self._owner} was stopped")


class Scratch(ScratchFile):
    """The audit's recipients and copies, and the queries over them."""

    SCHEMA = _SCHEMA
    INDEXES = _INDEXES
    FILE = "audit.db"

    def __init__(self, directory: str | None = None) -> None:
        super().__init__(directory, "audit", AuditError, Interrupted)

    def add_recipients(self, rows: Iterable[tuple[int, bytes, bytes, str, str, str,
                                                  str | None, str]]) -> None:
        """(seq, queue id, recipient key, address, store, state, Message-ID, digest)."""
        self._insert("INSERT INTO rcpt VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def add_entries(self, rows: Iterable[tuple[bytes, str | None]]) -> None:
        """(queue id, Message-ID); a queue id given again replaces the first."""
        self._insert("INSERT OR REPLACE INTO entry VALUES (?, ?)", rows)

    def add_copies(self, rows: Iterable[tuple[bytes, bytes, bytes, str | None]]) -> None:
        """(queue id, recipient key, path, digest), in the order they were found."""
        self._insert("INSERT INTO copy (queue_id, rkey, path, digest) VALUES (?, ?, ?, ?)",
                     rows)

    def expected(self, delivered: str) -> Iterator[Expected]:
        """Each recipient that has copies or whose state is ``delivered``, in ledger order:
        (seq, queue id, address, store, state, Message-ID, digest, [(path, digest)])."""
        current: Expected | None = None
        for seq, qid, address, store, state, mid, digest, path, found in \
                self._query(_EXPECTED, (delivered,)):
            if current is None or current[0] != seq:
                if current is not None:
                    yield current
                current = (seq, text(qid), address, store, state, mid, digest, [])
            if path is not None:
                current[7].append((text(path), found))
        if current is not None:
            yield current

    def unexpected(self) -> Iterator[tuple[str, str, bool, str | None, list[str]]]:
        """Each queue id and recipient no ledger recipient has, by key: (queue id,
        recipient key, whether the queue id was accepted, its Message-ID, paths)."""
        current: tuple[str, str, bool, str | None, list[str]] | None = None
        key: tuple[bytes, bytes] | None = None
        for qid, rkey, accepted, mid, path in self._query(_UNEXPECTED):
            if key != (qid, rkey):
                if current is not None:
                    yield current
                key = (qid, rkey)
                current = (text(qid), text(rkey), bool(accepted), mid, [])
            assert current is not None
            current[4].append(text(path))
        if current is not None:
            yield current

    def same_message_id(self) -> Iterator[tuple[str, str, list[tuple[str, str]]]]:
        """Each Message-ID delivered to one recipient under several queue ids: (Message-ID,
        recipient key, [(queue id, path of its first copy)] in the order found)."""
        current: tuple[str, str, list[tuple[str, str]]] | None = None
        key: tuple[str, bytes] | None = None
        for mid, rkey, qid, path in self._query(_SAME_MESSAGE_ID):
            if key != (mid, rkey):
                if current is not None:
                    yield current
                key = (mid, rkey)
                current = (mid, text(rkey), [])
            assert current is not None
            current[2].append((text(qid), text(path)))
        if current is not None:
            yield current


def _remove(directory: str, name: str) -> None:
    """Remove the scratch directory: its one file, then itself (anything else found there
    too, should a file have been left beside it)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(directory, name))
    try:
        os.rmdir(directory)
    except OSError:
        shutil.rmtree(directory, ignore_errors=True)
