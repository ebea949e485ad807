"""Mailbox nodes: stable placement, seeded faults, and the node-aware Maildir store."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from mailqueue.clock import ManualClock
from mailqueue.control.nodes import FaultModel, NodeMode, NodeState, node_index, node_name
from mailqueue.errors import TemporaryDeliveryError
from mailqueue.mailbox.maildir import MaildirStore
from mailqueue.mailbox.sharded import NodeAwareStore
from mailqueue.queue.values import Claim


def claim(n: int, address: str = "", attempts: int = 1) -> Claim:
    return Claim(recipient_id=n, queue_id=f"Q{n:05d}", address=address or f"u{n}@b.example",
                 store="basic", attempts=attempts, mail_from="s@x.example", received_at=1.0e9,
                 helo="h", peer="p", body=b"Subject: x\r\n\r\nhi\r\n")


def test_a_mailbox_always_lives_on_the_same_node() -> None:
    assert node_index("Alice@Basic.Example", 4) == node_index("alice@basic.example", 4)
    spread = Counter(node_index(f"user{i}@basic.example", 4) for i in range(400))
    assert set(spread) == {0, 1, 2, 3} and min(spread.values()) > 60
    assert node_name("basic", 0) == "basic-1"
    with pytest.raises(ValueError):
        node_index("a@b", 0)


def test_fault_model_by_mode() -> None:
    faults = FaultModel(seed=1)
    node = NodeState(name="basic-1", store="basic")
    assert faults.decide(node, "k", 1).error is None
    down = node.changed(NodeMode.DOWN, 0.0)
    assert faults.decide(down, "k", 1).error == "node basic-1 is down"
    slow = node.changed(NodeMode.SLOW, 0.0, latency=30.0)
    assert faults.decide(slow, "k", 1) .delay == 30.0
    assert faults.decide(slow, "k", 1).error is None


def test_flaky_failures_are_fixed_by_the_seed() -> None:
    flaky = NodeState(name="basic-2", store="basic").changed(NodeMode.FLAKY, 0.0,
                                                             failure_rate=0.3)
    keys = [f"Q{i}/u@b/1" for i in range(2000)]

    def failures(seed: int) -> list[bool]:
        model = FaultModel(seed)
        return [model.decide(flaky, key, 100).error is not None for key in keys]

    assert failures(7) == failures(7)
    assert failures(7) != failures(8)
    assert 0.25 < sum(failures(7)) / len(keys) < 0.35


def test_fail_next_n_then_succeed() -> None:
    node = NodeState(name="basic-1", store="basic").changed(NodeMode.FLAKY, 0.0, fail_next=3)
    model = FaultModel(0)
    assert [model.decide(node, "k", n).error is not None for n in range(1, 6)] == \
        [True, True, True, False, False]


def test_node_state_checks_its_values() -> None:
    with pytest.raises(ValueError):
        NodeState(name="n", store="s", failure_rate=1.5)
    assert NodeState(name="n", store="s").changed(NodeMode.SLOW, 5.0, latency=2).version == 1


def test_node_aware_store_fails_only_the_down_nodes_mailboxes(tmp_path: Path) -> None:
    states: dict[str, NodeState] = {}
    store = NodeAwareStore(MaildirStore("basic", tmp_path, "mx.test"), "basic", 2,
                           ManualClock(0.0), lambda: states, FaultModel(1))
    claims = [claim(i) for i in range(20)]
    down = store.node_for(claims[0].address)
    states[down.name] = down.changed(NodeMode.DOWN, 0.0)
    outcomes = store.deliver(claims)
    for c, outcome in zip(claims, outcomes, strict=True):
        on_down = store.node_for(c.address).name == down.name
        assert isinstance(outcome, TemporaryDeliveryError) if on_down else outcome is None
    delivered = list(tmp_path.rglob("new/*"))
    assert len(delivered) == sum(1 for o in outcomes if o is None) > 0


def test_node_aware_store_fail_next_counts_per_change(tmp_path: Path) -> None:
    address = "carol@b.example"
    states: dict[str, NodeState] = {}
    store = NodeAwareStore(MaildirStore("basic", tmp_path, "mx.test"), "basic", 1,
                           ManualClock(0.0), lambda: states, FaultModel(1))
    states["basic-1"] = NodeState(name="basic-1", store="basic").changed(
        NodeMode.FLAKY, 0.0, fail_next=2)
    outcomes = store.deliver([claim(i, address) for i in range(4)])
    assert [o is None for o in outcomes] == [False, False, True, True]
    states["basic-1"] = states["basic-1"].changed(NodeMode.FLAKY, 1.0, fail_next=1)
    outcomes = store.deliver([claim(i, address) for i in range(10, 12)])
    assert [o is None for o in outcomes] == [False, True]
