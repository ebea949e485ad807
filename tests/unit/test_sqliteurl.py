"""One answer to "does this URL name an SQLite file?", for the config and the queue alike."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mailqueue.config import config_from_dict, sqlite_url_against
from mailqueue.errors import ConfigError
from mailqueue.sqliteurl import file_uri, sqlite_path

STORES = [{"name": "basic", "path": "/srv/mail", "domains": ["basic.example"]}]

URLS = [
    ("sqlite+aiosqlite:///var/queue.db", "var/queue.db"),
    ("sqlite+aiosqlite:////srv/queue.db", "/srv/queue.db"),
    ("sqlite+aiosqlite:////srv/q%20%3F%23%25/queue.db", "/srv/q ?#%/queue.db"),
    ("sqlite+aiosqlite:///var/queue.db?timeout=3", "var/queue.db"),
    ("sqlite+aiosqlite://", None),
    ("sqlite+aiosqlite:///", None),
    ("sqlite+aiosqlite:///:memory:", None),
    ("sqlite+aiosqlite:///file:queue.db?uri=true", None),
    ("sqlite+aiosqlite:///file:/srv/queue.db?uri=true&mode=rw", None),
    ("sqlite+aiosqlite:///file:mem?mode=memory&cache=shared&uri=true", None),
    ("postgresql+asyncpg://mq@127.0.0.1/mq", None),
]


@pytest.mark.parametrize(("url", "path"), URLS)
def test_sqlite_path(url: str, path: str | None) -> None:
    assert sqlite_path(url) == path


@pytest.mark.parametrize(("url", "path"), URLS)
def test_the_config_agrees_on_which_urls_are_files(url: str, path: str | None) -> None:
    """Relative paths are made absolute, and ``writer = "process"`` is accepted, for
    exactly the URLs that name a file."""
    against = sqlite_url_against(url, Path("/etc/mq"))
    if path is not None and not path.startswith("/"):
        assert sqlite_path(against) == f"/etc/mq/{path}"
    else:
        assert against == url
    if not url.startswith("sqlite+aiosqlite:///"):
        return
    data = {"queue": {"url": url, "writer": "process"}, "stores": STORES}
    if path is None:
        with pytest.raises(ConfigError, match='writer = "process" is for a queue in an '
                                              'SQLite file'):
            config_from_dict(data, "test")
    else:
        assert config_from_dict(data, "test").queue.writer == "process"


def test_file_uri_keeps_every_character_of_the_path(tmp_path: Path) -> None:
    folder = tmp_path / "q dir ?#%é:x"
    folder.mkdir()
    created = sqlite3.connect(file_uri(str(folder / "queue.db"), create=True), uri=True)
    created.execute("CREATE TABLE t (x)")
    created.close()
    assert [p.name for p in folder.iterdir()] == ["queue.db"]
    opened = sqlite3.connect(file_uri(str(folder / "queue.db")), uri=True)
    assert opened.execute("SELECT name FROM sqlite_master").fetchall() == [("t",)]
    opened.close()


def test_file_uri_never_creates(tmp_path: Path) -> None:
    with pytest.raises(sqlite3.OperationalError, match="unable to open database file"):
        sqlite3.connect(file_uri(str(tmp_path / "absent.db")), uri=True)
    assert list(tmp_path.iterdir()) == []
