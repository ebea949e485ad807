"""A queue file deleted, replaced or left without its directory under a running server.

The server must not answer 250 for mail it commits into a file that is no longer the one at
its path: it answers ``451 4.3.0``, fails ``/readyz``, reports ``mailqueue_queue_up 0`` and
logs one error, until the file is back. Each case runs a real ``mailqueue serve`` and talks
real SMTP and HTTP to it, with the group commit on a thread and in the writer process.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from mailqueue.testing.drills import Server
from tests.helpers import opened_store, wait_for
from tests.integration.test_sqlite_writer import batch
from tests.served import free_port
from tests.smtpraw import RawSmtp

WRITERS = ["thread", "process"]


def _config(tmp_path: Path, port: int, admin_port: int, writer: str) -> Path:
    path = tmp_path / "mq.toml"
    path.write_text(f"""
[smtp]
port = {port}
hostname = "mx.test"
shutdown_grace = 2
[queue]
url = "sqlite+aiosqlite:///{tmp_path / 'var' / 'queue.db'}"
writer = "{writer}"
[delivery]
poll_interval = 0.2
[admin]
port = {admin_port}
[logging]
format = "json"
level = "info"
[[stores]]
name = "basic"
path = "{tmp_path / 'mail'}"
domains = ["basic.example"]
""")
    return path


class Served:
    """A served instance with its SMTP and admin ports and its JSON log."""

    def __init__(self, tmp_path: Path, writer: str) -> None:
        self.tmp_path = tmp_path
        self.admin_port = free_port()
        port = free_port()
        self.server = Server(_config(tmp_path, port, self.admin_port, writer), port)
        self.port = port
        self.queue = tmp_path / "var" / "queue.db"

    async def send(self, subject: str) -> str:
        """One message over SMTP; the reply that decided it (the first refusal, or the
        reply to the end of DATA)."""
        client = await RawSmtp.connect(self.port)
        try:
            assert (await client.reply()).startswith("220")
            assert (await client.cmd(b"EHLO client.test\r\n")).startswith("250")
            for command in (b"MAIL FROM:<a@src.test>\r\n", b"RCPT TO:<alice@basic.example>\r\n"):
                reply = await client.cmd(command)
                if not reply.startswith("250"):
                    return reply
            assert (await client.cmd(b"DATA\r\n")).startswith("354")
            body = f"Subject: {subject}\r\nMessage-ID: <{subject}@test>\r\n\r\nhi\r\n.\r\n"
            reply = await client.cmd(body.encode())
            await client.send(b"QUIT\r\n")
            return reply
        finally:
            await client.close()

    async def get(self, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{self.admin_port}{path}") as response:
            return response.status, await response.text()

    async def queue_up(self) -> float:
        _, text = await self.get("/metrics")
        for line in text.splitlines():
            if line.startswith("mailqueue_queue_up "):
                return float(line.split()[1])
        raise AssertionError("no mailqueue_queue_up in /metrics")

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in (self.tmp_path / "server.log").read_text().splitlines():
            if line.startswith("{"):
                found.append(json.loads(line))
        return found

    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("level") == "error"]


@pytest_asyncio.fixture
async def make_served(tmp_path: Path) -> AsyncIterator[Callable[[str], Any]]:
    started: list[Served] = []

    async def make(writer: str) -> Served:
        served = Served(tmp_path, writer)
        started.append(served)
        served.server.start()
        await served.server.listening()
        await wait_for(lambda: _ready(served), timeout=20)
        return served

    try:
        yield make
    finally:
        for served in started:
            served.server.cleanup()


async def _ready(served: Served) -> bool:
    try:
        status, _ = await served.get("/readyz")
    except aiohttp.ClientError:
        return False
    return status == 200


def _delivered(tmp_path: Path) -> list[str]:
    return [line.removeprefix("Subject: ")
            for path in (tmp_path / "mail").rglob("new/*")
            for line in path.read_text().splitlines() if line.startswith("Subject: ")]


def _delete(queue: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{queue}{suffix}").unlink(missing_ok=True)


def _replace(queue: Path) -> None:
    """Move another SQLite file (a copy of the queue, as a restore from a backup would
    bring) onto the queue's path."""
    other = queue.with_name("restored.db")
    source = sqlite3.connect(queue)
    target = sqlite3.connect(other)
    source.backup(target)
    source.close()
    target.close()
    os.replace(other, queue)


def _remove_directory(queue: Path) -> None:
    shutil.rmtree(queue.parent)


DAMAGE = {"deleted": _delete, "replaced": _replace, "directory gone": _remove_directory}
REASON = {"deleted": "deleted", "replaced": "replaced", "directory gone": "directory"}


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("damage", list(DAMAGE))
async def test_a_lost_queue_file_is_refused_not_acknowledged(
        make_served: Callable[[str], Any], writer: str, damage: str) -> None:
    served: Served = await make_served(writer)
    assert (await served.send("before")).startswith("250 2.0.0")
    DAMAGE[damage](served.queue)
    replies = [await served.send(f"after{i}") for i in range(3)]
    assert all(r.startswith("451 4.3.0") for r in replies), replies
    status, text = await served.get("/readyz")
    assert status == 503
    assert REASON[damage] in json.loads(text)["checks"]["queue"]
    assert await served.queue_up() == 0
    # It carries on refusing: no 250 however long it runs.
    assert (await served.send("later")).startswith("451 4.3.0")
    assert await served.server.terminate() == 0
    errors = served.errors()
    assert [e["event"] for e in errors] == ["queue_file_lost"], errors
    assert REASON[damage] in errors[0]["reason"]


@pytest.mark.parametrize("writer", WRITERS)
async def test_a_queue_file_moved_back_is_found_again(
        make_served: Callable[[str], Any], tmp_path: Path, writer: str) -> None:
    served: Served = await make_served(writer)
    assert (await served.send("before")).startswith("250 2.0.0")
    aside = tmp_path / "aside"
    aside.mkdir()
    names = [Path(f"{served.queue}{suffix}") for suffix in ("", "-wal", "-shm")]
    for path in names:
        path.rename(aside / path.name)
    assert (await served.send("away")).startswith("451 4.3.0")
    for path in names:
        (aside / path.name).rename(path)
    await wait_for(lambda: _ready(served), timeout=10)
    assert await served.queue_up() == 1
    assert (await served.send("back")).startswith("250 2.0.0")
    await wait_for(lambda: {"before", "back"} <= set(_delivered(tmp_path)))
    # The message refused while the file was away may have been committed into it before
    # the check that refused it (its sender resends it): there, but never twice.
    delivered = _delivered(tmp_path)
    assert sorted(delivered) == sorted(set(delivered)) and set(delivered) <= {
        "before", "away", "back"}, delivered
    assert await served.server.terminate() == 0
    events = [e["event"] for e in served.events()
              if e["event"] in ("queue_file_lost", "queue_file_found")]
    assert events == ["queue_file_lost", "queue_file_found"]
    assert [e["event"] for e in served.errors()] == ["queue_file_lost"]


@pytest.mark.parametrize("where", ["postgresql", "sqlite in memory"])
async def test_a_queue_without_a_file_has_nothing_to_lose(where: str,
                                                          request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("pg_url") if where == "postgresql" \
        else "sqlite+aiosqlite:///:memory:"
    async with opened_store(url) as store:
        assert store.file_lost() is None
        await store.enqueue(batch(3))
        assert (await store.stats()).messages_total == 3
