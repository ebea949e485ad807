"""No hot path of the queue reads a whole table: claims and settles go through indexes."""

from __future__ import annotations

import time
from pathlib import Path

from mailqueue.queue._plans import full_scans, hot_path_plans
from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.queue.values import NewMessage, new_queue_id


def message(now: float) -> NewMessage:
    return NewMessage(queue_id=new_queue_id(now), mail_from="a@src.test",
                      recipients=(("u1@b.example", "basic"),), body=b"Subject: x\r\n\r\nx\r\n",
                      received_at=now)


async def test_claim_and_settle_use_indexes(tmp_path: Path) -> None:
    store = SqlQueueStore(f"sqlite+aiosqlite:///{tmp_path / 'q.db'}")
    await store.open()
    try:
        now = time.time()
        await store.enqueue([message(now - i) for i in range(200)])
        plans = await hot_path_plans(store, message(now), "basic", now)
    finally:
        await store.close()
    steps = [step for s in plans.values() for step in s]
    assert any("ix_recipients_due" in step for step in steps), plans
    assert full_scans(plans) == [], plans
