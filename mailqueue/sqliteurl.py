"""Which SQLAlchemy URLs name an SQLite file, and that file as an SQLite URI.

One answer for the config (relative paths, ``writer = "process"``) and the queue (creating
the file and its directory, checking its identity, the writers that need a file): a URL
names an SQLite *file* when it is an SQLite URL with a database path that is neither an
in-memory database nor an SQLite URI (``file:...``), which SQLite opens exactly as
written. This module imports nothing of mailqueue, so both the
config and the queue package can use it.
"""

from __future__ import annotations

import os
from urllib.parse import quote

from sqlalchemy.engine import make_url


def sqlite_path(url: str) -> str | None:
    """The path of the SQLite file ``url`` names, as written (relative or absolute); None
    for any other database, an in-memory one, or an SQLite URI."""
    if not url.startswith("sqlite"):
        return None
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database


def file_uri(path: str, *, create: bool = False) -> str:
    """``path`` as an SQLite URI that opens it read-write; only with ``create`` may SQLite
    make the file where there is none.

    The absolute path is percent-encoded (SQLite decodes ``%HH`` in a URI's path), so a
    ``?``, ``#`` or ``%`` in a directory name stays part of the path. An empty authority
    (``file:///...``) keeps a path that starts with ``//`` a path."""
    encoded = quote(os.fsencode(os.path.abspath(path)), safe="/")
    return f"file://{encoded}?mode={'rwc' if create else 'rw'}"
