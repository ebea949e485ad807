"""The control plane: windows live in the queue database so every process sees them.

The :class:`ControlPlane` of a running server rereads the windows every ``interval`` real
seconds (so a change made by the CLI or a test is followed within a second), applies the
transitions that time alone makes (``scheduled → active → ended``) and persists them, and
calls its listeners when the set of stores held by a window changes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

import structlog

from mailqueue.clock import Clock
from mailqueue.config import WindowConfig
from mailqueue.errors import QueueError
from mailqueue.nodes import NodeState
from mailqueue.queue.models import ControlState
from mailqueue.windows import Inbound, Window, WindowSet, WindowState

log = structlog.get_logger("mailqueue.windows")

_EVENTS = {WindowState.ACTIVE: "window_started", WindowState.ENDED: "window_ended",
           WindowState.CANCELLED: "window_cancelled"}


def window_from_config(config: WindowConfig) -> Window:
    return Window(name=config.name, stores=tuple(config.stores or ()), start=config.start_ts,
                  end=config.end_ts, inbound=Inbound(config.inbound), timezone=config.timezone)


async def seed_windows(store: ControlState, configs: Sequence[WindowConfig]) -> None:
    """Add configured windows the database does not know yet (runtime changes win)."""
    for config in configs:
        await store.add_window_if_absent(window_from_config(config))


class ControlPlane:
    """The current :class:`WindowSet`, kept in step with the database."""

    def __init__(self, store: ControlState, clock: Clock, stores: Sequence[str],
                 interval: float = 0.5) -> None:
        self._store = store
        self._clock = clock
        self._stores = tuple(stores)
        self._interval = interval
        self._current = WindowSet((), clock.now())
        self._blocked: frozenset[str] = frozenset()
        self._listeners: list[Callable[[], None]] = []
        self._poke = asyncio.Event()
        # Serialised, so that a refresh that started before a change cannot finish after
        # a refresh that saw it and put the stale view back.
        self._lock = asyncio.Lock()
        self._seen: dict[str, WindowState] | None = None
        self._ends: dict[str, float] = {}
        self._nodes: dict[str, NodeState] = {}
        clock.subscribe(self._poke.set)

    def listen(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def current(self) -> WindowSet:
        """The windows in force now (time-driven transitions applied on the fly)."""
        now = self._clock.now()
        if now != self._current.now:
            self._current = WindowSet(self._current.windows, now)
        return self._current

    def nodes(self) -> dict[str, NodeState]:
        """Mailbox node states by name, as last read (a node not listed is up)."""
        return self._nodes

    def blocked(self) -> frozenset[str]:
        return frozenset(self.current().blocked_stores(self._stores))

    def poke(self) -> None:
        """Reread soon (after a local change)."""
        self._poke.set()

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
        self._nodes = {node.name: node for node in await self._store.nodes()}
        self._current = WindowSet(windows, now)
        blocked = self.blocked()
        if blocked != self._blocked:
            self._blocked = blocked
            for callback in list(self._listeners):
                callback()

    def _log_changes(self, windows: list[Window]) -> None:
        """Log each state change this process sees, whoever made it (time, CLI, a test)."""
        first = self._seen is None
        seen = self._seen or {}
        for window in windows:
            before = seen.get(window.name)
            if before is None and first and window.state is not WindowState.ACTIVE:
                continue
            if before is not window.state or before is None:
                log.info(_EVENTS.get(window.state, "window_scheduled"), window=window.name,
                         stores=",".join(window.stores) or "*", inbound=window.inbound.value)
            elif window.end != self._ends.get(window.name):
                log.info("window_extended", window=window.name, end=window.end)
        self._seen = {w.name: w.state for w in windows}
        self._ends = {w.name: w.end for w in windows}

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except QueueError as exc:
                log.warning("control_refresh_failed", error=str(exc))
            self._poke.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self._interval)
