from __future__ import annotations

import pytest

from mailqueue.control.windows import Inbound, Window, WindowSet, WindowState
from mailqueue.errors import TimeParseError, WindowError
from mailqueue.timeparse import parse_duration, parse_size, parse_time

H = 3600.0


def window(**kw: object) -> Window:
    base: dict[str, object] = {"name": "w", "stores": ("basic",), "start": 1000 * H,
                               "end": 1048 * H}
    base.update(kw)
    return Window(**base)  # type: ignore[arg-type]


def test_states_follow_time() -> None:
    w = window()
    assert w.effective_state(999 * H) is WindowState.SCHEDULED
    assert w.effective_state(1000 * H) is WindowState.ACTIVE
    assert w.effective_state(1047.9 * H) is WindowState.ACTIVE
    assert w.effective_state(1048 * H) is WindowState.ENDED


def test_advance_records_transition_times() -> None:
    w = window().advance(1001 * H)
    assert w.state is WindowState.ACTIVE and w.started_at == 1000 * H
    w = w.advance(1050 * H)
    assert w.state is WindowState.ENDED and w.ended_at == 1048 * H


def test_start_early_end_early_and_extend() -> None:
    w = window().started_now(990 * H)
    assert w.effective_state(990 * H) is WindowState.ACTIVE and w.start == 990 * H
    w = w.extended(1000 * H, 1079 * H)  # overran by 31 hours
    assert w.effective_state(1060 * H) is WindowState.ACTIVE
    w = w.ended_now(1070 * H)
    assert w.effective_state(1070 * H) is WindowState.ENDED and w.ended_at == 1070 * H


def test_invalid_transitions_say_why() -> None:
    with pytest.raises(WindowError, match="not active"):
        window().ended_now(10 * H)
    ended = window().advance(2000 * H)
    with pytest.raises(WindowError, match="ended"):
        ended.extended(2000 * H, 3000 * H)
    with pytest.raises(WindowError, match="already ended"):
        ended.cancelled(2000 * H)
    with pytest.raises(WindowError, match="must be after now"):
        window().extended(1010 * H, 1005 * H)
    with pytest.raises(WindowError, match="not in the future"):
        window().started_now(2000 * H)


def test_cancel_scheduled_never_activates() -> None:
    w = window().cancelled(10 * H)
    assert w.effective_state(1010 * H) is WindowState.CANCELLED
    assert WindowSet([w], 1010 * H).blocking("basic") is None


def test_window_set_strictest_policy_and_coverage() -> None:
    a = window(name="a", inbound=Inbound.QUEUE)
    b = window(name="b", inbound=Inbound.TEMPFAIL, stores=())
    ws = WindowSet([a, b], 1001 * H)
    blocking = ws.blocking("basic")
    assert blocking is not None and blocking.name == "b"
    assert ws.blocked_stores(["basic", "other"]) == {"basic", "other"}
    assert WindowSet([a], 1001 * H).blocked_stores(["basic", "other"]) == {"basic"}


def test_time_inside_merges_overlaps() -> None:
    a = window(name="a", start=10 * H, end=20 * H)
    b = window(name="b", start=15 * H, end=30 * H)
    ws = WindowSet([a, b], 40 * H)
    assert ws.time_inside("basic", 0, 40 * H) == 20 * H
    assert ws.time_inside("basic", 25 * H, 40 * H) == 5 * H
    assert ws.time_inside("elsewhere", 0, 40 * H) == 0


def test_parse_time_rfc3339_and_zones() -> None:
    assert parse_time("2019-06-26T17:00:00-05:00") == parse_time("2019-06-26T22:00:00Z")
    # 5 PM Central in June is CDT (UTC-5); in January CST (UTC-6).
    assert parse_time("2019-06-26 17:00", "America/Chicago") == parse_time(
        "2019-06-26T22:00:00Z")
    assert parse_time("2019-01-09 17:00", "America/Chicago") == parse_time(
        "2019-01-09T23:00:00Z")


def test_parse_time_dst_edges() -> None:
    # 2:30 AM on 10 March 2019 does not exist in Chicago: it maps forward to 3:30 CDT.
    assert parse_time("2019-03-10 02:30", "America/Chicago") == parse_time(
        "2019-03-10T08:30:00Z")
    # 1:30 AM on 3 November 2019 happens twice: the first (CDT) occurrence is taken.
    assert parse_time("2019-11-03 01:30", "America/Chicago") == parse_time(
        "2019-11-03T06:30:00Z")


def test_parse_time_errors_name_the_fix() -> None:
    with pytest.raises(TimeParseError, match="no UTC offset"):
        parse_time("2019-06-26 17:00")
    with pytest.raises(TimeParseError, match="unknown time zone"):
        parse_time("2019-06-26 17:00", "Mars/Olympus")
    with pytest.raises(TimeParseError, match="not a time"):
        parse_time("next tuesday")


def test_relative_times() -> None:
    assert parse_time("now", now=100.0) == 100.0
    assert parse_time("+2h", now=100.0) == 100.0 + 2 * H


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90), (90, 90), ("90s", 90), ("15m", 900), ("1h30m", 5400), ("2d", 172800),
    ("500ms", 0.5), ("1w", 604800),
])
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "5x", "-3", "1h-2m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(TimeParseError):
        parse_duration(text)


@pytest.mark.parametrize(("text", "size"), [
    ("1024", 1024), (2048, 2048), ("10MiB", 10 * 1024 * 1024), ("512k", 512000),
    ("2 GB", 2 * 10**9), ("1KiB", 1024),
])
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size
