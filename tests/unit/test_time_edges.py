"""Times and durations at and past their bounds: parsing refuses, formatting never raises."""

from __future__ import annotations

import math
import sys

import pytest

from mailqueue.control.windows import Window, WindowState
from mailqueue.errors import TimeParseError, WindowError
from mailqueue.timeparse import (
    MAX_DURATION,
    MAX_TIME,
    format_duration,
    format_time,
    parse_duration,
    parse_size,
    parse_time,
)

ODD = [math.inf, -math.inf, math.nan, 1e300, -1e300, 2.6e11, -2.6e11, sys.float_info.max,
       -0.0, 5e-324]


@pytest.mark.parametrize("ts", ODD)
@pytest.mark.parametrize("zone", [None, "America/Chicago", "Mars/Base"])
def test_format_time_never_raises(ts: float, zone: str | None) -> None:
    text = format_time(ts, zone)
    assert text and "\n" not in text


def test_format_time_says_out_of_range() -> None:
    assert format_time(2.6e11) == "(time out of range: 2.6e+11)"
    assert format_time(math.nan) == "(time out of range: nan)"
    assert format_time(0, "Mars/Base") == "1970-01-01T00:00:00+00:00"  # an unknown zone: UTC


@pytest.mark.parametrize("seconds", ODD)
def test_format_duration_never_raises(seconds: float) -> None:
    assert format_duration(seconds)


def test_format_duration_odd_values() -> None:
    assert format_duration(math.inf) == "forever"
    assert format_duration(math.nan) == "unknown"
    assert format_duration(-90) == "-1m30s"
    assert format_duration(MAX_DURATION) == "36500d"
    assert format_duration(1e300) == "1.16e+295d"


@pytest.mark.parametrize("value", ["3000000d", "36501d", "5300w", 1e300, math.inf, math.nan,
                                   "99999999999999999999999", 36500 * 86400 + 1])
def test_durations_past_100_years_are_refused(value: str | float) -> None:
    with pytest.raises(TimeParseError, match=r"out of range: a duration is at most 100 years"):
        parse_duration(value)


def test_durations_up_to_100_years_are_taken() -> None:
    assert parse_duration("36500d") == MAX_DURATION
    assert parse_duration("0") == 0.0


@pytest.mark.parametrize("value", ["9999-12-31T23:00:00-05:00", "1969-12-31T23:59:59Z",
                                   "0001-01-01T00:00:00+01:00", "+3000000d"])
def test_times_outside_1970_to_9999_are_refused(value: str) -> None:
    with pytest.raises(TimeParseError, match="out of range"):
        parse_time(value, now=1.7e9)


def test_times_at_the_bounds_are_taken() -> None:
    assert parse_time("1970-01-01T00:00:00Z") == 0.0
    assert parse_time("9999-12-31T23:59:59Z") == MAX_TIME
    assert parse_time("9999-12-31 17:59:59", "America/Chicago") == MAX_TIME


@pytest.mark.parametrize("value", ["99999999999TiB", 2**63, "9" * 400])
def test_sizes_past_8_eib_are_refused(value: str | int) -> None:
    with pytest.raises(TimeParseError, match="out of range: a size is at most 8 EiB"):
        parse_size(value)


@pytest.mark.parametrize("end", ODD)
def test_a_window_describes_itself_whatever_its_times(end: float) -> None:
    window = Window(name="w", stores=(), start=-end, end=end, state=WindowState.ACTIVE,
                    timezone="Mars/Base")
    assert window.describe(1.7e9).startswith("w: ")


@pytest.mark.parametrize("until", [MAX_TIME + 1, math.inf, math.nan, 1e300])
def test_a_window_is_not_moved_past_the_range(until: float) -> None:
    window = Window(name="w", stores=(), start=1.7e9 + 60, end=1.7e9 + 3600)  # scheduled
    with pytest.raises(WindowError, match="out of range"):
        window.started_now(1.7e9, until)
    with pytest.raises(WindowError, match="out of range"):
        window.started_now(1.7e9).extended(1.7e9, until)
