"""The real PostgreSQL for tests: a database of its own per session, dropped at the end.

The server is ``MAILQUEUE_TEST_PG`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``,
the admin database used to create and drop test databases). Where no server answers, the
PostgreSQL tests are skipped with the reason — except in CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

ADMIN_URL = os.environ.get("MAILQUEUE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def sqlalchemy_url(database: str) -> str:
    """The queue URL (asyncpg driver) of ``database`` on the test server."""
    parts = urlsplit(ADMIN_URL)
    return urlunsplit(("postgresql+asyncpg", parts.netloc, f"/{database}", "", ""))


async def _admin_async(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _admin(sql: str) -> None:
    """Run ``sql`` on the admin database, in a thread of its own (so that it works from
    fixtures set up inside a running event loop, too)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _admin_async(sql)).result()


def require_server() -> None:
    """Skip (or, in CI, fail) when the test server does not answer."""
    try:
        _admin("SELECT 1")
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        reason = f"PostgreSQL not reachable at {ADMIN_URL}: {exc}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must run the PostgreSQL tests)", pytrace=False)
        pytest.skip(f"{reason}; start it or set MAILQUEUE_TEST_PG")


def create_database() -> str:
    """A new, empty database with a random name; returns its name."""
    name = f"mq_test_{secrets.token_hex(6)}"
    _admin(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_names() -> list[str]:
    """The names of the test server's databases."""
    async def names() -> list[str]:
        conn = await asyncpg.connect(ADMIN_URL, timeout=5)
        try:
            return [r[0] for r in await conn.fetch("SELECT datname FROM pg_database")]
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, names()).result()


def truncate_all(database: str) -> None:
    """Empty every table except the schema version (a clean queue for the next test)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _truncate_all(database)).result()


async def _truncate_all(database: str) -> None:
    parts = urlsplit(ADMIN_URL)
    conn = await asyncpg.connect(urlunsplit((parts.scheme, parts.netloc, f"/{database}", "",
                                             "")), timeout=5)
    try:
        tables = [r[0] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'alembic_version'")]
        if tables:
            await conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) +
                               " RESTART IDENTITY CASCADE")
    finally:
        await conn.close()
