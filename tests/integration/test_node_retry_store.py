"""``retry_deferred``, the queue verb behind a node's return, on every backend: it makes due
exactly the waiting recipients of one store that the caller picks, and records why."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailqueue.queue.store import QueueStore
from mailqueue.queue.values import Action, EventKind, NewMessage, Settlement, new_queue_id
from tests.helpers import opened_store

T0 = 1_700_000_000.0


@pytest.fixture(params=["sqlite", "postgresql", "psycopg"])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'q.db'}"
    url = str(request.getfixturevalue("pg_url"))
    if request.param == "psycopg":
        return url.replace("postgresql+asyncpg://", "postgresql+psycopg://", 1)
    return url


@pytest.fixture
async def store(queue_url: str) -> AsyncIterator[QueueStore]:
    async with opened_store(queue_url) as queue:
        yield queue


def message(address: str, store: str, n: int) -> NewMessage:
    body = f"m{n}".encode()
    return NewMessage(queue_id=new_queue_id(T0), mail_from="a@src.test",
                      recipients=((address, store),), body=body, received_at=T0 + n * 1e-3,
                      digest=hashlib.sha256(body).hexdigest())


def picked(address: str) -> bool:
    return address.startswith("even")


async def test_retry_deferred_makes_due_only_the_picked_waiting_recipients(
        store: QueueStore) -> None:
    # 1,200 waiting recipients of basic (more than one IN list), half of them picked.
    waiting = [message(f"{'even' if n % 2 == 0 else 'odd'}{n}@b.example", "basic", n)
               for n in range(1200)]
    other = [message(f"even-other{n}@x.example", "hx", n) for n in range(3)]
    await store.enqueue([*waiting, *other])
    claims = [*await store.claim(["basic"], 2000, "w", T0 + 10, T0 + 60),
              *await store.claim(["hx"], 2000, "w", T0 + 10, T0 + 60)]
    assert len(claims) == 1203
    # One picked recipient is still being delivered (not settled), another is held by an
    # operator: neither is touched.
    active = next(c for c in claims if picked(c.address))
    await store.settle(Settlement(deferred=[(c.recipient_id, T0 + 600, "node basic-1 is down")
                                            for c in claims if c is not active]), "w", T0 + 10)
    held = next(m for m in waiting if picked(m.recipients[0][0])
                and m.recipients[0][0] != active.address)
    await store.change(Action.HOLD, [held.queue_id], T0 + 11)

    count = await store.retry_deferred("basic", T0 + 20, picked, "node basic-1 is up")
    assert count == 600 - 2
    due = await store.claim(["basic"], 2000, "w2", T0 + 20, T0 + 80)
    assert len(due) == count and all(picked(c.address) for c in due)
    assert await store.claim(["hx"], 2000, "w2", T0 + 20, T0 + 80) == []  # another store
    assert await store.retry_deferred("basic", T0 + 20, picked, "again") == 0

    detail = await store.message(due[0].queue_id)
    assert detail is not None
    assert [(e.kind, e.detail) for e in detail.events if e.kind == EventKind.RETRY] == \
        [("retry", "node basic-1 is up")]


async def test_retry_deferred_with_nothing_waiting(store: QueueStore) -> None:
    assert await store.retry_deferred("basic", T0, picked, "node basic-1 is up") == 0
