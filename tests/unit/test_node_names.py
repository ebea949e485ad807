"""Node names against the config, which changes let a node's deferred mail go at once, and
the one construction of the stores."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailqueue.clock import ManualClock
from mailqueue.control.nodes import FaultModel, NodeMode, NodeState, came_back, find_node, node_span
from mailqueue.errors import MailqueueError, NodeError
from mailqueue.mailbox.maildir import MaildirStore
from mailqueue.mailbox.sharded import NodeAwareStore, build_mailboxes
from tests.helpers import make_config

COUNTS = {"basic": 3, "hosted-exchange": 1, "a-b": 12}


@pytest.mark.parametrize(("name", "found"), [
    ("basic-1", ("basic", 0)), ("basic-3", ("basic", 2)),
    ("hosted-exchange-1", ("hosted-exchange", 0)), ("a-b-12", ("a-b", 11)),
])
def test_find_node(name: str, found: tuple[str, int]) -> None:
    assert find_node(name, COUNTS) == found


@pytest.mark.parametrize(("name", "message"), [
    ("basic-4", "no node 'basic-4' (basic has nodes basic-1..basic-3)"),
    ("basic-0", "no node 'basic-0' (basic has nodes basic-1..basic-3)"),
    ("basic-03", "no node 'basic-03' (basic has nodes basic-1..basic-3)"),
    ("basic-+1", "no node 'basic-+1' (basic has nodes basic-1..basic-3)"),
    ("basic-\u0661", "no node 'basic-\u0661' (basic has nodes basic-1..basic-3)"),
    ("a-b-013", "no node 'a-b-013' (a-b has nodes a-b-1..a-b-12)"),
    ("hosted-exchange-2", "no node 'hosted-exchange-2' (hosted-exchange has one node: "
                          "hosted-exchange-1)"),
    ("nope-1", "no node 'nope-1' (known: basic-1..basic-3, hosted-exchange-1, a-b-1..a-b-12)"),
    ("basic\n-1", "no node 'basic\\n-1' (known: basic-1..basic-3, hosted-exchange-1, "
                  "a-b-1..a-b-12)"),
])
def test_find_node_names_the_nodes_there_are(name: str, message: str) -> None:
    with pytest.raises(NodeError) as caught:
        find_node(name, COUNTS)
    assert str(caught.value) == message
    assert isinstance(caught.value, MailqueueError) and isinstance(caught.value, ValueError)


def test_find_node_takes_huge_and_long_names() -> None:
    with pytest.raises(NodeError, match=r"basic has nodes"):
        find_node("basic-" + "9" * 10_000, COUNTS)  # past int()'s digit limit: no crash
    with pytest.raises(NodeError) as caught:
        find_node("x" * 500, COUNTS)
    assert len(str(caught.value)) < 200 and "..." in str(caught.value)


def test_node_span() -> None:
    assert node_span("basic", 1) == "basic-1"
    assert node_span("basic", 4) == "basic-1..basic-4"


def state(mode: NodeMode) -> NodeState:
    return NodeState(name="basic-1", store="basic", mode=mode)


@pytest.mark.parametrize(("before", "after", "back"), [
    (NodeMode.DOWN, NodeMode.UP, True),
    (NodeMode.DOWN, NodeMode.SLOW, True),
    (NodeMode.DOWN, NodeMode.FLAKY, True),
    (NodeMode.FLAKY, NodeMode.UP, True),
    (NodeMode.FLAKY, NodeMode.SLOW, True),
    (NodeMode.FLAKY, NodeMode.FLAKY, False),
    (NodeMode.UP, NodeMode.UP, False),
    (NodeMode.SLOW, NodeMode.UP, False),
    (NodeMode.UP, NodeMode.DOWN, False),
    (NodeMode.FLAKY, NodeMode.DOWN, False),
    (None, NodeMode.UP, False),
])
def test_came_back(before: NodeMode | None, after: NodeMode, back: bool) -> None:
    assert came_back(None if before is None else state(before), state(after)) is back


def test_build_mailboxes_puts_every_store_on_its_nodes(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config = config.model_copy(update={"stores": [
        config.stores[0].model_copy(update={"nodes": 4}), config.stores[1]]})
    stores = build_mailboxes(config, ManualClock(0.0), dict, FaultModel(7))
    assert list(stores) == ["basic", "hosted-exchange"]
    assert all(isinstance(s, NodeAwareStore) and isinstance(s.inner, MaildirStore)
               for s in stores.values())
    basic = stores["basic"]
    assert isinstance(basic, NodeAwareStore) and basic.count == 4
    assert isinstance(basic.inner, MaildirStore) and basic.inner.root == tmp_path / "mail" / \
        "basic"
