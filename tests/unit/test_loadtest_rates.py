"""The load test's rates over time: the first 10% of a run's events against the last."""

from __future__ import annotations

from mailqueue.loadtest import rates_by_part, rates_over_time


def test_a_run_that_slows_down_shows_it() -> None:
    # 100 events a second for 50 events, then 50 a second for the next 50.
    times = [i / 100 for i in range(50)] + [0.5 + i / 50 for i in range(50)]
    rates = rates_over_time(list(reversed(times)))  # any order
    assert rates == {"first": 100.0, "last": 50.0, "last_vs_first": 0.5}


def test_too_few_events_give_no_rate() -> None:
    assert rates_over_time([1.0, 2.0, 3.0]) == {"first": None, "last": None,
                                                "last_vs_first": None}


def test_rates_by_tenth_follow_the_run() -> None:
    # 100 events a second for 50 events, then 50 a second: the tenths show the step.
    times = [i / 100 for i in range(50)] + [0.5 + i / 50 for i in range(1, 51)]
    tenths = rates_by_part(times)
    assert tenths is not None and len(tenths) == 10
    assert tenths[:5] == [100.0] * 5 and tenths[5:] == [50.0] * 5
    assert rates_by_part([1.0, 2.0]) is None
