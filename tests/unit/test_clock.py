"""The scaled and manual clocks that rehearsals and tests run on."""

from __future__ import annotations

import asyncio
import time

import pytest

from mailqueue.clock import ManualClock, ScaledClock


def test_scaled_clock_runs_speed_times_faster() -> None:
    clock = ScaledClock(start=1_561_586_400.0, speed=3600)
    first = clock.now()
    time.sleep(0.05)
    passed = clock.now() - first
    assert 0.04 * 3600 <= passed <= 1.0 * 3600  # loosely: the machine may be busy
    assert first >= 1_561_586_400.0
    assert clock.real_seconds(7200) == pytest.approx(2.0)
    assert clock.real_seconds(-5) == 0.0


async def test_scaled_clock_sleeps_in_simulated_seconds() -> None:
    clock = ScaledClock(start=0.0, speed=36000)
    before = clock.now()
    await clock.sleep(3600)  # an hour, in a tenth of a second
    assert clock.now() - before >= 3600


def test_scaled_clock_needs_a_positive_speed() -> None:
    with pytest.raises(ValueError, match="positive"):
        ScaledClock(0.0, 0)


async def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(start=100.0)
    woke: list[float] = []

    async def sleeper() -> None:
        await clock.sleep(60)
        woke.append(clock.now())

    task = asyncio.create_task(sleeper())
    await asyncio.sleep(0.01)
    assert clock.now() == 100.0 and not woke
    clock.advance(30)
    await asyncio.sleep(0.01)
    assert not woke
    clock.advance(30)
    await asyncio.wait_for(task, 1)
    assert woke == [160.0]
    with pytest.raises(ValueError):
        clock.advance(-1)
    assert clock.real_seconds(10) == float("inf")
