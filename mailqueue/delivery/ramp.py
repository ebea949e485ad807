"""The drain ramp: delivery picks up gradually after a window ends (pure: clock passed in).

Right after a window ends, stores are "slow to access at the start". The ramp scales the
worker's effort from ``start_fraction`` to full over ``duration`` clock seconds after the
most recent window end:

- with ``max_rate`` (recipients per clock hour) it is a rate limit, a token bucket whose
  refill rate rises with the ramp;
- without it, it limits how many of the worker's ``concurrency`` lanes may claim.

Outside a ramp (no window ended within ``duration``) it grants everything.
"""

from __future__ import annotations

import math

from mailqueue.clock import Clock
from mailqueue.control.windows import WindowSet, WindowState

BURST = 600.0  # clock seconds of budget a rate-limited ramp may save up


class DrainRamp:
    """How much delivery the worker may do now."""

    def __init__(self, clock: Clock, duration: float, start_fraction: float = 0.1,
                 max_rate: float = 0.0, concurrency: int = 1) -> None:
        if not 0.0 < start_fraction <= 1.0:
            raise ValueError("start_fraction must be in (0, 1]")
        self._clock = clock
        self.duration = duration
        self.start_fraction = start_fraction
        self.max_rate = max_rate
        self.concurrency = concurrency
        self._tokens = 0.0
        self._filled_at: float | None = None

    @staticmethod
    def last_end(windows: WindowSet) -> float | None:
        """When the most recent window that has ended (or was cancelled while active) ended."""
        ends = [w.ended_at if w.ended_at is not None else w.end for w in windows.windows
                if w.effective_state(windows.now) in (WindowState.ENDED, WindowState.CANCELLED)
                and (w.ended_at is not None or w.state is not WindowState.CANCELLED)]
        return max(ends) if ends else None

    def fraction(self, windows: WindowSet) -> float:
        """The share of full speed allowed now: rises linearly after a window ends."""
        end = self.last_end(windows)
        now = self._clock.now()
        if end is None or self.duration <= 0 or now - end >= self.duration:
            return 1.0
        progress = max(0.0, now - end) / self.duration
        return self.start_fraction + (1.0 - self.start_fraction) * progress

    def lanes(self, windows: WindowSet) -> int:
        """How many delivery lanes may claim now (all of them when rate-limited)."""
        if self.max_rate > 0:
            return self.concurrency
        return max(1, math.ceil(self.concurrency * self.fraction(windows) - 1e-9))

    def rate(self, windows: WindowSet) -> float | None:
        """Recipients per clock hour allowed now; None when unlimited."""
        if self.max_rate <= 0:
            return None
        return self.max_rate * self.fraction(windows)

    def grant(self, want: int, windows: WindowSet) -> int:
        """Take up to ``want`` deliveries from the budget; how many may go now."""
        rate = self.rate(windows)
        if rate is None:
            return want
        now = self._clock.now()
        per_second = rate / 3600.0
        if self._filled_at is None:
            self._tokens = max(1.0, per_second * BURST / 10)
        else:
            self._tokens += per_second * max(0.0, now - self._filled_at)
        self._tokens = min(self._tokens, max(1.0, per_second * BURST))
        self._filled_at = now
        granted = min(want, int(self._tokens))
        self._tokens -= granted
        return granted

    def refund(self, count: int) -> None:
        """Give back what was granted but not used (fewer recipients were due)."""
        self._tokens += max(0, count)
