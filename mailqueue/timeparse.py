"""Parsing of the times, durations and sizes users write in config files and on the CLI.

Every value a user gives is checked against a sane range before anything uses or stores
it: a time lies between 1970 and 9999 (UTC), a duration is at most 100 years, a size at
most 8 EiB. The formatters never raise, whatever float they are given (a row stored by an
older version, or by hand, must not break a read command).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mailqueue.errors import TimeParseError

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
               "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}

MAX_DURATION = 36500 * 86400.0  # 100 years
DURATION_RANGE = "a duration is at most 100 years (36500d)"
MIN_TIME = 0.0  # 1970-01-01T00:00:00Z
MAX_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
TIME_RANGE = "use a time between 1970-01-01 and 9999-12-31 (UTC)"
MAX_SIZE = 2**63 - 1  # what a database's 64-bit integer holds
SIZE_RANGE = "a size is at most 8 EiB"


def check_duration(seconds: float, value: object = None) -> float:
    """``seconds`` if it is a duration mailqueue can use; TimeParseError naming the range."""
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_DURATION:
        shown = seconds if value is None else value
        raise TimeParseError(f"duration {shown!r} is out of range: {DURATION_RANGE}")
    return seconds


def time_in_range(ts: float) -> bool:
    """Whether ``ts`` (POSIX seconds) lies between 1970 and the end of year 9999 (UTC)."""
    return math.isfinite(ts) and MIN_TIME <= ts <= MAX_TIME


def check_time(ts: float, value: object = None) -> float:
    """``ts`` if it is a time mailqueue can store and show; TimeParseError naming the range."""
    if not time_in_range(ts):
        raise TimeParseError(f"time {format_time(ts) if value is None else value!r} is out "
                             f"of range: {TIME_RANGE}")
    return ts


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``90``, ``"90s"``, ``"1h30m"``, ``"2d"``, ``"500ms"``; at most 100 years."""
    if isinstance(value, bool):
        raise TimeParseError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise TimeParseError(f"a duration cannot be negative: {value!r}")
        return check_duration(float(value), value)
    text = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return check_duration(float(text), value)
    pos, total = 0, 0.0
    compact = text.replace(" ", "")
    for match in _DURATION_RE.finditer(compact):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
        pos = match.end()
    if pos != len(compact) or not compact:
        raise TimeParseError(
            f"not a duration: {value!r} (use seconds or units like 90s, 15m, 1h30m, 2d)"
        )
    return check_duration(total, value)


def format_duration(seconds: float) -> str:
    """A short human form: ``1d2h``, ``15m``, ``42s``, ``0.3s`` (any float: ``-5s``,
    ``3e+06d``, ``forever``)."""
    if math.isnan(seconds):
        return "unknown"
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if math.isinf(seconds):
        return "forever"
    if seconds > MAX_TIME:  # longer than any span between two times mailqueue takes
        return f"{seconds / 86400:.3g}d"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 and seconds % 1 else f"{int(seconds)}s"
    parts = []
    rest = round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
        if len(parts) == 2:
            break
    return "".join(parts)


def parse_size(value: str | int) -> int:
    """Bytes from ``1048576``, ``"10MiB"``, ``"512k"``, ``"2 GB"``; at most 8 EiB."""
    if isinstance(value, bool):
        raise TimeParseError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise TimeParseError(f"a size cannot be negative: {value}")
        size = value
    else:
        match = _SIZE_RE.match(value)
        if not match:
            raise TimeParseError(f"not a size: {value!r} (use bytes or units like 512KiB, "
                                 "10MB)")
        unit = (match.group(2) or "").lower().rstrip("b")
        number = float(match.group(1)) * _SIZE_UNITS[unit]
        size = int(number) if math.isfinite(number) else MAX_SIZE + 1
    if size > MAX_SIZE:
        raise TimeParseError(f"size {value!r} is out of range: {SIZE_RANGE}")
    return size


def get_zone(name: str) -> ZoneInfo:
    """An IANA zone such as ``America/Chicago``."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise TimeParseError(f"unknown time zone {name!r} (use an IANA name like America/Chicago)"
                             ) from exc


def parse_time(value: str | datetime, timezone: str | None = None,
               now: float | None = None) -> float:
    """POSIX seconds from an RFC 3339 time, or a local time plus an IANA zone.

    ``"2019-06-26T17:00:00-05:00"`` carries its offset. ``"2019-06-26 17:00"`` needs
    ``timezone``; it is resolved with the zone's rules for that date (so daylight saving
    is honoured; a time that falls in a DST gap is shifted forward, an ambiguous one takes
    the first occurrence). With ``now`` given, ``"now"`` and ``"+2h"`` are relative to it.
    The time must lie between 1970 and 9999 (UTC).
    """
    if isinstance(value, datetime):
        moment = value
    else:
        text = value.strip()
        if now is not None and text.lower() == "now":
            return now
        if now is not None and text.startswith("+"):
            return check_time(now + parse_duration(text[1:]), value)
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError as exc:
            raise TimeParseError(
                f"not a time: {value!r} (use RFC 3339 like 2019-06-26T17:00:00-05:00, "
                "or a local time like 2019-06-26 17:00 with a timezone)"
            ) from exc
    if moment.tzinfo is None:
        if timezone is None:
            raise TimeParseError(
                f"time {value!r} has no UTC offset: add one (2019-06-26T17:00:00-05:00) "
                "or set timezone (e.g. America/Chicago)"
            )
        zone = get_zone(timezone)
        # PEP 495 fold=0: a wall time in a DST gap maps forward by the gap, an ambiguous
        # one to its first occurrence.
        moment = moment.replace(tzinfo=zone)
    try:
        ts = moment.timestamp()
    except (OverflowError, ValueError, OSError):
        ts = math.nan
    return check_time(ts, value)


def format_time(ts: float, timezone: str | None = None) -> str:
    """RFC 3339 text of ``ts`` in ``timezone`` (UTC when absent, or when the zone is unknown
    to this system); ``(time out of range: ...)`` for a float no calendar date has."""
    try:
        zone = get_zone(timezone) if timezone else UTC
    except TimeParseError:
        zone = UTC
    try:
        return datetime.fromtimestamp(ts, tz=zone).isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):
        return f"(time out of range: {ts:.6g})"
