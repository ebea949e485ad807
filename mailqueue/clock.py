"""Injected time.

Everything that compares or waits on *mail* time (retry due times, window boundaries,
lifetimes, ramps) asks a :class:`Clock`. Operational cadence (poll intervals, timeouts of
network I/O) stays in real time; a clock says how long a simulated span lasts in real
seconds through :meth:`Clock.real_seconds`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    """The source of mail time: epoch seconds, UTC."""

    def now(self) -> float:
        """The current time as POSIX seconds."""
        ...

    def real_seconds(self, span: float) -> float:
        """How many real seconds ``span`` clock seconds last (``inf`` if it never passes alone)."""
        ...

    async def sleep(self, span: float) -> None:
        """Wait until ``span`` clock seconds have passed."""
        ...

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever the clock jumps (manual clocks only)."""
        ...


class SystemClock:
    """Wall-clock time."""

    def now(self) -> float:
        return time.time()

    def real_seconds(self, span: float) -> float:
        return max(0.0, span)

    async def sleep(self, span: float) -> None:
        await asyncio.sleep(max(0.0, span))

    def subscribe(self, callback: Callable[[], None]) -> None:
        """System time never jumps; nothing to notify."""


class ScaledClock:
    """Simulated time running ``speed`` times faster than real time from ``start``."""

    def __init__(self, start: float, speed: float) -> None:
        if speed <= 0:
            raise ValueError("clock speed must be positive")
        self.start = start
        self.speed = speed
        self._real0 = time.monotonic()

    def now(self) -> float:
        return self.start + (time.monotonic() - self._real0) * self.speed

    def real_seconds(self, span: float) -> float:
        return max(0.0, span) / self.speed

    async def sleep(self, span: float) -> None:
        await asyncio.sleep(self.real_seconds(span))

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Scaled time flows steadily; nothing to notify."""


class ManualClock:
    """A clock that only moves when a test calls :meth:`advance` or :meth:`set`."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._callbacks: list[Callable[[], None]] = []

    def now(self) -> float:
        return self._now

    def real_seconds(self, span: float) -> float:
        return 0.0 if span <= 0 else float("inf")

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds``; returns the new time."""
        if seconds < 0:
            raise ValueError("a manual clock only moves forward")
        return self.set(self._now + seconds)

    def set(self, ts: float) -> float:
        """Jump to ``ts`` (never backwards)."""
        if ts < self._now:
            raise ValueError("a manual clock only moves forward")
        self._now = ts
        for callback in list(self._callbacks):
            callback()
        return self._now

    async def sleep(self, span: float) -> None:
        deadline = self._now + span
        while self._now < deadline:
            event = asyncio.Event()
            self._callbacks.append(event.set)
            try:
                await event.wait()
            finally:
                self._callbacks.remove(event.set)

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

