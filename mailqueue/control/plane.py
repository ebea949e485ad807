"""The control plane: windows and node states live in the queue database so every process
sees them.

The :class:`ControlPlane` of a running server follows the windows and the mailbox nodes
within ``interval`` real seconds of a change (so a change made by the CLI or a test is
followed within a second), and within ``held_interval`` seconds while a window holds a
store or a node is not up: the end of a window or an outage, made by another process,
starts the drain within that much. Where the store can watch itself cheaply (an SQLite
file: see :meth:`~mailqueue.queue.store.ControlState.watch`) it looks that often on a
thread of its own, and the plane rereads only when a look finds the windows or nodes
changed; elsewhere the plane rereads that often. On PostgreSQL a notification pokes the
plane as the change commits: while the notifications are heard (see
:meth:`ControlPlane.notified_by`) the plane rereads every ``interval`` even while a
store is held, as a safety net, and every ``held_interval`` again while they are not.
It also rereads when time alone starts or ends a window (it wakes at that moment) and
after a :meth:`ControlPlane.poke`. It applies the transitions that time alone makes
(``scheduled → active → ended``) and persists them, and calls its listeners when the set
of stores held by a window changes.

Where the store watches itself, the plane also watches the mail for the worker: it calls
its commit listeners when a look finds anything committed to the queue since the last one
(by any process: mail from a front end of its own, an operator's release), and
:meth:`ControlPlane.due` says when the earliest queued recipient of an open store comes
due, so an idle worker need not claim to find out.

A node that comes back (down → up, say) is treated like a window that ends: the mail its
outage deferred is made due at once and the listeners are called, so its backlog drains
now rather than at each recipient's next retry. Each process does this when it sees the
change itself, after its own deliveries follow the new state.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Hashable, Mapping, Sequence

import structlog

from mailqueue.clock import Clock
from mailqueue.config import WindowConfig
from mailqueue.control.nodes import NodeMode, NodeState, came_back, find_node, mode_needs, node_of
from mailqueue.control.windows import Inbound, Window, WindowSet, WindowState
from mailqueue.errors import NodeError, QueueError
from mailqueue.queue.store import ControlState
from mailqueue.queue.values import Changes

log = structlog.get_logger("mailqueue.windows")

# Never waits less than this for a window's start or end (a timer may fire a hair early).
_EDGE_MIN_WAIT = 0.001
_UNREAD = object()  # the control rows before the first successful reread

_EVENTS = {WindowState.ACTIVE: "window_started", WindowState.ENDED: "window_ended",
           WindowState.CANCELLED: "window_cancelled"}


def window_from_config(config: WindowConfig) -> Window:
    return Window(name=config.name, stores=tuple(config.stores or ()), start=config.start_ts,
                  end=config.end_ts, inbound=Inbound(config.inbound), timezone=config.timezone)


async def seed_windows(store: ControlState, configs: Sequence[WindowConfig]) -> None:
    """Add configured windows the database does not know yet (runtime changes win)."""
    for config in configs:
        await store.add_window_if_absent(window_from_config(config))


async def set_nodes(store: ControlState, names: Sequence[str], mode: NodeMode, now: float, *,
                    counts: Mapping[str, int], latency: float = 0.0,
                    failure_rate: float = 0.0, fail_next: int = 0) -> list[NodeState]:
    """Set the nodes ``names`` (``STORE-N``) to ``mode`` from ``now`` on, in one
    transaction; a running server follows within a second. ``counts`` gives each store's
    number of nodes. Raises :class:`NodeError`, changing nothing, for a name that is not
    one of those nodes or a mode without the setting it needs."""
    stores = {name: find_node(name, counts)[0] for name in names}
    needs = mode_needs(mode, latency=latency, failure_rate=failure_rate, fail_next=fail_next)
    if needs:
        raise NodeError(f"a {mode.value} node needs {' or '.join(needs)}")
    current = {node.name: node for node in await store.nodes()}
    changed = [(current.get(name) or NodeState(name=name, store=stores[name]))
               .changed(mode, now, latency=latency, failure_rate=failure_rate,
                        fail_next=fail_next) for name in names]
    if changed:
        await store.save_nodes(changed)
    return changed


def _on_node(store: str, count: int, name: str) -> Callable[[str], bool]:
    """Whether an address of ``store`` (on ``count`` nodes) lives on node ``name``."""
    return lambda address: node_of(store, count, address) == name


class ControlPlane:
    """The current :class:`WindowSet` and node states, kept in step with the database.

    ``nodes`` gives each store's number of nodes (one for a store not named), so that the
    mail deferred by a node that comes back can be told from the rest of its store's.
    """

    def __init__(self, store: ControlState, clock: Clock, stores: Sequence[str],
                 interval: float = 0.5, nodes: Mapping[str, int] | None = None,
                 held_interval: float = 0.1) -> None:
        self._store = store
        self._clock = clock
        self._stores = tuple(stores)
        # Each store's number of nodes (one unless given), for placing a mailbox on one.
        self._counts = {name: (nodes or {}).get(name, 1) for name in self._stores}
        self._interval = interval
        self._held_interval = min(held_interval, interval)
        self._current = WindowSet((), clock.now())
        self._blocked: frozenset[str] = frozenset()
        self._listeners: list[Callable[[], None]] = []
        self._window_watchers: list[Callable[[str, Window], None]] = []
        self._node_watchers: list[Callable[[NodeState], None]] = []
        self._poked = True  # reread at the next look, whatever control_version says
        self._waiter: asyncio.Future[None] | None = None  # run()'s sleep between looks
        self._watched = False  # the store watches itself (run() asked it to)
        self._looked: Changes | QueueError | None = None  # its last report
        self._news = False  # a report not yet followed
        self._control: Hashable = _UNREAD  # the look's control rows when last reread
        self._commits: int | None = None  # the last look's commit count
        self._due: dict[str, float | None] | None = None  # its due times (None: no look)
        self._commit_listeners: list[Callable[[], None]] = []
        # Serialised, so that a refresh that started before a change cannot finish after
        # a refresh that saw it and put the stale view back.
        self._lock = asyncio.Lock()
        self._notified: Callable[[], bool] = _never  # whether every change pokes the plane at once
        self._seen: dict[str, WindowState] | None = None
        self._ends: dict[str, float] = {}
        self._nodes: dict[str, NodeState] | None = None  # None: not read yet
        self._back: set[str] = set()  # nodes seen coming back, their mail not yet let through
        clock.subscribe(self.poke)

    def listen(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def listen_commits(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when a look finds anything committed to the queue since the
        last one (only where the store can tell: see :meth:`due`)."""
        self._commit_listeners.append(callback)

    def notified_by(self, listening: Callable[[], bool]) -> None:
        """Lean on notifications: while ``listening()`` (a PostgreSQL LISTEN connection
        that is up), every change to the windows and nodes, by any process, pokes this
        plane as it commits, so a held store needs no rereads every ``held_interval``."""
        self._notified = listening

    def due(self) -> float | None:
        """When (clock time) the earliest queued recipient of a store no window holds
        comes due, as of the last look (``inf``: none is queued), while the plane watches
        the queue: its store tells of every commit and the last look succeeded. None
        otherwise: whoever waits for mail must poll."""
        if self._due is None:
            return None
        blocked = self.blocked()
        return min((when for store, when in self._due.items()
                    if when is not None and store not in blocked), default=math.inf)

    def watch(self, on_window: Callable[[str, Window], None],
              on_node: Callable[[NodeState], None]) -> None:
        """Hear each change this process sees, whoever made it: ``on_window(change,
        window)`` with ``change`` one of started, ended, cancelled, scheduled, extended;
        ``on_node(node)`` for a node that changed mode or settings."""
        self._window_watchers.append(on_window)
        self._node_watchers.append(on_node)

    def current(self) -> WindowSet:
        """The windows in force now (time-driven transitions applied on the fly)."""
        now = self._clock.now()
        if now != self._current.now:
            self._current = WindowSet(self._current.windows, now)
        return self._current

    def nodes(self) -> dict[str, NodeState]:
        """Mailbox node states by name, as last read (a node not listed is up)."""
        return self._nodes or {}

    def blocked(self) -> frozenset[str]:
        return frozenset(self.current().blocked_stores(self._stores))

    def next_read(self) -> float:
        """Seconds until the next reread: ``held_interval`` while mail waits on a window or
        a node (its end is worth seeing soon; the worker is idle for those stores
        meanwhile), else ``interval``; ``interval`` too while notifications poke the plane
        at every change (:meth:`notified_by`)."""
        held = self._blocked or any(node.mode is not NodeMode.UP
                                    for node in self.nodes().values())
        return self._held_interval if held and not self._notified() else self._interval

    def next_wait(self) -> float | None:
        """Seconds until the plane next looks by itself (None: not until told): where the
        store watches itself, when time alone next starts or ends a window; elsewhere
        :meth:`next_read`, or less for such a moment."""
        wait = None if self._watched else self.next_read()
        edge = self.current().next_change()
        if edge is not None:
            until = max(_EDGE_MIN_WAIT, self._clock.real_seconds(edge - self._clock.now()))
            wait = until if wait is None else min(wait, until)
        return wait

    def poke(self) -> None:
        """Reread now (after a local change, a notification, a clock jump)."""
        self._poked = True
        self._release()

    def _release(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def follow(self) -> None:
        """Reread the windows and nodes if the last look found them changed since the last
        reread (or there is no look), if time alone changed a window, if poked, or if mail
        of a node that came back is still to be let through. Tell the commit listeners of
        anything the look found committed."""
        poked, self._poked = self._poked, False
        self._news = False
        looked = self._looked
        if isinstance(looked, QueueError):
            self._due = None
            raise QueueError(str(looked))
        self._watch_mail(looked)
        control = _UNREAD if looked is None else looked.control
        if control is _UNREAD or control != self._control or poked or self._back \
                or self._time_moved():
            self._control = _UNREAD  # until this reread has succeeded
            await self.refresh()
            self._control = control

    def _reported(self, looked: Changes | QueueError) -> None:
        """The store's watch looked (on the loop)."""
        self._looked = looked
        self._news = True
        self._release()

    def _watch_mail(self, changes: Changes | None) -> None:
        if changes is None:
            self._due = self._commits = None
            return
        self._due = dict(changes.due)
        seen, self._commits = self._commits, changes.commits
        if seen is not None and seen != changes.commits:
            for callback in list(self._commit_listeners):
                callback()

    def _time_moved(self) -> bool:
        """Whether a window as last read has started or ended by now."""
        now = self._clock.now()
        return any(window.advance(now) is not window for window in self._current.windows)

    async def refresh(self) -> None:
        async with self._lock:
            await self._refresh()

    async def _refresh(self) -> None:
        now = self._clock.now()
        windows = []
        for window in await self._store.windows():
            advanced = window.advance(now)
            if advanced is not window:
                # Conditional: when several processes see the same moment pass, one saves.
                await self._store.save_window(advanced, expect_state=window.state)
            windows.append(advanced)
        self._log_changes(windows)
        self._follow_nodes(await self._store.nodes())
        self._current = WindowSet(windows, now)
        blocked = self.blocked()
        released = await self._let_through()
        if blocked != self._blocked or released:
            self._blocked = blocked
            for callback in list(self._listeners):
                callback()

    def _follow_nodes(self, states: list[NodeState]) -> None:
        """Take the nodes as read; log each change, note each node that came back."""
        before = self._nodes
        nodes = {node.name: node for node in states}
        self._nodes = nodes
        for node in nodes.values():
            old = None if before is None else before.get(node.name)
            if old is not None and old.version == node.version:
                continue
            if before is not None or node.mode is not NodeMode.UP:
                log.info("node_changed", node=node.name, mode=node.mode.value)
            if before is not None:
                for watcher in self._node_watchers:
                    watcher(node)
            if before is not None and came_back(old, node):
                self._back.add(node.name)

    async def _let_through(self) -> int:
        """Make the deferred mail of the nodes that came back due now; how many recipients.

        A node is done with once its retry is committed; one that went down again
        meanwhile, or is not configured (an old row), is let go. A delivery already under
        way when the node came back settles with the retry time it gets.
        """
        released = 0
        for name in sorted(self._back):
            node = self.nodes().get(name)
            store = self._store_of(name)
            if node is not None and node.mode is not NodeMode.DOWN and store is not None:
                count = await self._store.retry_deferred(
                    store, self._clock.now(), _on_node(store, self._counts[store], name),
                    f"node {name} is {node.mode.value}")
                log.info("node_back", node=name, recipients=count)
                released += count
            self._back.discard(name)
        return released

    def _store_of(self, name: str) -> str | None:
        """The store of configured node ``name``; None for any other name."""
        try:
            return find_node(name, self._counts)[0]
        except NodeError:
            return None

    def _log_changes(self, windows: list[Window]) -> None:
        """Log each state change this process sees, whoever made it (time, CLI, a test)."""
        first = self._seen is None
        seen = self._seen or {}
        for window in windows:
            before = seen.get(window.name)
            if before is None and first and window.state is not WindowState.ACTIVE:
                continue
            if before is not window.state or before is None:
                event = _EVENTS.get(window.state, "window_scheduled")
                log.info(event, window=window.name,
                         stores=",".join(window.stores) or "*", inbound=window.inbound.value)
            elif window.end != self._ends.get(window.name):
                event = "window_extended"
                log.info(event, window=window.name, end=window.end)
            else:
                continue
            for watcher in self._window_watchers:
                watcher(event.removeprefix("window_"), window)
        self._seen = {w.name: w.state for w in windows}
        self._ends = {w.name: w.end for w in windows}

    async def run(self) -> None:
        self._watched = self._store.watch(self._stores, self.next_read, self._reported)
        while True:
            try:
                await self.follow()
            except QueueError as exc:
                log.warning("control_refresh_failed", error=str(exc))
            await self._sleep(self.next_wait())

    async def _sleep(self, seconds: float | None) -> None:
        """Wait ``seconds`` (None: no limit), until poked, or until the watch reports."""
        if self._poked or self._news:
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None if seconds is None else loop.call_later(seconds, _release, waiter)
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            self._waiter = None


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _never() -> bool:
    return False
