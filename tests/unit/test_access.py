"""The one access decision (:func:`mailqueue.access.mailbox_closed`) and the reason a mail
client shows for it (:meth:`mailqueue.access.Closed.reason`)."""

from __future__ import annotations

from pathlib import Path

from mailqueue.access import Closed, mailbox_closed
from mailqueue.control.nodes import NodeMode, NodeState, node_of
from mailqueue.control.windows import Inbound, Window, WindowSet, WindowState
from tests.helpers import make_config

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
END = NOW + 7200


def window(name: str = "upgrade", stores: tuple[str, ...] = ("basic",),
           timezone: str | None = None, inbound: Inbound = Inbound.QUEUE) -> Window:
    return Window(name=name, stores=stores, start=NOW - 60, end=END,
                  state=WindowState.ACTIVE, inbound=inbound, timezone=timezone)


def test_a_window_names_the_maintenance_and_its_planned_end() -> None:
    closed = Closed(store="basic", window=window())
    assert closed.kind == "maintenance"
    assert closed.reason() == ("Mailbox maintenance: basic is being upgraded (window "
                               "upgrade) until 2027-01-15T10:00:00+00:00; please try again "
                               "later")


def test_the_planned_end_is_given_in_the_windows_own_zone() -> None:
    closed = Closed(store="basic", window=window(timezone="America/Chicago"))
    assert "until 2027-01-15T04:00:00-06:00;" in closed.reason()


def test_a_node_down_names_the_node() -> None:
    closed = Closed(store="basic", node="basic-2")
    assert closed.kind == "node-down"
    assert closed.reason() == ("Mailbox unavailable: its node basic-2 is down; please try "
                               "again later")


def test_a_reason_is_one_line_a_client_can_show() -> None:
    for closed in (Closed(store="basic", window=window()), Closed(store="b", node="b-1")):
        reason = closed.reason()
        assert reason.isprintable() and '"' not in reason and len(reason) < 200


def test_the_decision(tmp_path: Path) -> None:
    store = make_config(tmp_path).stores[0].model_copy(update={"nodes": 3})
    alice = "alice@basic.example"
    node = node_of("basic", 3, alice)
    down = {node: NodeState(name=node, store="basic").changed(NodeMode.DOWN, NOW)}
    slow = {node: NodeState(name=node, store="basic").changed(NodeMode.SLOW, NOW,
                                                              latency=5.0)}
    nothing = WindowSet((), NOW)
    assert mailbox_closed(store, alice, nothing, {}) is None
    assert mailbox_closed(store, alice, nothing, slow) is None  # slow still serves
    assert mailbox_closed(store, alice, nothing, down) == Closed(store="basic", node=node)
    other = next(a for a in (f"u{n}@basic.example" for n in range(100))
                 if node_of("basic", 3, a) != node)
    assert mailbox_closed(store, other, nothing, down) is None  # only that node's mailboxes
    # a window covering the store wins over the node (and names the strictest window)
    windows = WindowSet((window("a"), window("b", inbound=Inbound.TEMPFAIL)), NOW)
    assert mailbox_closed(store, alice, windows, down) == \
        Closed(store="basic", window=window("b", inbound=Inbound.TEMPFAIL))
    assert mailbox_closed(store, alice, WindowSet((window(stores=("other",)),), NOW),
                          {}) is None
    everything = WindowSet((window(stores=()),), NOW)  # no stores named: every store
    assert mailbox_closed(store, alice, everything, {}) is not None
    assert mailbox_closed(store, alice, WindowSet((window(),), END), {}) is None  # over
