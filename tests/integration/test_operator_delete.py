"""Operator verbs never race delivery, and deleting keeps the accounting: the QueueStore
contract on a real SQLite file and on the local PostgreSQL (asyncpg and psycopg).

A worker holds a claim (the store's own claim, as the delivery worker makes it) while an
operator runs a verb; the worker then settles. Nothing it delivers may turn up as mail
the ledger cannot account for, and no total may go down.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from mailqueue.control.windows import WindowSet
from mailqueue.mailbox.maildir import MaildirStore
from mailqueue.metrics import Metrics
from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.queue.store import QueueStore
from mailqueue.queue.values import (
    Action,
    ActionResult,
    Change,
    Claim,
    NewMessage,
    Settlement,
    new_queue_id,
)
from mailqueue.testing.ledger import Ledger, MailLossError
from mailqueue.verify.audit import Audit, audit
from mailqueue.verify.scan import scan_root
from tests.helpers import opened_store

T0 = 1_700_000_000.0
LEASE = 300.0


@pytest.fixture(params=["sqlite", "postgresql", "psycopg"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[QueueStore]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'q.db'}"
    else:
        url = str(request.getfixturevalue("pg_url"))
        if request.param == "psycopg":
            url = url.replace("postgresql+asyncpg://", "postgresql+psycopg://", 1)
    async with opened_store(url) as queue:
        yield queue


def new_message(*addresses: str, now: float = T0) -> NewMessage:
    body = f"Subject: {uuid.uuid4().hex}\r\n\r\nhi\r\n".encode()
    return NewMessage(queue_id=new_queue_id(now) + uuid.uuid4().hex[:4],
                      mail_from="a@src.test", recipients=tuple((a, "basic") for a in addresses),
                      body=body, received_at=now, digest=hashlib.sha256(body).hexdigest())


def deliver(root: Path, claims: Sequence[Claim]) -> Settlement:
    """Write ``claims`` into real Maildirs under ``root``, as the worker does."""
    outcomes = MaildirStore("basic", root, "mx.test").deliver(claims)
    assert outcomes == [None] * len(claims)
    return Settlement(delivered=[c.recipient_id for c in claims])


async def audited(store: QueueStore, root: Path) -> Audit:
    return audit(await store.ledger(), scan_root("basic", root))


def pairs(changes: Sequence[Change]) -> set[tuple[str, str]]:
    return {(c.queue_id, c.address) for c in changes}


async def test_delete_all_leaves_a_claimed_recipient_to_its_worker(
        store: QueueStore, tmp_path: Path) -> None:
    mail = tmp_path / "mail"
    first = new_message("alice@basic.example")
    second = new_message("bob@basic.example", "carol@basic.example", now=T0 + 1)
    await store.enqueue([first, second])
    claims = await store.claim(["basic"], 1, "w1", T0 + 5, T0 + 5 + LEASE)
    assert [c.queue_id for c in claims] == [first.queue_id]

    result = await store.delete(None, T0 + 6)

    assert pairs(result.changed) == {(second.queue_id, "bob@basic.example"),
                                     (second.queue_id, "carol@basic.example")}
    assert {c.before for c in result.changed} == {"queued"}
    assert {c.after for c in result.changed} == {"deleted"}
    assert pairs(result.in_delivery) == {(first.queue_id, "alice@basic.example")}
    assert [c.before for c in result.in_delivery] == ["active"]
    # The worker settles what it holds: its delivery is recorded, not lost or unexpected.
    await store.settle(deliver(mail, claims), "w1", T0 + 7)
    report = await store.report(T0 + 8)
    assert (report.accepted, report.delivered, report.deleted) == (2, 1, 2)
    assert report.by_state["deleted"] == 2 and report.messages_pending == 0
    checked = await audited(store, mail)
    assert checked.ok, checked.report()
    assert (checked.accepted, checked.delivered, checked.deleted, checked.queued) == (3, 1, 2, 0)
    assert checked.equation() == ("accepted 3 = delivered 1 + bounced 0 + deleted 2 + still "
                                  "queued 0  (recipients)")
    # Nothing is left to delete: --all means every message not yet done.
    assert await store.delete(None, T0 + 9) == ActionResult()


async def test_deleted_mail_stays_in_the_ledger(store: QueueStore) -> None:
    kept = new_message("alice@basic.example")
    gone = new_message("bob@basic.example", now=T0 + 1)
    await store.enqueue([kept, gone])
    before = await store.report(T0 + 2)
    assert await store.capacity() == (2, before.bytes_pending)
    held = await store.change(Action.HOLD, [gone.queue_id], T0 + 2)
    assert [c.after for c in held.changed] == ["held"]

    result = await store.delete([gone.queue_id], T0 + 3)

    assert [(c.before, c.after) for c in result.changed] == [("held", "deleted")]
    after = await store.report(T0 + 4)
    assert after.accepted == before.accepted == 2  # totals never go down
    assert after.deleted == 1 and after.messages_pending == 1
    size = len(kept.body)
    assert await store.capacity() == (1, size)  # a deleted message takes no room
    stats = await store.stats()
    assert stats.messages_total == 2 and stats.recipients["deleted"] == 1
    detail = await store.message(gone.queue_id)
    assert detail is not None and detail.message.done_at == T0 + 3
    assert detail.body is None  # content dropped, as for delivered or bounced mail
    assert [r.state for r in detail.message.recipients] == ["deleted"]
    assert [(e.kind, e.detail) for e in detail.events][-1] == ("deleted", "by operator")
    # A drain counts it apart: the drain ends with its last delivery, not with a delete.
    progress = await store.drain_progress(["basic"], T0)
    assert (progress.remaining, progress.deleted, progress.delivered) == (1, 1, 0)
    assert progress.last_settled is None
    # A done message: deleting it again changes nothing and names nothing in delivery.
    assert await store.delete([gone.queue_id], T0 + 5) == ActionResult()
    assert (await store.report(T0 + 6)).deleted == 1
    # It is no longer pending anywhere: not claimed, not shaped, not swept.
    assert [c.queue_id for c in await store.claim(["basic"], 10, "w", T0 + 7, T0 + 99)] == \
        [kept.queue_id]
    assert sum(sum(v) for v in (await store.shape(T0 + 8)).values()) == 1
    assert [p.queue_id for p in await store.pending_before(T0 + 9, 10)] == [kept.queue_id]


async def test_delete_keeps_the_delivered_recipients_of_a_message(store: QueueStore) -> None:
    msg = new_message("alice@basic.example", "bob@basic.example")
    await store.enqueue([msg])
    claims = await store.claim(["basic"], 1, "w", T0 + 1, T0 + 1 + LEASE)
    await store.settle(Settlement(delivered=[claims[0].recipient_id]), "w", T0 + 2)

    result = await store.delete([msg.queue_id], T0 + 3)

    assert [c.address for c in result.changed] == ["bob@basic.example"]
    detail = await store.message(msg.queue_id)
    assert detail is not None and detail.message.done_at == T0 + 3
    assert {r.address: r.state for r in detail.message.recipients} == {
        "alice@basic.example": "delivered", "bob@basic.example": "deleted"}


@pytest.mark.parametrize("verb", ["hold", "release", "retry", "bounce", "delete"])
async def test_no_verb_takes_a_claimed_recipient(store: QueueStore, tmp_path: Path,
                                                 verb: str) -> None:
    """Each verb, run while a worker holds a claim, leaves that claim to the worker."""
    mail = tmp_path / "mail"
    msg = new_message("alice@basic.example")
    await store.enqueue([msg])
    claims = await store.claim(["basic"], 10, "w1", T0 + 1, T0 + 1 + LEASE)
    assert len(claims) == 1

    if verb == "bounce":
        result = await store.bounce(None, "by test", T0 + 2)
    elif verb == "delete":
        result = await store.delete(None, T0 + 2)
    else:
        result = await store.change(Action(verb), None, T0 + 2)

    assert result.changed == ()
    stops_delivery = verb in ("hold", "bounce", "delete")
    assert [(c.address, c.before) for c in result.in_delivery] == \
        ([("alice@basic.example", "active")] if stops_delivery else [])
    await store.settle(deliver(mail, claims), "w1", T0 + 3)
    checked = await audited(store, mail)
    assert checked.ok, checked.report()
    assert (checked.delivered, checked.bounced, checked.deleted) == (1, 0, 0)


async def test_a_deferred_claim_is_deleted_on_the_next_run(store: QueueStore) -> None:
    msg = new_message("alice@basic.example")
    await store.enqueue([msg])
    claims = await store.claim(["basic"], 10, "w1", T0 + 1, T0 + 1 + LEASE)
    assert len((await store.delete(None, T0 + 2)).in_delivery) == 1
    await store.settle(Settlement(deferred=[(claims[0].recipient_id, T0 + 60, "busy")]),
                       "w1", T0 + 3)
    again = await store.delete(None, T0 + 4)
    assert [(c.before, c.after) for c in again.changed] == [("queued", "deleted")]
    assert again.in_delivery == ()
    assert (await store.report(T0 + 5)).deleted == 1


async def test_a_late_delivery_is_recorded_over_a_delete(store: QueueStore,
                                                         tmp_path: Path) -> None:
    """A worker whose lease expired still delivers: the reclaimer returned its recipient to
    the queue and an operator deleted it meanwhile. The file is in the mailbox, so the
    ledger records the delivery; a copy with the recipient still marked deleted is
    unexpected."""
    mail = tmp_path / "mail"
    msg = new_message("alice@basic.example")
    await store.enqueue([msg])
    claims = await store.claim(["basic"], 10, "slow", T0 + 1, T0 + 1 + LEASE)
    settlement = deliver(mail, claims)  # written, not yet settled
    assert await store.reclaim_expired(T0 + 2 + LEASE) == 1
    assert len((await store.delete(None, T0 + 3 + LEASE)).changed) == 1
    stale = await audited(store, mail)
    assert [(f.kind, f.detail) for f in stale.findings] == [
        ("unexpected", "deleted, yet a copy is in the mailbox")]

    await store.settle(settlement, "slow", T0 + 4 + LEASE)

    checked = await audited(store, mail)
    assert checked.ok, checked.report()
    assert (checked.delivered, checked.deleted) == (1, 0)
    report = await store.report(T0 + 5 + LEASE)
    assert (report.accepted, report.delivered, report.deleted) == (1, 1, 0)


async def test_a_deferral_or_bounce_of_a_lost_lease_does_not_undo_a_delete(
        store: QueueStore) -> None:
    msg = new_message("alice@basic.example", "bob@basic.example")
    await store.enqueue([msg])
    claims = await store.claim(["basic"], 10, "slow", T0 + 1, T0 + 1 + LEASE)
    await store.reclaim_expired(T0 + 2 + LEASE)
    await store.delete(None, T0 + 3 + LEASE)
    await store.settle(Settlement(deferred=[(claims[0].recipient_id, T0 + 9e3, "busy")],
                                  bounced=[(claims[1].recipient_id, "no such user")]),
                       "slow", T0 + 4 + LEASE)
    report = await store.report(T0 + 5 + LEASE)
    assert report.by_state["deleted"] == 2 and report.bounced == 0
    assert report.by_state["queued"] == 0


async def test_the_ledger_names_deleted_mail_unless_allowed(store: QueueStore,
                                                            tmp_path: Path) -> None:
    await store.enqueue([new_message("alice@basic.example")])
    await store.delete(None, T0 + 1)
    ledger = Ledger(await store.ledger(), scan_root("basic", tmp_path / "mail"))
    assert ledger.audit.unaccounted == 0 and ledger.recipients == 1
    with pytest.raises(MailLossError, match=r"(?s)deleted 1 \+ still queued 0.*DELETED \(1\)"):
        ledger.assert_no_loss()
    ledger.assert_no_loss(allow_deleted=True)
    ledger.assert_ok(allow_deleted=True)
    data = ledger.audit.as_dict()
    assert data["ok"] and data["deleted"] == 1 and data["unaccounted"] == 0
    assert [d["recipient"] for d in data["deletions"]] == ["alice@basic.example"]
    assert data["by_store"] == {"basic": {"delivered": 0, "bounced": 0, "deleted": 1,
                                          "queued": 0}}
    assert "  basic: delivered 0 + bounced 0 + deleted 1 + still queued 0" in ledger.report()


async def test_metrics_show_deleted_recipients(store: QueueStore) -> None:
    await store.enqueue([new_message("alice@basic.example"), new_message("bob@basic.example")])
    await store.delete(None, T0 + 1)
    metrics = Metrics()
    metrics.refresh(await store.report(T0 + 2), WindowSet([], T0 + 2), T0 + 2)
    text = metrics.render().decode()
    assert 'mailqueue_queue_recipients{state="deleted",store="basic"} 2.0' in text


async def test_delete_all_racing_a_worker_never_takes_its_claims(store: QueueStore) -> None:
    """Mail keeps arriving, a worker (its own connection, as another process) claims and
    delivers it, and an operator runs ``delete --all`` again and again meanwhile: no
    recipient the worker claimed is deleted, each one it held when a delete ran is named
    in delivery, and every recipient ends delivered or deleted."""
    assert isinstance(store, SqlQueueStore)
    total = 300
    batch = [new_message(f"u{i}@basic.example") for i in range(total)]
    await store.enqueue(batch[:20])
    claimed: set[int] = set()
    named: set[tuple[str, str]] = set()
    first_claim, first_delete, arrived = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def sender() -> None:
        async with opened_store(store.url) as queue:
            for start in range(20, total, 5):
                await queue.enqueue(batch[start:start + 5])
                await asyncio.sleep(0)
        arrived.set()

    async def worker() -> None:
        async with opened_store(store.url) as queue:
            while True:
                claims = await queue.claim(["basic"], 7, "w1", T0 + 1, T0 + 1 + LEASE)
                if not claims and arrived.is_set():
                    return
                claimed.update(c.recipient_id for c in claims)
                first_claim.set()
                await first_delete.wait()  # the first delete surely meets a claim
                await asyncio.sleep(0.002)  # delivering
                await queue.settle(Settlement(delivered=[c.recipient_id for c in claims]),
                                   "w1", T0 + 2)

    async def operator() -> None:
        await first_claim.wait()
        async with opened_store(store.url) as queue:
            while True:
                result = await queue.delete(None, T0 + 3)
                first_delete.set()
                assert {c.before for c in result.in_delivery} <= {"active"}
                named.update((c.queue_id, c.address) for c in result.in_delivery)
                if arrived.is_set() and not result.changed and not result.in_delivery:
                    return
                await asyncio.sleep(0.001)

    await asyncio.wait_for(asyncio.gather(sender(), worker(), operator()), 60)
    outcomes = await store.outcomes()
    assert {o.state.value for o in outcomes} <= {"delivered", "deleted"}
    delivered = {(o.queue_id, o.address) for o in outcomes if o.state.value == "delivered"}
    assert named and named <= delivered  # named in delivery: then delivered, not deleted
    report = await store.report(T0 + 4)
    assert report.accepted == total and report.delivered + report.deleted == total
    assert report.delivered == len(claimed)  # every claim delivered, none deleted
    assert report.deleted >= 13  # the first delete took what was not claimed


@pytest.mark.drill
async def test_delete_all_on_more_recipients_than_a_statement_has_parameters(
        pg_url: str) -> None:
    """asyncpg sends at most 32767 parameters a statement: ``delete --all`` on a deeper
    queue goes in slices, marking the messages done included (as bounce does)."""
    count = 33_000
    async with opened_store(pg_url) as queue:
        await queue.enqueue([new_message(f"u{i}@basic.example") for i in range(count)])
        deleted = await queue.delete(None, T0 + 1)
        assert len(deleted.changed) == count
        report = await queue.report(T0 + 2)
        assert (report.deleted, report.messages_pending) == (count, 0)
