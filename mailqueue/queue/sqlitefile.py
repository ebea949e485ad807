"""Whether a SQLite file is a mailqueue queue, checked without creating or changing anything.

Every command but ``serve`` and ``db upgrade`` works on a queue that must already exist: a
path that points at nothing, an empty file or another program's database is refused with
one line, rather than made into an empty queue that no server reads. Blocking: run it in
a thread from the event loop.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from urllib.parse import quote

from mailqueue.queue.schema import metadata

SQLITE_HEADER = b"SQLite format 3\x00"
CREATE_HINT = "`mailqueue serve` or `mailqueue db upgrade` with this config creates it"


def queue_file_problem(path: str, busy_timeout: float = 5.0) -> str | None:
    """Why the file at ``path`` is not a mailqueue queue (None: it is one, at some revision).

    The file is read, never written: its tables are listed over a connection that may not
    create the file, and in a database that is not in WAL mode a read changes nothing."""
    shown = os.path.abspath(path)
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return f"no queue database at {shown} (check [queue] url; {CREATE_HINT})"
    except OSError as exc:
        return f"cannot read the queue database {shown}: {exc.strerror or exc}"
    if stat.S_ISDIR(info.st_mode):
        return f"{shown} is a directory, not a queue database (check [queue] url)"
    if info.st_size == 0:
        return f"{shown} is an empty file, not a mailqueue queue (check [queue] url; " \
               f"{CREATE_HINT})"
    try:
        with open(path, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as exc:
        return f"cannot read the queue database {shown}: {exc.strerror or exc}"
    if header != SQLITE_HEADER:
        return f"{shown} is not an SQLite database (check [queue] url)"
    try:
        tables = _tables(path, busy_timeout)
    except sqlite3.Error as exc:
        return f"cannot read the queue database {shown}: {exc}"
    if not tables & set(metadata.tables):
        return f"{shown} is an SQLite database without mailqueue's tables (another " \
               "program's?); check [queue] url"
    return None


def _tables(path: str, busy_timeout: float) -> set[str]:
    uri = f"file:{quote(os.path.abspath(path))}?mode=rw"
    conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout)
    try:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    finally:
        conn.close()
    return {str(row[0]) for row in rows}
