"""Claims and settles pass their recipient ids as one parameter; an SQLite library without
its JSON functions gets an IN (...) list instead, and the queue behaves the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailqueue.queue import _sqladmin
from mailqueue.queue.values import NewMessage, RecipientState, Settlement, new_queue_id
from tests.helpers import opened_store

T0 = 1_700_000_000.0


@pytest.mark.parametrize("json_functions", [True, False])
async def test_claim_byte_limit_and_settle_with_and_without_json(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, json_functions: bool) -> None:
    monkeypatch.setattr(_sqladmin, "_sqlite_json", lambda: json_functions)
    monkeypatch.setattr(_sqladmin, "_IDS_IN", {})  # expressions built for this library
    async with opened_store(f"sqlite+aiosqlite:///{tmp_path / 'q.db'}") as store:
        await store.enqueue([NewMessage(queue_id=new_queue_id(T0 + i), mail_from="a@src.test",
                                        recipients=((f"u{i}@b.example", "basic"),),
                                        body=b"x" * 100, received_at=T0 + i)
                             for i in range(600)])
        claims = await store.claim(["basic"], 550, "me", T0 + 5000, T0 + 6000,
                                   max_bytes=100 * 520)
        assert len(claims) == 520  # the rest went back as they were
        await store.settle(Settlement(delivered=[c.recipient_id for c in claims]), "me",
                           T0 + 5001)
        outcomes = await store.outcomes()
        stats = await store.stats()
    delivered = [o for o in outcomes if o.state is RecipientState.DELIVERED]
    assert len(delivered) == 520 and stats.messages_pending == 80
    assert {o.attempts for o in outcomes if o.state is RecipientState.QUEUED} == {0}
