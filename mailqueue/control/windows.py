"""Maintenance windows: the schedule, its states and the inbound policy.

A window moves ``scheduled → active → ended``, or to ``cancelled``. Stored state records
what an operator or the scheduler last decided; :func:`effective_state` adds what time
alone decides (a scheduled window whose start has passed is active). Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from enum import StrEnum

from mailqueue.errors import WindowError, WindowStateError
from mailqueue.timeparse import TIME_RANGE, format_duration, format_time, time_in_range


class WindowState(StrEnum):
    SCHEDULED = "scheduled"
    ACTIVE = "active"
    ENDED = "ended"
    CANCELLED = "cancelled"


class Inbound(StrEnum):
    """What the SMTP front end does with new mail for a store inside an active window."""

    QUEUE = "queue"
    TEMPFAIL = "tempfail"
    REJECT = "reject"


@dataclasses.dataclass(frozen=True)
class Window:
    """A window as stored in the queue database."""

    name: str
    stores: tuple[str, ...]  # empty: every store
    start: float  # planned start, POSIX seconds
    end: float  # planned end
    state: WindowState = WindowState.SCHEDULED
    inbound: Inbound = Inbound.QUEUE
    timezone: str | None = None
    started_at: float | None = None
    ended_at: float | None = None

    def covers(self, store: str) -> bool:
        return not self.stores or store in self.stores

    def effective_state(self, now: float) -> WindowState:
        """The state at ``now``, with the transitions that time alone makes."""
        if self.state in (WindowState.ENDED, WindowState.CANCELLED):
            return self.state
        if now >= self.end:
            return WindowState.ENDED
        if self.state is WindowState.ACTIVE or now >= self.start:
            return WindowState.ACTIVE
        return WindowState.SCHEDULED

    def next_change(self, now: float) -> float | None:
        """When time alone next changes this window's state after ``now`` (its start or
        its end); None if it never will."""
        state = self.effective_state(now)
        if state is WindowState.SCHEDULED:
            return self.start
        if state is WindowState.ACTIVE:
            return self.end
        return None

    def advance(self, now: float) -> Window:
        """This window with its time-driven transitions applied (and their times recorded)."""
        state = self.effective_state(now)
        if state is self.state:
            return self
        started = self.started_at
        if started is None and state in (WindowState.ACTIVE, WindowState.ENDED):
            started = min(self.start, now)
        ended = self.ended_at
        if state is WindowState.ENDED and ended is None:
            ended = min(self.end, now)
        return dataclasses.replace(self, state=state, started_at=started, ended_at=ended)

    # --- operator actions -------------------------------------------------------------

    def started_now(self, now: float, until: float | None = None) -> Window:
        """Start now (ahead of plan, or again with a new end)."""
        state = self.effective_state(now)
        if state is WindowState.ACTIVE and until is None:
            raise WindowStateError(f"window {self.name!r} is already active")
        if state is WindowState.CANCELLED:
            raise WindowStateError(f"window {self.name!r} was cancelled; create a new one")
        end = self.end if until is None else until
        self._check_end(end)
        if end <= now:
            raise WindowError(f"window {self.name!r} would end at {format_time(end)}, which "
                              "is not in the future: give --until or --for", field="until")
        # Active already (by an operator, or because its start has passed): it started
        # when it did, or at its planned start; otherwise it starts now.
        started = (self.started_at or min(self.start, now)) if state is WindowState.ACTIVE \
            else now
        return dataclasses.replace(self, state=WindowState.ACTIVE, start=min(self.start, now),
                                   end=end, started_at=started, ended_at=None)

    def ended_now(self, now: float) -> Window:
        state = self.effective_state(now)
        if state is not WindowState.ACTIVE:
            raise WindowStateError(f"window {self.name!r} is {state}, not active")
        return dataclasses.replace(self, state=WindowState.ENDED, ended_at=now,
                                   started_at=self.started_at or self.start)

    def extended(self, now: float, until: float) -> Window:
        state = self.effective_state(now)
        if state in (WindowState.ENDED, WindowState.CANCELLED):
            raise WindowStateError(f"window {self.name!r} is {state}; start it again with --until")
        self._check_end(until)
        if until <= max(now, self.start):
            raise WindowError(f"new end {format_time(until)} must be after now and after the "
                              "window's start", field="until")
        return dataclasses.replace(self, end=until)

    def _check_end(self, end: float) -> None:
        """Refuse an end no calendar can show, before it is stored (where every later read
        would have to show it)."""
        if not time_in_range(end):
            raise WindowError(f"window {self.name!r} would end at {format_time(end)}, out of "
                              f"range: {TIME_RANGE}", field="until")

    def cancelled(self, now: float) -> Window:
        state = self.effective_state(now)
        if state in (WindowState.ENDED, WindowState.CANCELLED):
            raise WindowStateError(f"window {self.name!r} is already {state}")
        return dataclasses.replace(self, state=WindowState.CANCELLED,
                                   ended_at=now if state is WindowState.ACTIVE else None)

    def describe(self, now: float) -> str:
        """One line for ``window list`` and command results; any stored times (one out of
        range shows as such, an unknown zone as UTC) give a line, never an error."""
        state = self.effective_state(now)
        stores = ",".join(self.stores) or "*"
        text = (f"{self.name}: {state} stores={stores} inbound={self.inbound} "
                f"start={format_time(self.start, self.timezone)} "
                f"end={format_time(self.end, self.timezone)}")
        if state is WindowState.ACTIVE:
            text += f" (ends in {format_duration(max(0.0, self.end - now))})"
        elif state is WindowState.SCHEDULED:
            text += f" (starts in {format_duration(max(0.0, self.start - now))})"
        return text


class WindowSet:
    """The windows in force at one moment, as the front end and the worker ask about them."""

    def __init__(self, windows: Iterable[Window], now: float) -> None:
        self.now = now
        self.windows = tuple(windows)
        self.active = tuple(w for w in self.windows
                            if w.effective_state(now) is WindowState.ACTIVE)

    def blocking(self, store: str) -> Window | None:
        """The active window covering ``store`` (the strictest policy wins), if any."""
        covering = [w for w in self.active if w.covers(store)]
        if not covering:
            return None
        rank = {Inbound.REJECT: 0, Inbound.TEMPFAIL: 1, Inbound.QUEUE: 2}
        return min(covering, key=lambda w: rank[w.inbound])

    def next_change(self) -> float | None:
        """When time alone next starts or ends one of these windows (None: never)."""
        times = [t for w in self.windows if (t := w.next_change(self.now)) is not None]
        return min(times, default=None)

    def blocked_stores(self, stores: Sequence[str]) -> set[str]:
        return {s for s in stores if self.blocking(s) is not None}

    def time_inside(self, store: str, since: float, until: float) -> float:
        """Seconds of [since, until] that ``store`` spent inside windows (overlaps merged)."""
        spans = []
        for window in self.windows:
            if not window.covers(store) or window.effective_state(until) is \
                    WindowState.SCHEDULED:
                continue
            if window.state is WindowState.CANCELLED and window.started_at is None:
                continue
            begin = window.started_at if window.started_at is not None else window.start
            finish = window.ended_at if window.ended_at is not None else min(window.end, until)
            lo, hi = max(begin, since), min(finish, until)
            if hi > lo:
                spans.append((lo, hi))
        total, cursor = 0.0, since
        for lo, hi in sorted(spans):
            lo = max(lo, cursor)
            if hi > lo:
                total += hi - lo
                cursor = hi
        return total
