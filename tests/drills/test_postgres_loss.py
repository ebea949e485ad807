"""PostgreSQL drill: the server's database connections are cut, again and again, while 20
clients send. Every cut must read as a 4xx (try again later), never a 5xx; the server
reconnects by itself; and afterwards every message that got a 250 is in its mailboxes
exactly once.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from mailqueue.testing.drills import (
    Ledger,
    Report,
    Server,
    _load,
    _stop_load,
    drain,
    free_port,
    verify,
    write_config,
)
from tests import pg

pytestmark = [pytest.mark.drill, pytest.mark.timeout(600)]

CUTS = 8


async def cut_connections(database: str) -> int:
    """Terminate every other session on ``database``; how many there were."""
    conn = await asyncpg.connect(pg.ADMIN_URL, timeout=5)
    try:
        rows = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()", database)
        return len(rows)
    finally:
        await conn.close()


async def test_cut_database_connections_under_load_lose_nothing(tmp_path: Path,
                                                               fresh_pg_url: str) -> None:
    database = urlsplit(fresh_pg_url).path.lstrip("/")
    port = free_port()
    server = Server(write_config(tmp_path, port, queue_url=fresh_pg_url), port)
    ledger, report = Ledger(), Report("postgres: connections cut under 20 clients")
    rng = random.Random(3)
    try:
        server.start()
        await server.listening()
        stop, tasks = await _load(port, ledger, rng)
        cut = 0
        for _ in range(CUTS):
            await asyncio.sleep(rng.uniform(0.3, 0.8))
            cut += await cut_connections(database)
            assert server.alive, f"server died on a cut connection:\n{server.log_tail()}"
        await asyncio.sleep(1.5)  # it recovers while the clients go on
        acked_after_cuts = len(ledger.acked)
        await asyncio.sleep(1.5)
        await _stop_load(stop, tasks)
        assert len(ledger.acked) > acked_after_cuts, "no 250 after the last cut"
        assert await server.terminate() == 0
        await drain(server)
    finally:
        server.cleanup()
    report = verify(tmp_path / "mail", ledger, report)
    print(report.line(), f"connections cut: {cut}", dict(ledger.failures))
    assert cut >= CUTS and report.acknowledged > 0
    assert (report.lost, report.duplicates, report.phantoms, report.corrupted) == (0, 0, 0, 0)
    permanent = {k: n for k, n in ledger.failures.items() if k.startswith("reply 5")}
    assert not permanent, ledger.failures
