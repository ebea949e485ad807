"""The queue's SQLite file is created once, when the queue is made, and never again.

Every connection but the one that creates the database opens the file read-write without
creating it: the engine's pooled connections, the group commit's writer, its checkpoint
connection and the writer process. So a queue file deleted under a running server is not
silently replaced by a new, empty database at its path (which would make the loss look like
a replacement, leave a stray queue behind, and be taken up by the next start as the queue).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import Engine, event

from mailqueue.errors import QueueError, QueueLostError
from mailqueue.queue import _sqlitewriter as sqlitewriter
from mailqueue.queue._sqlitewriter import SqliteWriter
from mailqueue.queue._writerproc import WriterProcess
from mailqueue.queue.sqlstore import SqlQueueStore
from tests.cli_run import Mq, cli_runner, tree, write_config
from tests.helpers import opened_store
from tests.integration.test_queue_file_lost import (  # noqa: F401
    WRITERS,
    Served,
    _delete,
    make_served,
)
from tests.integration.test_sqlite_writer import batch


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def _queue(tmp_path: Path) -> tuple[Path, str]:
    """A queue made by a store that is closed again: (its file, its URL)."""
    path = tmp_path / "var" / "queue.db"
    url = f"sqlite+aiosqlite:///{path}"
    async with opened_store(url) as store:
        await store.enqueue(batch(2))
    return path, url


async def test_pooled_connections_opened_after_a_delete_create_nothing(tmp_path: Path) -> None:
    path = tmp_path / "var" / "queue.db"
    async with opened_store(f"sqlite+aiosqlite:///{path}") as store:
        await store.enqueue(batch(2))
        _delete(path)
        # More reads at once than the pool holds connections: new ones are opened, within
        # the moment the last look at the file is still taken as current.
        results = await asyncio.gather(*(store.stats() for _ in range(12)),
                                       return_exceptions=True)
        for result in results:
            assert not isinstance(result, BaseException) or (
                isinstance(result, QueueLostError) and "was deleted" in str(result)), result
        assert _left(path.parent) == []
        await asyncio.sleep(0.6)
        with pytest.raises(QueueLostError, match="was deleted"):
            await store.stats()
    assert _left(path.parent) == []


async def test_the_writer_connection_creates_nothing(tmp_path: Path) -> None:
    path, url = await _queue(tmp_path)
    writer = SqliteWriter(url)  # no identity to check: the connection itself must not create
    writer.open()
    try:
        _delete(path)
        with pytest.raises(QueueError, match="unable to open database file"):
            await asyncio.to_thread(writer.connect)
    finally:
        await writer.close()
    assert _left(path.parent) == []


async def test_the_checkpoint_connection_creates_nothing(tmp_path: Path) -> None:
    path, url = await _queue(tmp_path)
    writer = SqliteWriter(url)
    writer.open()
    try:
        _delete(path)
        writer.wrote(sqlitewriter.CHECKPOINT_BYTES)  # a checkpoint, on its own connection
    finally:
        await writer.close()  # waits for the checkpoint
    assert _left(path.parent) == []


async def test_the_writer_process_creates_nothing(tmp_path: Path) -> None:
    path, url = await _queue(tmp_path)
    _delete(path)
    child = WriterProcess(url, 5.0, None, "json", "error")
    with pytest.raises(QueueError, match="unable to open database file"):
        await asyncio.to_thread(child.start)
    await child.close()
    assert _left(path.parent) == []


@pytest.mark.parametrize("writer", WRITERS)
async def test_a_queue_deleted_under_a_busy_server_stays_deleted(
        make_served: Callable[[str], Any], writer: str) -> None:  # noqa: F811
    """Mail, readiness probes and metrics scrapes at once, right after the delete: what
    is logged and reported says "deleted" throughout, and nothing appears at the path."""
    served: Served = await make_served(writer)
    assert (await served.send("before")).startswith("250 2.0.0")
    _delete(served.queue)
    work = [served.send(f"after{i}") for i in range(4)]
    work += [served.get("/readyz") for _ in range(8)] + [served.get("/metrics")
                                                          for _ in range(8)]
    results = await asyncio.gather(*work)
    assert all(r.startswith("451 4.3.0") for r in results[:4]), results[:4]
    await asyncio.sleep(1.0)
    status, text = await served.get("/readyz")
    assert status == 503 and "was deleted" in json.loads(text)["checks"]["queue"]
    assert await served.server.terminate() == 0
    assert _left(served.queue.parent) == []
    reasons = [e["reason"] for e in served.events() if e["event"] == "queue_file_lost"]
    assert len(reasons) == 1 and "was deleted" in reasons[0], reasons


async def test_open_without_create_lists_the_tables_once(tmp_path: Path) -> None:
    """A command's open checks the file, its tables and its revision without reading the
    table list again over the engine."""
    _, url = await _queue(tmp_path)
    seen: list[str] = []

    class Recording(SqlQueueStore):
        def _instrument(self, engine: Engine) -> None:
            event.listen(engine, "before_cursor_execute",
                         lambda _c, _cur, statement, *_a: seen.append(statement))

    store = Recording(url)
    await store.open(create=False)
    try:
        assert (await store.stats()).messages_total == 2
    finally:
        await store.close()
    assert not [s for s in seen if "sqlite_master" in s], seen


# --- where the file is made -------------------------------------------------------------

@pytest.fixture
def mq(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Mq:
    return cli_runner(capsys, monkeypatch)


def test_a_path_with_url_characters_is_the_queue_s_path(tmp_path: Path, mq: Mq) -> None:
    """Spaces, ``?``, ``#``, ``%`` and non-ASCII letters in the path (percent-encoded in
    the URL, as in any URL) name the same file for every command."""
    folder = tmp_path / "q dir ?#%é"
    url = f"sqlite+aiosqlite:///{quote(str(folder / 'queue.db'))}"
    config = write_config(tmp_path, f'[queue]\nurl = "{url}"\n')
    assert mq("db", "upgrade", "-c", config).code == 0
    started = mq("window", "start", "w", "--for", "1h", "-c", config)
    assert started.code == 0, started.err
    listed = mq("window", "list", "-c", config)
    assert listed.code == 0 and listed.out.startswith("w: active"), listed.err
    assert tree(tmp_path) == ["mq.toml", "q dir ?#%é", "q dir ?#%é/queue.db"]
    tables = sqlite3.connect(folder / "queue.db").execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    assert ("windows",) in tables


async def test_a_sqlite_uri_is_opened_as_written(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``file:`` URI is SQLite's to read: no directory named after it appears."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "var").mkdir()
    async with opened_store(f"sqlite+aiosqlite:///file:{tmp_path}/var/q.db?uri=true") as store:
        await store.enqueue(batch(2))
        assert (await store.stats()).messages_total == 2
    assert tree(tmp_path) == ["var", "var/q.db"]
