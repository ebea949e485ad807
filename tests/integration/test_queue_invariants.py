"""Queue invariants under random operations: a Hypothesis state machine over SqlQueueStore.

Rules enqueue, claim (two workers), settle with any mix of outcomes, let leases expire,
crash and reopen the store, and start and end windows, against a real SQLite file. A model
follows what the store must do; after every step the store's counts equal the model's,
and at the end (everything drained) every acknowledged recipient is delivered or bounced —
never both, never flipped from one to the other, never lost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mailqueue.control.windows import Window
from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.queue.values import Claim, NewMessage, Settlement

STORES = ("basic", "exchange")
OWNERS = ("w1", "w2")
LEASE = 60.0
FINAL = ("delivered", "bounced")


@dataclasses.dataclass
class Rcpt:
    state: str = "queued"
    due: float = 0.0
    owner: str | None = None
    lease_until: float = 0.0
    finals: list[str] = dataclasses.field(default_factory=list)  # every final state seen


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="mq-invariants-")
        self.url = f"sqlite+aiosqlite:///{Path(self.tmp) / 'q.db'}"
        self.loop = asyncio.new_event_loop()
        self.store = SqlQueueStore(self.url)
        self.run(self.store.open())
        self.now = 1_000_000.0
        self.model: dict[int, Rcpt] = {}
        self.keys: dict[tuple[str, str], int] = {}
        self.held: dict[str, list[Claim]] = {owner: [] for owner in OWNERS}
        self.blocked: set[str] = set()
        self.windows: dict[str, Window] = {}
        self.messages = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    # --- rules ---------------------------------------------------------------------------

    @rule(rcpts=st.lists(st.sampled_from(STORES), min_size=1, max_size=3))
    def enqueue(self, rcpts: list[str]) -> None:
        self.messages += 1
        queue_id = f"Q{self.messages:08d}"  # deterministic: Hypothesis replays exactly
        recipients = tuple((f"u{i}@{store}.example", store) for i, store in enumerate(rcpts))
        self.run(self.store.enqueue([NewMessage(
            queue_id=queue_id, mail_from="a@src.test", recipients=recipients, body=b"x\r\n",
            received_at=self.now)]))
        for address, _store in recipients:
            self.keys[(queue_id, address)] = -1  # its id is learned at the first claim

    @rule(owner=st.sampled_from(OWNERS), limit=st.integers(1, 8))
    def claim(self, owner: str, limit: int) -> None:
        claims = self.run(self.store.claim(list(STORES), limit, owner, self.now,
                                           self.now + LEASE))
        assert len(claims) <= limit
        for claim in claims:
            assert claim.store not in self.blocked, "claimed inside an active window"
            rcpt = self.model.setdefault(claim.recipient_id, Rcpt(due=self.now))
            self.keys[(claim.queue_id, claim.address)] = claim.recipient_id
            assert rcpt.state == "queued" and rcpt.due <= self.now, (rcpt, claim)
            rcpt.state, rcpt.owner, rcpt.lease_until = "active", owner, self.now + LEASE
        self.held[owner].extend(claims)
        self._learn_unclaimed()

    @precondition(lambda self: any(self.held.values()))
    @rule(owner=st.sampled_from(OWNERS), data=st.data())
    def settle(self, owner: str, data: st.DataObject) -> None:
        claims, self.held[owner] = self.held[owner], []
        settlement = Settlement()
        for claim in claims:
            outcome = data.draw(st.sampled_from(["delivered", "deferred", "bounced"]))
            rcpt = self.model[claim.recipient_id]
            mine = rcpt.state == "active" and rcpt.owner == owner
            if outcome == "delivered":
                settlement.delivered.append(claim.recipient_id)
                # A delivered file is recorded even after a lost lease, unless already final.
                if rcpt.state not in FINAL:
                    self._final(rcpt, "delivered")
            elif outcome == "deferred":
                delay = data.draw(st.sampled_from([0.0, 30.0, 300.0]))
                settlement.deferred.append((claim.recipient_id, self.now + delay, "later"))
                if mine:
                    rcpt.state, rcpt.due, rcpt.owner = "queued", self.now + delay, None
            else:
                settlement.bounced.append((claim.recipient_id, "no such user"))
                if mine:
                    self._final(rcpt, "bounced")
        self.run(self.store.settle(settlement, owner, self.now))

    @rule(seconds=st.sampled_from([1.0, 30.0, LEASE + 1]))
    def tick(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def reclaim(self) -> None:
        count = self.run(self.store.reclaim_expired(self.now))
        expired = [r for r in self.model.values()
                   if r.state == "active" and r.lease_until < self.now]
        assert count == len(expired)
        for rcpt in expired:
            rcpt.state, rcpt.owner = "queued", None

    @rule(owner=st.sampled_from(OWNERS))
    def crash_worker(self, owner: str) -> None:
        """The worker dies holding claims: they stay active until their lease expires."""
        self.held[owner] = []

    @rule()
    def restart_store(self) -> None:
        """The process dies and comes back: close the store and open the same file."""
        self.run(self.store.close())
        self.held = {owner: [] for owner in OWNERS}
        self.store = SqlQueueStore(self.url)
        self.run(self.store.open())

    @rule(store=st.sampled_from(STORES))
    def window_start(self, store: str) -> None:
        window = Window(name=f"w-{store}", stores=(store,), start=self.now - 1,
                        end=self.now + 86400).advance(self.now)
        self.run(self.store.save_window(window))
        self.windows[store] = window
        self.blocked.add(store)

    @precondition(lambda self: bool(self.blocked))
    @rule(data=st.data())
    def window_end(self, data: st.DataObject) -> None:
        store = data.draw(st.sampled_from(sorted(self.blocked)))
        self.run(self.store.save_window(self.windows[store].ended_now(self.now)))
        self.blocked.discard(store)

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def counts_match(self) -> None:
        stats = self.run(self.store.stats())
        unknown = sum(1 for rid in self.keys.values() if rid == -1)
        expected = {state: 0 for state in ("queued", "active", "held", "delivered", "bounced",
                                           "deleted")}
        for rcpt in self.model.values():
            expected[rcpt.state] += 1
        expected["queued"] += unknown
        assert stats.recipients == expected

    @invariant()
    def never_both(self) -> None:
        for rcpt in self.model.values():
            assert len(rcpt.finals) <= 1, rcpt.finals

    def teardown(self) -> None:
        try:
            self._drain()
        finally:
            self.run(self.store.close())
            self.loop.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    # --- helpers ---------------------------------------------------------------------------

    def _final(self, rcpt: Rcpt, state: str) -> None:
        rcpt.state, rcpt.owner = state, None
        rcpt.finals.append(state)

    def _learn_unclaimed(self) -> None:
        pass  # ids of never-claimed recipients are counted as "unknown" queued

    def _drain(self) -> None:
        """End every window, let every lease expire, deliver all: every recipient is final."""
        for store in list(self.blocked):
            self.run(self.store.save_window(self.windows[store].ended_now(self.now)))
        self.blocked.clear()
        for _ in range(50):
            self.now += LEASE + 301
            self.reclaim()
            claims = self.run(self.store.claim(list(STORES), 1000, "drain", self.now,
                                               self.now + LEASE))
            if not claims and all(r.state in FINAL for r in self.model.values()) and \
                    -1 not in self.keys.values():
                break
            for claim in claims:
                rcpt = self.model.setdefault(claim.recipient_id, Rcpt(due=self.now))
                self.keys[(claim.queue_id, claim.address)] = claim.recipient_id
                assert rcpt.state == "queued"
                self._final(rcpt, "delivered")
            self.run(self.store.settle(Settlement(delivered=[c.recipient_id for c in claims]),
                                       "drain", self.now))
        assert -1 not in self.keys.values(), "an acknowledged recipient was never handed out"
        assert all(r.state in FINAL for r in self.model.values())
        assert all(len(r.finals) == 1 for r in self.model.values())
        stats = self.run(self.store.stats())
        assert stats.recipients["delivered"] + stats.recipients["bounced"] == len(self.keys)
        assert stats.messages_pending == 0


QueueMachine.TestCase.settings = settings(
    max_examples=8, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_queue_invariants = QueueMachine.TestCase


class LongQueueMachine(QueueMachine):
    """The same machine, run longer under ``pytest -m drill``."""


LongQueueMachine.TestCase.settings = settings(
    max_examples=80, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestQueueInvariantsLong = pytest.mark.timeout(1200)(pytest.mark.drill(LongQueueMachine.TestCase))


async def test_late_delivery_does_not_flip_a_bounce(tmp_path: Path) -> None:
    """w1's lease expires mid-delivery; w2 takes the recipient and bounces it; then w1's
    settle arrives saying delivered. The recipient stays bounced: never both."""
    store = SqlQueueStore(f"sqlite+aiosqlite:///{tmp_path / 'q.db'}")
    await store.open()
    try:
        now = 1000.0
        await store.enqueue([NewMessage(queue_id="Q1", mail_from="a@src.test",
                                        recipients=(("u@basic.example", "basic"),),
                                        body=b"x\r\n", received_at=now)])
        (first,) = await store.claim(["basic"], 1, "w1", now, now + LEASE)
        assert await store.reclaim_expired(now + LEASE + 1) == 1
        (second,) = await store.claim(["basic"], 1, "w2", now + LEASE + 1, now + 2 * LEASE)
        await store.settle(Settlement(bounced=[(second.recipient_id, "gone")]), "w2", now + 62)
        await store.settle(Settlement(delivered=[first.recipient_id]), "w1", now + 63)
        stats = await store.stats()
        assert (stats.recipients["bounced"], stats.recipients["delivered"]) == (1, 0)
    finally:
        await store.close()
