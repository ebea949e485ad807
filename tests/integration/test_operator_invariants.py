"""Operator verbs against delivery under random interleavings: a Hypothesis state machine
over SqlQueueStore on a real SQLite file.

Two workers claim, settle any mix of outcomes or lose their leases; meanwhile an operator
runs delete, hold, release and bounce over every message not yet done. A model follows what
the store must do. After every step: the counts by state equal the model's, no accepted
total goes down, and the ledger's equation (accepted = delivered + bounced + deleted +
still queued) holds. Each verb changes exactly the recipients the model says it may and
names exactly those a worker holds as in delivery; it never takes one from its worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.queue.values import Action, ActionResult, Claim, NewMessage, Settlement
from mailqueue.verify.audit import audit

OWNERS = ("w1", "w2")
LEASE = 60.0
FINAL = ("delivered", "bounced", "deleted")

Key = tuple[str, str]  # (queue id, address)


@dataclasses.dataclass
class Rcpt:
    state: str = "queued"
    due: float = 0.0
    owner: str | None = None
    lease_until: float = 0.0


class OperatorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="mq-operator-")
        self.loop = asyncio.new_event_loop()
        self.store = SqlQueueStore(f"sqlite+aiosqlite:///{Path(self.tmp) / 'q.db'}")
        self.run(self.store.open())
        self.now = 1_000_000.0
        self.model: dict[Key, Rcpt] = {}
        self.held: dict[str, list[Claim]] = {owner: [] for owner in OWNERS}
        self.messages = 0
        self.accepted_seen = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    # --- delivery ------------------------------------------------------------------------

    @rule(count=st.integers(1, 3))
    def enqueue(self, count: int) -> None:
        self.messages += 1
        queue_id = f"Q{self.messages:08d}"
        rcpts = tuple((f"u{i}@basic.example", "basic") for i in range(count))
        self.run(self.store.enqueue([NewMessage(queue_id=queue_id, mail_from="a@src.test",
                                                recipients=rcpts, body=b"x\r\n",
                                                received_at=self.now)]))
        for address, _ in rcpts:
            self.model[(queue_id, address)] = Rcpt(due=self.now)

    @rule(owner=st.sampled_from(OWNERS), limit=st.integers(1, 4))
    def claim(self, owner: str, limit: int) -> None:
        claims = self.run(self.store.claim(["basic"], limit, owner, self.now,
                                           self.now + LEASE))
        for claim in claims:
            rcpt = self.model[(claim.queue_id, claim.address)]
            assert rcpt.state == "queued" and rcpt.due <= self.now, (rcpt, claim)
            rcpt.state, rcpt.owner, rcpt.lease_until = "active", owner, self.now + LEASE
        self.held[owner].extend(claims)

    @precondition(lambda self: any(self.held.values()))
    @rule(owner=st.sampled_from(OWNERS), data=st.data())
    def settle(self, owner: str, data: st.DataObject) -> None:
        claims, self.held[owner] = self.held[owner], []
        settlement = Settlement()
        for claim in claims:
            outcome = data.draw(st.sampled_from(["delivered", "deferred", "bounced"]))
            rcpt = self.model[(claim.queue_id, claim.address)]
            mine = rcpt.state == "active" and rcpt.owner == owner
            if outcome == "delivered":
                settlement.delivered.append(claim.recipient_id)
                # The file is in the mailbox: recorded unless a delivery or bounce was.
                if rcpt.state not in ("delivered", "bounced"):
                    rcpt.state, rcpt.owner = "delivered", None
            elif outcome == "deferred":
                settlement.deferred.append((claim.recipient_id, self.now + 30, "later"))
                if mine:
                    rcpt.state, rcpt.due, rcpt.owner = "queued", self.now + 30, None
            else:
                settlement.bounced.append((claim.recipient_id, "no such user"))
                if mine:
                    rcpt.state, rcpt.owner = "bounced", None
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
        self.held[owner] = []

    # --- the operator --------------------------------------------------------------------

    @rule()
    def delete_all(self) -> None:
        result = self.run(self.store.delete(None, self.now))
        self._check(result, takes=("queued", "held"), to="deleted")

    @rule()
    def hold_all(self) -> None:
        result = self.run(self.store.change(Action.HOLD, None, self.now))
        self._check(result, takes=("queued",), to="held")

    @rule()
    def release_all(self) -> None:
        result = self.run(self.store.change(Action.RELEASE, None, self.now))
        self._check(result, takes=("held",), to="queued", names_active=False)

    @rule()
    def bounce_all(self) -> None:
        result = self.run(self.store.bounce(None, "by operator", self.now))
        self._check(result, takes=("queued", "held"), to="bounced")

    def _check(self, result: ActionResult, takes: tuple[str, ...], to: str,
               names_active: bool = True) -> None:
        changed = {(c.queue_id, c.address) for c in result.changed}
        assert changed == {k for k, r in self.model.items() if r.state in takes}
        left = {(c.queue_id, c.address) for c in result.in_delivery}
        assert left == ({k for k, r in self.model.items() if r.state == "active"}
                        if names_active else set())
        for key in changed:
            self.model[key].state = to
            self.model[key].due = self.now

    # --- invariants ----------------------------------------------------------------------

    @invariant()
    def counts_match(self) -> None:
        stats = self.run(self.store.stats())
        expected = dict.fromkeys(("queued", "active", "held", *FINAL), 0)
        for rcpt in self.model.values():
            expected[rcpt.state] += 1
        assert stats.recipients == expected
        pending = {k[0] for k, r in self.model.items() if r.state not in FINAL}
        assert stats.messages_pending == len(pending)

    @invariant()
    def accounting_holds(self) -> None:
        report = self.run(self.store.report(self.now))
        assert report.accepted == self.messages >= self.accepted_seen
        self.accepted_seen = report.accepted
        checked = audit(self.run(self.store.ledger()), [])
        assert checked.unaccounted == 0 and checked.accepted == len(self.model)
        assert checked.deleted == report.deleted

    def teardown(self) -> None:
        try:
            self.run(self.store.change(Action.RELEASE, None, self.now))
            for _ in range(20):
                self.now += LEASE + 31
                self.run(self.store.reclaim_expired(self.now))
                claims = self.run(self.store.claim(["basic"], 1000, "drain", self.now,
                                                   self.now + LEASE))
                if not claims:
                    break
                self.run(self.store.settle(
                    Settlement(delivered=[c.recipient_id for c in claims]), "drain", self.now))
            stats = self.run(self.store.stats())
            assert stats.messages_pending == 0
            final = sum(stats.recipients[s] for s in FINAL)
            assert final == len(self.model)
        finally:
            self.run(self.store.close())
            self.loop.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


OperatorMachine.TestCase.settings = settings(
    max_examples=10, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_operator_invariants = OperatorMachine.TestCase
