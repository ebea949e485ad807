"""The queue's SQLite file: made once, opened without creating it, refused when it is none.

SQLite makes a new, empty database wherever a connection opens a path that names nothing.
A queue file deleted under a running server would then be replaced by an empty one at its
path by the next connection the server opens, and taken up as the queue by the next start.
So only :meth:`~mailqueue.queue.sqlstore.SqlQueueStore.open` with ``create`` (``serve``,
``db upgrade``, tests) makes the file, with one plain connection (:func:`create_file`);
every other connection opens it read-write without creating it
(:func:`open_without_creating`): the engine's, the group commit's writer, its checkpoints,
the writer process.

Every other command works on a queue that must already exist: :func:`queue_tables` refuses
a missing file, a directory, an empty file, another format or another program's database
with one line naming it, and changes nothing. Blocking: run these in a thread from the
event loop.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event

from mailqueue.errors import QueueError
from mailqueue.queue.schema import metadata
from mailqueue.sqliteurl import file_uri

CREATE_HINT = "`mailqueue serve` or `mailqueue db upgrade` with this config creates it"
_NOT_A_DATABASE = 26  # SQLITE_NOTADB


def open_without_creating(engine: Engine, path: str) -> None:
    """Have every connection ``engine`` opens open the file at ``path`` read-write, and
    fail where there is none instead of creating it (SQLite's URI ``mode=rw``)."""
    uri = file_uri(path)

    @event.listens_for(engine, "do_connect")
    def _read_write(_dialect: Any, _record: Any, cargs: list[Any],
                    cparams: dict[str, Any]) -> None:
        cargs[:] = [uri]
        cparams["uri"] = True


def create_file(path: str) -> None:
    """Make the directory of ``path`` and an empty database there, unless it exists."""
    folder = Path(path).absolute().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = "a file is in the way" if isinstance(exc, FileExistsError) else \
            exc.strerror or str(exc)
        raise QueueError(f"cannot create the directory {folder} for the queue database: "
                         f"{reason} (check [queue] url)") from exc
    try:
        sqlite3.connect(file_uri(path, create=True), uri=True).close()
    except sqlite3.Error as exc:
        raise QueueError(_unreadable(path, exc)) from exc


def queue_tables(path: str, busy_timeout: float = 5.0) -> set[str]:
    """The tables of the mailqueue queue in the file at ``path``; :class:`QueueError`
    saying what to fix when the file is not one.

    The file is read, never written: its tables are listed over a connection that may not
    create the file, and in a database that is not in WAL mode a read changes nothing."""
    try:
        conn = sqlite3.connect(file_uri(path), uri=True, timeout=busy_timeout)
        try:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise QueueError(_unreadable(path, exc)) from exc
    tables = {str(row[0]) for row in rows}
    if tables & set(metadata.tables):
        return tables
    shown = os.path.abspath(path)
    if not tables and _size(path) == 0:
        raise QueueError(f"{shown} is an empty file, not a mailqueue queue (check [queue] "
                         f"url; {CREATE_HINT})")
    raise QueueError(f"{shown} is an SQLite database without mailqueue's tables (another "
                     "program's?); check [queue] url")


def _unreadable(path: str, exc: sqlite3.Error) -> str:
    """Why SQLite could not read ``path``, in the words of what to fix."""
    shown = os.path.abspath(path)
    if getattr(exc, "sqlite_errorcode", None) == _NOT_A_DATABASE:
        return f"{shown} is not an SQLite database (check [queue] url)"
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return f"no queue database at {shown} (check [queue] url; {CREATE_HINT})"
    except OSError as error:
        return f"cannot read the queue database {shown}: {error.strerror or error}"
    if stat.S_ISDIR(info.st_mode):
        return f"{shown} is a directory, not a queue database (check [queue] url)"
    return f"cannot read the queue database {shown}: {exc}"


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None
