"""The node-aware store's cost when nodes are up: a store whose nodes are all up hands its
claims straight to its Maildirs; otherwise only the claims on a node that is not up are
put to the fault model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mailqueue.clock import ManualClock
from mailqueue.control.nodes import Fault, FaultModel, NodeMode, NodeState, node_of
from mailqueue.mailbox.base import DeliveryOutcome
from mailqueue.mailbox.maildir import MaildirStore
from mailqueue.mailbox.sharded import NodeAwareStore
from mailqueue.queue.values import Claim
from tests.unit.test_nodes import claim


class Recording(MaildirStore):
    """A Maildir store that keeps each batch it is given."""

    def __init__(self, root: Path) -> None:
        super().__init__("basic", root, "mx.test")
        self.batches: list[Sequence[Claim]] = []

    def deliver(self, claims: Sequence[Claim]) -> list[DeliveryOutcome]:
        self.batches.append(claims)
        return super().deliver(claims)


class Asked(FaultModel):
    """A fault model that notes which node each decision was about."""

    def __init__(self) -> None:
        super().__init__(seed=1)
        self.asked: list[str] = []

    def decide(self, node: NodeState, key: str, nth: int) -> Fault:
        self.asked.append(node.name)
        return super().decide(node, key, nth)


def up(name: str) -> NodeState:
    return NodeState(name=name, store=name.rpartition("-")[0])


def test_when_every_node_is_up_the_claims_go_straight_through(tmp_path: Path) -> None:
    claims = [claim(i) for i in range(40)]
    for states in (
            {},  # never set
            {f"basic-{i}": up(f"basic-{i}") for i in range(1, 5)},  # set, and up
            # Another store's node down, and an old row of a node no longer configured.
            {"other-1": up("other-1").changed(NodeMode.DOWN, 0.0),
             "basic-9": up("basic-9").changed(NodeMode.DOWN, 0.0)}):
        inner, faults = Recording(tmp_path), Asked()
        store = NodeAwareStore(inner, "basic", 4, ManualClock(0.0), lambda s=states: s, faults)
        assert store.deliver(claims) == [None] * len(claims)
        assert inner.batches == [claims] and inner.batches[0] is claims
        assert faults.asked == []


def test_only_the_claims_on_a_node_not_up_are_decided(tmp_path: Path) -> None:
    claims = [claim(i) for i in range(40)]
    on = {c.recipient_id: node_of("basic", 4, c.address) for c in claims}
    states = {"basic-2": up("basic-2").changed(NodeMode.DOWN, 0.0),
              "basic-3": up("basic-3").changed(NodeMode.FLAKY, 0.0, fail_next=1),
              "basic-4": up("basic-4")}
    inner, faults = Recording(tmp_path), Asked()
    store = NodeAwareStore(inner, "basic", 4, ManualClock(0.0), lambda: states, faults)
    outcomes = store.deliver(claims)
    assert sorted(faults.asked) == sorted(n for n in on.values() if n in ("basic-2", "basic-3"))
    # basic-2 turns every delivery away, basic-3 only its first one since the change.
    failed = [c.recipient_id for c, o in zip(claims, outcomes, strict=True) if o is not None]
    first_on_3 = next(c.recipient_id for c in claims if on[c.recipient_id] == "basic-3")
    assert failed == [c.recipient_id for c in claims
                      if on[c.recipient_id] == "basic-2" or c.recipient_id == first_on_3]
    assert [c.recipient_id for c in inner.batches[0]] == \
        [c.recipient_id for c in claims if c.recipient_id not in failed]


def test_a_slow_node_under_a_manual_clock_delivers_at_once(tmp_path: Path) -> None:
    """A manual clock's time passes only when the test moves it, so a slow node's latency
    has no real time to take: the delivery goes on (rather than failing to sleep forever)."""
    states = {"basic-1": up("basic-1").changed(NodeMode.SLOW, 0.0, latency=30.0)}
    inner = Recording(tmp_path)
    store = NodeAwareStore(inner, "basic", 1, ManualClock(0.0), lambda: states, Asked())
    assert store.deliver([claim(1)]) == [None]
    assert len(list(tmp_path.rglob("new/*"))) == 1
