"""Query plans of the queue's hot paths, for tests and benchmarks (SQLite only).

:func:`hot_path_plans` runs one enqueue → claim → settle cycle against a SQLite queue,
records every statement the store sent, and asks SQLite for each one's plan
(``EXPLAIN QUERY PLAN``). :func:`full_scans` picks out the plan steps that read a whole
table, which no hot path may do: claiming must cost O(batch) whatever the queue depth.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.queue.values import NewMessage, Settlement
from mailqueue.sqliteurl import file_uri, sqlite_path


@contextmanager
def _recording(store: SqlQueueStore) -> Iterator[list[tuple[str, Any]]]:
    engine = store._engine  # a diagnostic of this package's own store
    if engine is None:
        raise RuntimeError("open the store first")
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any,
               executemany: bool) -> None:
        seen.append((statement, parameters[0] if executemany and parameters else parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def hot_path_plans(store: SqlQueueStore, message: NewMessage, store_name: str,
                         now: float) -> dict[str, list[str]]:
    """Statement text -> its plan steps, for a claim and a settle of ``message``."""
    await store.enqueue([message])
    with _recording(store) as seen:
        claims = await store.claim([store_name], 100, "plans", now, now + 60,
                                   max_bytes=len(message.body) * 64)  # the byte check too
        await store.settle(Settlement(delivered=[c.recipient_id for c in claims]), "plans",
                           now)
    path = sqlite_path(store.url)
    if path is None:
        raise RuntimeError("query plans are read from a queue in an SQLite file")
    plans: dict[str, list[str]] = {}
    with contextlib.closing(sqlite3.connect(file_uri(path), uri=True)) as conn:
        for statement, parameters in seen:
            if not statement.lstrip().upper().startswith(("SELECT", "UPDATE", "INSERT",
                                                          "DELETE")):
                continue
            rows = conn.execute(f"EXPLAIN QUERY PLAN {statement}", parameters or ())
            plans[statement] = [str(row[-1]) for row in rows]
    return plans


def full_scans(plans: dict[str, list[str]], tables: tuple[str, ...] = (
        "messages", "recipients")) -> list[str]:
    """The plan steps that scan a whole queue table (not through an index)."""
    return [step for steps in plans.values() for step in steps
            if step.startswith("SCAN ") and step.split()[1] in tables
            and "USING" not in step]
