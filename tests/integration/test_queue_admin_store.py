"""The operator verbs of the QueueStore contract, against every backend available
(a real SQLite file always; the local PostgreSQL when its driver and server are there)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from mailqueue.errors import UnknownQueueIdError
from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.queue.store import QueueStore
from mailqueue.queue.values import (
    Action,
    BouncedRecipient,
    NewMessage,
    QueueFilter,
    Settlement,
    new_queue_id,
)
from tests.helpers import opened_store

T0 = 1_700_000_000.0


@pytest.fixture(params=["sqlite", "postgresql", "psycopg"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[QueueStore]:
    """A real SQLite file, and this session's own PostgreSQL database (emptied per test)
    through asyncpg and through psycopg."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'q.db'}"
    else:
        url = str(request.getfixturevalue("pg_url"))
        if request.param == "psycopg":
            url = url.replace("postgresql+asyncpg://", "postgresql+psycopg://", 1)
    async with opened_store(url) as queue:
        yield queue


def new_message(*rcpts: tuple[str, str], now: float = T0, sender: str = "a@src.test",
                body: bytes = b"Subject: x\r\n\r\nhi\r\n") -> NewMessage:
    return NewMessage(queue_id=new_queue_id(now) + uuid.uuid4().hex[:4], mail_from=sender,
                      recipients=rcpts, body=body, received_at=now,
                      digest=hashlib.sha256(body).hexdigest())


async def test_list_filters(store: QueueStore) -> None:
    old = new_message(("a@b.example", "basic"), now=T0)
    new = new_message(("c@x.example", "hx"), now=T0 + 3600, sender="Boss@Corp.test")
    await store.enqueue([old, new])
    assert [m.queue_id for m in await store.list_messages(QueueFilter())] == \
        [old.queue_id, new.queue_id]
    assert [m.queue_id for m in await store.list_messages(QueueFilter(store="hx"))] == \
        [new.queue_id]
    assert [m.queue_id for m in await store.list_messages(QueueFilter(sender="boss@"))] == \
        [new.queue_id]
    assert [m.queue_id for m in await store.list_messages(
        QueueFilter(recipient="A@B", received_before=T0 + 1))] == [old.queue_id]
    assert [m.queue_id for m in await store.list_messages(QueueFilter(limit=1))] == \
        [old.queue_id]
    assert await store.list_messages(QueueFilter(sender="100%_")) == []


async def test_hold_release_retry_and_unknown_ids(store: QueueStore) -> None:
    msg = new_message(("a@b.example", "basic"), ("c@b.example", "basic"))
    await store.enqueue([msg])
    with pytest.raises(UnknownQueueIdError, match="NOPE"):
        await store.change(Action.HOLD, [msg.queue_id, "NOPE"], T0)
    assert (await store.report(T0)).by_state["held"] == 0  # nothing changed
    held = (await store.change(Action.HOLD, [msg.queue_id], T0)).changed
    assert [(c.address, c.after) for c in held] == [("a@b.example", "held"),
                                                    ("c@b.example", "held")]
    assert await store.claim(["basic"], 10, "w", T0 + 1, T0 + 60) == []
    assert (await store.change(Action.RETRY, None, T0 + 2)).changed == ()
    released = (await store.change(Action.RELEASE, None, T0 + 3)).changed
    assert len(released) == 2
    claims = await store.claim(["basic"], 10, "w", T0 + 3, T0 + 60)
    assert len(claims) == 2
    await store.settle(Settlement(deferred=[(claims[0].recipient_id, T0 + 999, "busy")],
                                  delivered=[claims[1].recipient_id]), "w", T0 + 4)
    retried = (await store.change(Action.RETRY, [msg.queue_id], T0 + 5)).changed
    assert [c.address for c in retried] == [claims[0].address]
    assert len(await store.claim(["basic"], 10, "w", T0 + 5, T0 + 60)) == 1
    detail = await store.message(msg.queue_id)
    assert detail is not None
    kinds = [e.kind for e in detail.events]
    assert kinds[:4] == ["held", "held", "released", "released"]
    assert "deferred" in kinds and "delivered" in kinds and "retry" in kinds


async def test_bounce_notify_and_delete(store: QueueStore) -> None:
    msg = new_message(("a@b.example", "basic"), ("c@b.example", "hx"))
    await store.enqueue([msg])
    seen: list[BouncedRecipient] = []

    def notify(bounced: Sequence[BouncedRecipient], now: float) -> list[NewMessage]:
        seen.extend(bounced)
        return [new_message(("a@src.test", "basic"), now=now, sender="")]

    changes = (await store.bounce([msg.queue_id], "gone", T0 + 10, notify)).changed
    assert {c.address for c in changes} == {"a@b.example", "c@b.example"}
    assert {b.reason for b in seen} == {"gone"} and seen[0].body.startswith(b"Subject")
    report = await store.report(T0 + 10)
    assert report.bounced == 2 and report.accepted == 2 and report.by_state["queued"] == 1
    detail = await store.message(msg.queue_id)
    assert detail is not None and detail.message.done_at == T0 + 10
    deleted = (await store.delete(None, T0 + 11)).changed
    assert len(deleted) == 1  # only the notice was still pending
    assert await store.message(msg.queue_id) is not None
    # A done message: nothing to delete, and nothing of its history is lost.
    assert (await store.delete([msg.queue_id], T0 + 12)).changed == ()
    assert await store.message(msg.queue_id) == detail


async def test_shape_report_drain_and_sweep_reads(store: QueueStore) -> None:
    await store.enqueue([new_message(("a@b.example", "basic"), now=T0),
                         new_message(("a@b.example", "basic"), ("c@x.example", "hx"),
                                     now=T0 + 3000)])
    now = T0 + 3600
    shape = await store.shape(now)
    assert shape["basic"][4] == 1 and shape["basic"][2] == 1  # 60 and 10 minutes old
    assert sum(shape["hx"]) == 1
    report = await store.report(now)
    assert report.depth[("basic", "queued")] == 2 and report.oldest_pending == T0
    claims = await store.claim(["basic"], 10, "w", now, now + 60)
    await store.settle(Settlement(delivered=[c.recipient_id for c in claims]), "w", now + 1)
    progress = await store.drain_progress(["basic"], now)
    assert (progress.remaining, progress.delivered, progress.last_settled) == (0, 2, now + 1)
    assert (await store.report(now + 2)).delivered_recent == 2
    pending = await store.pending_before(now, 10)
    assert [p.address for p in pending] == ["c@x.example"]
    assert await store.record_delay_warnings(pending, lambda _: [], now) == pending
    assert await store.pending_before(now, 10, unwarned=True) == []
    # A second sweep that read the same recipients before the first committed warns no one.
    assert await store.record_delay_warnings(pending, lambda _: [], now) == []
    gone = await store.expire({pending[0].id: "expired: too old"}, now)
    assert [g.address for g in gone] == ["c@x.example"]


async def test_two_sweeps_at_once_warn_each_recipient_once(store: QueueStore) -> None:
    await store.enqueue([new_message(("a@b.example", "basic"), now=T0) for _ in range(5)])
    pending = await store.pending_before(T0 + 10, 10, unwarned=True)
    assert len(pending) == 5
    assert isinstance(store, SqlQueueStore)
    async with opened_store(store.url) as other:  # as another process would
        results = await asyncio.gather(
            store.record_delay_warnings(pending, lambda _: [], T0 + 10),
            other.record_delay_warnings(pending, lambda _: [], T0 + 10))
    assert sorted(len(warned) for warned in results) == [0, 5]
