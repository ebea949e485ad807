"""Commands never create a queue by accident, and every command run with the same config
sees the same queue, wherever it runs from.

Only ``serve`` and ``db upgrade`` make a queue. Every other command refuses a queue that
does not exist (a missing file, an empty file, another program's database, a PostgreSQL
database without mailqueue's tables) with one line naming the resolved place, and leaves
nothing behind. Relative paths in a config file are relative to the file's directory; a
path from the environment is relative to the current directory.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import asyncpg
import pytest

from tests.cli_run import Mq, cli_runner, one_line_error, tree, write_config

RELATIVE = '[queue]\nurl = "sqlite+aiosqlite:///var/queue.db"\n'

# Every command that works on an existing queue, with the arguments it needs.
COMMANDS = [
    ["stats"],
    ["window", "list"],
    ["window", "start", "w", "--for", "1h"],
    ["window", "end", "w"],
    ["window", "extend", "w", "--by", "1h"],
    ["window", "cancel", "w"],
    ["queue", "list"],
    ["queue", "show", "Q1"],
    ["queue", "hold", "--all"],
    ["queue", "release", "--all"],
    ["queue", "retry", "--all"],
    ["queue", "delete", "--all"],
    ["queue", "bounce", "--all"],
    ["queue", "shape"],
    ["node", "list"],
    ["node", "set", "basic-1", "down"],
    ["verify"],
    ["db", "status"],
]
IDS = [" ".join(c[:2]) for c in COMMANDS]


@pytest.fixture
def mq(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Mq:
    return cli_runner(capsys, monkeypatch)


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_a_missing_queue_is_refused_and_not_created(
        tmp_path: Path, mq: Mq, monkeypatch: pytest.MonkeyPatch, command: list[str]) -> None:
    config = write_config(tmp_path / "etc", RELATIVE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # run from another directory than the config's
    result = mq(*command, "-c", config)
    one_line_error(result, f"no queue database at {tmp_path / 'etc' / 'var' / 'queue.db'}",
                   "mailqueue serve", "db upgrade")
    assert tree(tmp_path) == ["elsewhere", "etc", "etc/mq.toml"]


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _text(path: Path) -> None:
    path.write_text("not a database\n")


def _foreign(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize(("make", "says"), [
    (_empty, "is an empty file, not a mailqueue queue"),
    (_text, "is not an SQLite database"),
    (_foreign, "is an SQLite database without mailqueue's tables"),
], ids=["empty", "text", "foreign"])
@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_a_file_that_is_not_a_queue_is_refused_and_left_alone(
        tmp_path: Path, mq: Mq, command: list[str], make: object, says: str) -> None:
    config = write_config(tmp_path, RELATIVE)
    database = tmp_path / "var" / "queue.db"
    database.parent.mkdir()
    assert callable(make)
    make(database)
    before = database.read_bytes()
    one_line_error(mq(*command, "-c", config), f"{database} {says}")
    assert database.read_bytes() == before
    assert tree(tmp_path) == ["mq.toml", "var", "var/queue.db"]


def _tables(url: str) -> list[str]:
    async def read() -> list[str]:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = "
                                    "'public'")
            return sorted(r[0] for r in rows)
        finally:
            await conn.close()
    return asyncio.run(read())


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_a_postgres_database_without_the_queue_is_refused_and_left_empty(
        tmp_path: Path, mq: Mq, fresh_pg_url: str, command: list[str]) -> None:
    config = write_config(tmp_path, f'[queue]\nurl = "{fresh_pg_url}"\n')
    line = one_line_error(mq(*command, "-c", config), "has no mailqueue tables",
                          "mailqueue serve", "db upgrade")
    assert fresh_pg_url.rsplit("/", 1)[1] in line
    assert _tables(fresh_pg_url) == []


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_a_postgres_database_that_does_not_exist_is_one_line_naming_it(
        tmp_path: Path, mq: Mq, pg_url: str, command: list[str]) -> None:
    absent = pg_url.rsplit("/", 1)[0] + "/mq_absent_database"
    config = write_config(tmp_path, f'[queue]\nurl = "{absent}"\n')
    one_line_error(mq(*command, "-c", config), f"cannot open queue {absent}: ",
                   'database "mq_absent_database" does not exist')


def test_db_upgrade_creates_the_queue_the_other_commands_then_use(
        tmp_path: Path, mq: Mq, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands run from three directories with the same -c share one queue, beside the
    config file."""
    config = write_config(tmp_path / "etc", RELATIVE)
    for where in ("a", "b", "c"):
        (tmp_path / where).mkdir()
    monkeypatch.chdir(tmp_path / "a")
    created = mq("db", "upgrade", "-c", config)
    assert created.code == 0, created.err
    assert (tmp_path / "etc" / "var" / "queue.db").is_file()
    monkeypatch.chdir(tmp_path / "b")
    started = mq("window", "start", "w", "--for", "1h", "-c", config)
    assert started.code == 0 and started.out.startswith("started w: active"), started.err
    monkeypatch.chdir(tmp_path / "c")
    listed = mq("window", "list", "-c", config)
    assert listed.code == 0 and listed.out.startswith("w: active"), listed.err
    status = mq("db", "status", "-c", config)
    assert status.code == 0 and "up to date" in status.out
    assert [p for p in tree(tmp_path) if not p.startswith("etc")] == ["a", "b", "c"]


def test_db_status_reports_an_existing_queue_without_changing_it(tmp_path: Path,
                                                                  mq: Mq) -> None:
    config = write_config(tmp_path, RELATIVE)
    assert mq("db", "upgrade", "-c", config).code == 0
    database = tmp_path / "var" / "queue.db"
    before = database.read_bytes()
    status = mq("db", "status", "-c", config)
    assert status.code == 0 and "up to date" in status.out
    assert database.read_bytes() == before
