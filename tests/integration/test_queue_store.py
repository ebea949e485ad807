"""The QueueStore contract, run against every backend: a real SQLite file and the real
PostgreSQL (a database of this session's own; see tests/pg.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailqueue.control.windows import Window
from mailqueue.queue.store import QueueStore
from mailqueue.queue.values import NewMessage, Settlement, new_queue_id
from tests.helpers import opened_store

T0 = 1_700_000_000.0


@pytest.fixture(params=["sqlite", "postgresql", "psycopg"])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'q.db'}"
    url = str(request.getfixturevalue("pg_url"))
    if request.param == "psycopg":
        # The optional driver (the 'psycopg' extra, which the test extra installs).
        return url.replace("postgresql+asyncpg://", "postgresql+psycopg://", 1)
    return url


@pytest.fixture
async def store(queue_url: str) -> AsyncIterator[QueueStore]:
    async with opened_store(queue_url) as queue:
        yield queue


def new_message(*rcpts: tuple[str, str], now: float = T0, body: bytes = b"x") -> NewMessage:
    return NewMessage(queue_id=new_queue_id(now), mail_from="a@src.test", recipients=rcpts,
                      body=body, received_at=now, digest=hashlib.sha256(body).hexdigest())


async def test_enqueue_claim_settle(store: QueueStore) -> None:
    msg = new_message(("a@b.example", "basic"), ("c@x.example", "hx"), body=b"hello")
    await store.enqueue([msg])
    assert await store.capacity() == (1, 5)
    claims = await store.claim(["basic", "hx"], 10, "w1", T0, T0 + 60)
    assert {c.address for c in claims} == {"a@b.example", "c@x.example"}
    assert all(c.body == b"hello" and c.attempts == 1 for c in claims)
    assert await store.claim(["basic", "hx"], 10, "w2", T0, T0 + 60) == []  # leased
    await store.settle(Settlement(delivered=[claims[0].recipient_id]), "w1", T0 + 1)
    assert (await store.stats()).messages_pending == 1
    await store.settle(Settlement(bounced=[(claims[1].recipient_id, "no")]), "w1", T0 + 1)
    stats = await store.stats()
    assert stats.messages_pending == 0 and stats.recipients["delivered"] == 1
    assert stats.recipients["bounced"] == 1 and await store.capacity() == (0, 0)


async def test_a_claim_carries_how_its_message_was_sent(store: QueueStore) -> None:
    """TLS and AUTH recorded at the front end reach the delivery: its Received: line says
    ESMTPSA, ESMTPS or ESMTP (RFC 3848)."""
    tls = "TLSv1.3 TLS_AES_256_GCM_SHA384"
    sent = [dataclasses.replace(new_message((f"u{i}@b.example", "basic"), now=T0 + i),
                                auth_user=user, tls=cipher)
            for i, (user, cipher) in enumerate([("alice", tls), (None, tls), (None, None)])]
    await store.enqueue(sent)
    claims = await store.claim(["basic"], 10, "w1", T0 + 10, T0 + 60)
    assert [(c.auth_user, c.tls, c.protocol) for c in claims] == [
        ("alice", tls, "ESMTPSA"), (None, tls, "ESMTPS"), (None, None, "ESMTP")]


async def test_claim_stops_at_max_bytes_and_returns_the_rest(store: QueueStore) -> None:
    await store.enqueue([new_message(("a@b.example", "basic"), now=T0 + i, body=b"x" * 1000)
                         for i in range(5)])
    first = await store.claim(["basic"], 10, "w1", T0 + 10, T0 + 60, max_bytes=2500)
    assert len(first) == 2 and all(c.attempts == 1 for c in first)
    rest = await store.claim(["basic"], 10, "w2", T0 + 10, T0 + 60)
    assert len(rest) == 3 and all(c.attempts == 1 for c in rest)  # returned as they were
    assert {c.recipient_id for c in first}.isdisjoint(c.recipient_id for c in rest)
    await store.enqueue([new_message(("big@b.example", "basic"), body=b"y" * 5000)])
    alone = await store.claim(["basic"], 10, "w3", T0 + 10, T0 + 60, max_bytes=100)
    assert [c.address for c in alone] == ["big@b.example"]  # one, however large


async def test_claim_skips_future_and_windowed(store: QueueStore) -> None:
    await store.enqueue([new_message(("a@b.example", "basic")),
                         new_message(("c@x.example", "hx"))])
    await store.save_window(Window(name="w", stores=("hx",), start=T0 - 10, end=T0 + 100))
    claims = await store.claim(["basic", "hx"], 10, "w1", T0, T0 + 60)
    assert [c.store for c in claims] == ["basic"]
    # Deferred into the future: not due now, due later.
    await store.settle(Settlement(deferred=[(claims[0].recipient_id, T0 + 50, "down")]),
                       "w1", T0)
    assert await store.claim(["basic"], 10, "w1", T0 + 10, T0 + 70) == []
    again = await store.claim(["basic"], 10, "w1", T0 + 50, T0 + 110)
    assert len(again) == 1 and again[0].attempts == 2
    # After the window's end the held store is claimable.
    assert [c.store for c in await store.claim(["hx"], 10, "w1", T0 + 100, T0 + 160)] == ["hx"]


async def test_expired_lease_returns_to_queue(store: QueueStore) -> None:
    await store.enqueue([new_message(("a@b.example", "basic"))])
    [claim] = await store.claim(["basic"], 10, "crashed", T0, T0 + 60)
    assert await store.reclaim_expired(T0 + 30) == 0
    assert await store.reclaim_expired(T0 + 61) == 1
    [again] = await store.claim(["basic"], 10, "w2", T0 + 61, T0 + 121)
    assert again.recipient_id == claim.recipient_id
    # The crashed worker's late deferral does not overwrite the new owner's lease.
    await store.settle(Settlement(deferred=[(claim.recipient_id, T0 + 999, "late")]),
                       "crashed", T0 + 62)
    await store.settle(Settlement(delivered=[again.recipient_id]), "w2", T0 + 63)
    assert (await store.stats()).recipients["delivered"] == 1


async def test_concurrent_claimers_never_share(store: QueueStore) -> None:
    await store.enqueue([new_message((f"u{i}@b.example", "basic")) for i in range(300)])
    results = await asyncio.gather(*(store.claim(["basic"], 40, f"w{i}", T0, T0 + 60)
                                     for i in range(10)))
    ids = [c.recipient_id for claims in results for c in claims]
    assert len(ids) == len(set(ids)) == 300


async def test_windows_round_trip(store: QueueStore) -> None:
    window = Window(name="w", stores=("a", "b"), start=T0, end=T0 + 10, timezone="UTC")
    assert await store.add_window_if_absent(window)
    assert not await store.add_window_if_absent(window)
    assert await store.windows() == [window]
    ended = window.advance(T0 + 20)
    assert not await store.save_window(ended, expect_state="active")
    assert await store.save_window(ended, expect_state="scheduled")
    assert (await store.windows())[0].state == "ended"


async def test_ledger_outlives_delivery(store: QueueStore) -> None:
    first = new_message(("a@b.example", "basic"), ("c@x.example", "hx"), body=b"one")
    second = new_message(("d@b.example", "basic"), now=T0 + 1, body=b"two")
    await store.enqueue([first, second])
    claims = await store.claim(["basic", "hx"], 10, "w1", T0 + 2, T0 + 60)
    by_address = {c.address: c.recipient_id for c in claims}
    await store.settle(Settlement(delivered=[by_address["a@b.example"]],
                                  bounced=[(by_address["c@x.example"], "gone")]), "w1", T0 + 3)
    ledger = await store.ledger()
    assert [e.queue_id for e in ledger] == [first.queue_id, second.queue_id]
    done = ledger[0]
    assert done.digest == hashlib.sha256(b"one").hexdigest() and done.rcpt_count == 2
    assert [(r.address, r.state.value, r.last_error) for r in done.recipients] == [
        ("a@b.example", "delivered", None), ("c@x.example", "bounced", "gone")]
    assert [r.state.value for r in ledger[1].recipients] == ["active"]
