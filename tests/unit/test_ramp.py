"""The drain ramp: a pure policy on a manual clock."""

from __future__ import annotations

import pytest

from mailqueue.clock import ManualClock
from mailqueue.control.windows import Window, WindowSet, WindowState
from mailqueue.delivery.ramp import DrainRamp

HOUR = 3600.0


def ended_at(end: float, now: float) -> WindowSet:
    window = Window(name="w", stores=(), start=end - 10 * HOUR, end=end,
                    state=WindowState.ENDED, started_at=end - 10 * HOUR, ended_at=end)
    return WindowSet([window], now)


def test_no_ended_window_means_full_speed() -> None:
    clock = ManualClock(0.0)
    ramp = DrainRamp(clock, duration=2 * HOUR, start_fraction=0.1, concurrency=4)
    active = Window(name="w", stores=(), start=-HOUR, end=HOUR, state=WindowState.ACTIVE)
    assert ramp.fraction(WindowSet([active], 0.0)) == 1.0
    assert ramp.lanes(WindowSet([], 0.0)) == 4
    assert ramp.grant(50, WindowSet([], 0.0)) == 50


def test_lanes_rise_over_the_ramp() -> None:
    clock = ManualClock(0.0)
    ramp = DrainRamp(clock, duration=2 * HOUR, start_fraction=0.25, concurrency=4)
    assert ramp.lanes(ended_at(0.0, 0.0)) == 1
    clock.set(HOUR)
    assert ramp.fraction(ended_at(0.0, HOUR)) == pytest.approx(0.625)
    assert ramp.lanes(ended_at(0.0, HOUR)) == 3
    clock.set(2 * HOUR)
    assert ramp.lanes(ended_at(0.0, 2 * HOUR)) == 4


def test_rate_limited_ramp_grants_what_the_rate_allows() -> None:
    clock = ManualClock(0.0)
    ramp = DrainRamp(clock, duration=HOUR, start_fraction=0.1, max_rate=3600.0, concurrency=4)
    windows = ended_at(0.0, 0.0)
    assert ramp.rate(windows) == pytest.approx(360.0)
    first = ramp.grant(1000, windows)
    assert first == 6  # a tenth of a burst to start with
    total = 0
    for _ in range(60):  # ten minutes, one grant every ten seconds
        clock.advance(10)
        total += ramp.grant(1000, ended_at(0.0, clock.now()))
    # 0.1 -> ~0.27 of 3600/h over 10 minutes: about 110 recipients, nowhere near 600.
    assert 80 < total < 140
    ramp.refund(5)
    clock.advance(2 * HOUR)
    assert ramp.rate(ended_at(0.0, clock.now())) == 3600.0
    assert ramp.grant(10_000, ended_at(0.0, clock.now())) == 600  # capped burst


def test_bad_fraction() -> None:
    with pytest.raises(ValueError):
        DrainRamp(ManualClock(0.0), HOUR, start_fraction=0.0)
