"""How soon the control plane rereads: often while mail waits on a window or a node, so a
window ended (or a node brought back) by another process starts the drain at once."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mailqueue.clock import ManualClock
from mailqueue.control.nodes import NodeMode, NodeState
from mailqueue.control.plane import ControlPlane
from mailqueue.control.windows import Window, WindowState


class Shared:
    """The control state as another process changes it (a :class:`ControlState`)."""

    def __init__(self) -> None:
        self.saved: dict[str, Window] = {}
        self.node_states: dict[str, NodeState] = {}

    async def windows(self) -> list[Window]:
        return list(self.saved.values())

    def watch(self, stores: object, interval: object, report: object) -> bool:
        return False  # cannot watch itself: the plane rereads at every interval

    async def save_window(self, window: Window, expect_state: str | None = None) -> bool:
        self.saved[window.name] = window
        return True

    async def add_window_if_absent(self, window: Window) -> bool:
        return self.saved.setdefault(window.name, window) is window

    async def nodes(self) -> list[NodeState]:
        return list(self.node_states.values())

    async def save_nodes(self, nodes: Sequence[NodeState]) -> None:
        self.node_states.update((node.name, node) for node in nodes)

    async def retry_deferred(self, store: str, now: float, pick: Callable[[str], bool],
                             reason: str) -> int:
        return 0


def plane(shared: Shared, clock: ManualClock) -> ControlPlane:
    return ControlPlane(shared, clock, ["basic", "exchange"], interval=0.5, held_interval=0.1)


async def test_rereads_every_interval_when_nothing_is_held() -> None:
    control = plane(Shared(), ManualClock(1000.0))
    await control.refresh()
    assert control.next_read() == 0.5


async def test_rereads_often_while_a_window_holds_a_store_and_slowly_once_it_ends() -> None:
    shared, clock = Shared(), ManualClock(1000.0)
    window = Window(name="upgrade", stores=("basic",), start=900.0, end=5000.0,
                    state=WindowState.ACTIVE, started_at=900.0)
    await shared.save_window(window)
    control = plane(shared, clock)
    await control.refresh()
    assert control.blocked() == {"basic"}
    assert control.next_read() == 0.1
    await shared.save_window(window.ended_now(1001.0))  # mailqueue window end, elsewhere
    await control.refresh()
    assert control.blocked() == frozenset()
    assert control.next_read() == 0.5


async def test_rereads_often_while_a_node_is_not_up() -> None:
    shared = Shared()
    down = NodeState(name="basic-1", store="basic").changed(NodeMode.DOWN, 1000.0)
    await shared.save_nodes([down])
    control = plane(shared, ManualClock(1000.0))
    await control.refresh()
    assert control.next_read() == 0.1
    await shared.save_nodes([down.changed(NodeMode.UP, 1001.0)])
    await control.refresh()
    assert control.next_read() == 0.5


async def test_rereads_slowly_while_notifications_poke_it_and_often_when_they_stop() -> None:
    from mailqueue.clock import ScaledClock

    shared, clock = Shared(), ScaledClock(1000.0, 1.0)
    await shared.save_window(Window(name="upgrade", stores=("basic",), start=900.0,
                                    end=1000.3, state=WindowState.ACTIVE, started_at=900.0))
    control = ControlPlane(shared, clock, ["basic", "exchange"], interval=0.5,
                           held_interval=0.1)
    listening = {"up": True}  # a PostgreSQL LISTEN connection, up
    control.notified_by(lambda: listening["up"])
    await control.refresh()
    assert control.blocked() == {"basic"}
    assert control.next_read() == 0.5
    assert 0.2 < control.next_wait() <= 0.3  # still woken for the window's scheduled end
    listening["up"] = False  # reconnecting
    assert control.next_read() == 0.1


def test_the_held_interval_is_never_longer_than_the_interval() -> None:
    control = ControlPlane(Shared(), ManualClock(0.0), ["basic"], interval=0.05)
    assert control.next_read() == 0.05


def test_a_window_next_changes_at_its_start_then_at_its_end() -> None:
    window = Window(name="upgrade", stores=("basic",), start=1000.0, end=2000.0)
    assert window.next_change(500.0) == 1000.0
    assert window.next_change(1500.0) == 2000.0
    assert window.next_change(2500.0) is None
    assert window.cancelled(500.0).next_change(500.0) is None


def test_the_plane_wakes_for_the_next_start_or_end() -> None:
    from mailqueue.clock import ScaledClock
    from mailqueue.control.windows import WindowSet

    windows = WindowSet([Window(name="a", stores=(), start=1000.0, end=3000.0),
                         Window(name="b", stores=(), start=100.0, end=1500.0)], 500.0)
    assert windows.next_change() == 1000.0  # a's start, before b's end
    assert WindowSet([], 500.0).next_change() is None
    control = ControlPlane(Shared(), ScaledClock(500.0, 100.0), ["basic"], interval=0.5)
    control._current = windows
    # a starts 500 clock seconds from now, 5 real seconds at 100x: the interval comes first.
    assert control.next_wait() == 0.5
    control._current = WindowSet([Window(name="c", stores=(), start=0.0, end=520.0)], 500.0)
    assert 0.1 < control.next_wait() <= 0.2  # c ends in 20 clock seconds, 0.2 real ones
