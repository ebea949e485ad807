"""The snapshot check's scratch file (:mod:`mailqueue.verify.snapshot`): the files a
snapshot recorded and the files there are now, on disk, and what differs between them.

Both sides go into a throwaway SQLite file (:class:`~mailqueue.queue._auditscratch.
ScratchFile`: no journal, no syncs, indexed once loaded, removed on close) and SQLite
matches them by key. Keys, mailboxes, paths and digests go in as UTF-8 blobs with
surrogates passed through, so that they compare in the order Python sorts strings in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from mailqueue.errors import MailqueueError
from mailqueue.queue._auditscratch import ScratchFile, text

_SCHEMA = """
CREATE TABLE before (id INTEGER PRIMARY KEY, key BLOB, mailbox BLOB, path BLOB,
                     digest BLOB, size INTEGER);
CREATE TABLE now (id INTEGER PRIMARY KEY, key BLOB, mailbox BLOB, path BLOB,
                  digest BLOB, size INTEGER);
"""

# Once both sides are in: their keys indexed; of a key given twice (names an earlier
# snapshot format made alike), only the last counts; then the files of the snapshot whose
# key is gone, and the files whose key is new, each numbered within its mailbox and
# content in key order: the n-th gone file of a mailbox and content was moved to the n-th
# new one, if there is one.
_INDEXES = """
CREATE INDEX before_key ON before (key, digest);
CREATE INDEX now_key ON now (key, digest);
DELETE FROM before WHERE id IN (
    SELECT b.id FROM before b
    JOIN (SELECT key, max(id) AS last FROM before GROUP BY key HAVING count(*) > 1) d
      ON d.key = b.key
    WHERE b.id != d.last);
DELETE FROM now WHERE id IN (
    SELECT w.id FROM now w
    JOIN (SELECT key, max(id) AS last FROM now GROUP BY key HAVING count(*) > 1) d
      ON d.key = w.key
    WHERE w.id != d.last);
CREATE TABLE gone AS
    SELECT b.key, b.mailbox, b.path, b.digest, b.size,
           row_number() OVER (PARTITION BY b.mailbox, b.digest ORDER BY b.key) AS n
    FROM before b WHERE NOT EXISTS (SELECT 1 FROM now w WHERE w.key = b.key);
CREATE TABLE fresh AS
    SELECT w.mailbox, w.path, w.digest, w.size,
           row_number() OVER (PARTITION BY w.mailbox, w.digest ORDER BY w.key) AS n
    FROM now w WHERE NOT EXISTS (SELECT 1 FROM before b WHERE b.key = w.key);
CREATE INDEX gone_key ON gone (key);
CREATE INDEX fresh_match ON fresh (mailbox, digest, n);
"""

_COUNTS = "SELECT (SELECT count(*) FROM before), (SELECT count(*) FROM fresh)"

# Each file of the snapshot whose key is gone, in key order, with the new file it was
# moved to (NULLs: none, it is missing).
_GONE = """
SELECT g.path, g.digest, g.size, f.path, f.digest, f.size
FROM gone g LEFT JOIN fresh f ON f.mailbox = g.mailbox AND f.digest = g.digest AND f.n = g.n
ORDER BY g.key
"""

# Each file of the snapshot whose key is still there with other content, in key order.
_CHANGED = """
SELECT b.path, b.digest, b.size, w.path, w.digest, w.size
FROM before b JOIN now w ON w.key = b.key
WHERE w.digest != b.digest
ORDER BY b.key
"""

# (key, mailbox, path, digest, size), as blobs but the size.
Row = tuple[bytes, bytes, bytes, bytes, int]
# (path, digest, size)
File = tuple[str, str, int]


class SnapshotScratch(ScratchFile):
    """A snapshot's files and the current files, and what differs between them."""

    SCHEMA = _SCHEMA
    INDEXES = _INDEXES
    FILE = "snapshot.db"

    def __init__(self, directory: str | None, error: type[MailqueueError]) -> None:
        super().__init__(directory, "snapshot check", error)

    def add_before(self, rows: Iterable[Row]) -> None:
        """Files the snapshot recorded, in its order (of one key, the last counts)."""
        self._insert("INSERT INTO before (key, mailbox, path, digest, size) "
                     "VALUES (?, ?, ?, ?, ?)", rows)

    def add_now(self, rows: Iterable[Row]) -> None:
        """Files there are now (of one key, the last counts)."""
        self._insert("INSERT INTO now (key, mailbox, path, digest, size) "
                     "VALUES (?, ?, ?, ?, ?)", rows)

    def counts(self) -> tuple[int, int]:
        """(files the snapshot recorded, files whose key it did not have)."""
        [(recorded, fresh)] = list(self._query(_COUNTS))
        return int(recorded), int(fresh)

    def gone(self) -> Iterator[tuple[File, File | None]]:
        """Each recorded file whose key is gone, in key order, with the new file of its
        mailbox with its content it pairs with (None: there is none)."""
        for path, digest, size, moved, moved_digest, moved_size in self._query(_GONE):
            yield (_file(path, digest, size),
                   None if moved is None else _file(moved, moved_digest, moved_size))

    def changed(self) -> Iterator[tuple[File, File]]:
        """Each recorded file whose key is there with other content, in key order:
        (recorded, now)."""
        for row in self._query(_CHANGED):
            yield _file(*row[:3]), _file(*row[3:])


def _file(path: bytes, digest: bytes, size: int) -> File:
    return text(path), text(digest), size
