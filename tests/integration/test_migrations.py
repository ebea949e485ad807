"""Schema migrations: they build exactly schema.py, on SQLite and PostgreSQL, and a queue
whose schema is behind is refused with one line saying what to run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine, text

from mailqueue.errors import SchemaError
from mailqueue.queue import migrate
from mailqueue.queue.schema import metadata
from mailqueue.queue.sqlstore import SqlQueueStore


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database (no tables at all) of each kind."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'q.db'}"
    return str(request.getfixturevalue("fresh_pg_url"))


def run_sync(url: str, action: object) -> object:
    """Run ``action(connection)`` in one transaction on ``url`` (async engine, sync body)."""
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine

    async def main() -> object:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                return await conn.run_sync(action)  # type: ignore[arg-type]
        finally:
            await engine.dispose()

    return asyncio.run(main())


def test_migrations_build_exactly_schema_py(empty_url: str) -> None:
    """A column or table added to schema.py without a migration fails here: generate one
    with ``python -m mailqueue.queue.migrate revision MESSAGE``."""
    before, after = run_sync(empty_url, migrate.upgrade)  # type: ignore[misc]
    assert (before, after) == (None, migrate.head())
    assert run_sync(empty_url, migrate.differences) == []


def test_migrations_go_down_and_up_again(empty_url: str) -> None:
    from alembic import command

    def down_and_up(conn: Connection) -> list[str]:
        migrate.upgrade(conn)
        command.downgrade(migrate.alembic_config(conn), "base")
        tables = sorted(set(metadata.tables) & set(conn.dialect.get_table_names(conn)))
        migrate.upgrade(conn)
        return tables

    assert run_sync(empty_url, down_and_up) == []
    assert run_sync(empty_url, migrate.differences) == []


async def test_open_creates_an_empty_database_at_the_newest_revision(empty_url: str) -> None:
    store = SqlQueueStore(empty_url)
    await store.open()
    await store.close()
    assert await store.schema_revision() == migrate.head()
    await store.open()  # and opens it again as it is
    await store.close()


async def test_a_schema_behind_is_refused(empty_url: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    store = SqlQueueStore(empty_url)
    await store.open()
    await store.close()
    # This mailqueue is one revision ahead of the database.
    current = migrate.head()
    monkeypatch.setattr(migrate, "head", lambda: "9999")
    monkeypatch.setattr(migrate, "known_revisions", lambda: {current, "9999"})
    with pytest.raises(SchemaError, match=rf"schema is behind \(revision {current}, this "
                       r"mailqueue needs 9999\); run: mailqueue db upgrade"):
        await store.open()


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailqueue", *args, "-c", str(config)],
                          capture_output=True, text=True, timeout=60)


def test_cli_refuses_an_unversioned_schema_until_db_upgrade(tmp_path: Path) -> None:
    database = tmp_path / "queue.db"
    config = tmp_path / "mq.toml"
    config.write_text(f'[queue]\nurl = "sqlite+aiosqlite:///{database}"\n'
                      f'[[stores]]\nname = "basic"\npath = "{tmp_path / "mail"}"\n'
                      'domains = ["basic.example"]\n')
    # A queue made by a release before migrations: the first revision's tables, no version.
    engine = create_engine(f"sqlite:///{database}")
    with engine.begin() as conn:
        migrate.upgrade(conn, migrate.FIRST_REVISION)
        conn.execute(text("DROP TABLE alembic_version"))
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO windows VALUES ('w', '', 0, 1, 'ended', 'queue', "
                          "NULL, NULL, NULL)"))
    engine.dispose()

    refused = cli(config, "serve")
    assert refused.returncode == 1
    assert refused.stderr == ("mailqueue: error: queue schema has no version (made before "
                              "migrations); run: mailqueue db upgrade -c CONFIG\n")
    upgraded = cli(config, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"schema upgraded from revision none to {migrate.head()}" in upgraded.stdout
    assert "up to date" in cli(config, "db", "status").stdout
    listed = cli(config, "window", "list")
    assert listed.returncode == 0 and listed.stdout.startswith("w: ended")  # data kept


def test_migrations_ship_in_the_package() -> None:
    scripts = sorted(p.name for p in (migrate.MIGRATIONS / "versions").glob("0*.py"))
    assert scripts and scripts[0] == "0001_initial.py"
    assert (migrate.MIGRATIONS / "env.py").is_file()
    assert (migrate.MIGRATIONS / "script.py.mako").is_file()


def test_start_up_reads_the_same_revisions_as_alembic() -> None:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    assert migrate.head() == scripts.get_current_head()
    assert migrate.known_revisions() == {s.revision for s in scripts.walk_revisions()}
