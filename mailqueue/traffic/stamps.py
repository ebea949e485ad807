"""Log times to POSIX seconds, one file at a time, in the order its lines come.

A syslog time (``Jun 26 17:00:01``, or ``Jun  6`` padded with a space, or Postfix's own
``maillog_file`` form ``Jun 06``) has no year and no zone: :class:`Timeline` is given the
year of the file's first line (:mod:`~mailqueue.traffic.reader` carries it back from the
newest file of a rotated set) and moves to the next year where the months turn over
from December to January; the wall time is read in the log's zone. In the hour that
daylight saving's end repeats, a time that steps back by about an hour is the hour's
second occurrence. RFC 3339 times (``2019-06-26T17:00:01.123-05:00``, rsyslog's high
precision form) carry their own offset; Exim's (``2019-06-26 17:00:01``) are local.

A time more than :data:`JUMP_TOLERANCE` seconds before the line before it is a clock jump
(a clock stepped back, a log of another period appended): counted, the largest kept, the
time used as the log says.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

MONTHS = {name: number for number, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
    start=1)}
# Lines of several processes written through one syslog daemon may come a moment out of
# order; a step back of up to this many seconds is not a jump.
JUMP_TOLERANCE = 2.0
_HOURS_CACHED = 100_000


class Timeline:
    """The times of one log file's lines, in file order (see the module's docstring)."""

    def __init__(self, zone: ZoneInfo, year: int | None = None) -> None:
        self.zone = zone
        self.year = year  # of the current line, for year-less times
        self.jumps = 0
        self.largest_jump = 0.0
        self.previous: float | None = None
        self._month: int | None = None
        self._hours: dict[tuple[int, int, int, int], tuple[float, float | None]] = {}
        self._second_pass: set[tuple[int, int, int, int]] = set()

    # --- the three forms ---------------------------------------------------------------

    def syslog(self, text: str) -> float:
        """``Jun 26 17:00:01`` (fractions of a second after it are ignored); ValueError
        if it is not a time."""
        month = MONTHS.get(text[:3])
        if month is None or self.year is None:
            raise ValueError(f"not a syslog time: {text!r}")
        day = int(text[4:6])
        hour, minute, second = int(text[7:9]), int(text[10:12]), int(text[13:15])
        return self._seen(self._local(self._year_for(month), month, day, hour, minute,
                                      second))

    def local(self, year: int, month: int, day: int, hour: int, minute: int,
              second: int) -> float:
        """A wall time in the log's zone with its year (Exim's, an RFC 3339 time without
        an offset)."""
        return self._seen(self._local(year, month, day, hour, minute, second))

    def absolute(self, ts: float) -> float:
        """A time that carried its own offset."""
        return self._seen(ts)

    # --- helpers -----------------------------------------------------------------------

    def _year_for(self, month: int) -> int:
        assert self.year is not None
        if self._month is not None:
            if month < self._month - 6:  # December, then January: a new year
                self.year += 1
            elif month > self._month + 6:  # a late line of the year before
                return self.year - 1
        self._month = month
        return self.year

    def _local(self, year: int, month: int, day: int, hour: int, minute: int,
               second: int) -> float:
        if not (0 <= minute < 60 and 0 <= second <= 60):
            raise ValueError("not a time of day")
        key = (year, month, day, hour)
        hours = self._hours.get(key)
        if hours is None:
            hours = self._hour(key)
        within = minute * 60 + second
        first, again = hours
        if again is None:
            return first + within
        # The hour daylight saving's end repeats: its second pass, once time steps back.
        if key in self._second_pass or (
                self.previous is not None and first + within < self.previous - JUMP_TOLERANCE
                and again + within >= self.previous - JUMP_TOLERANCE):
            self._second_pass.add(key)
            return again + within
        return first + within

    def _hour(self, key: tuple[int, int, int, int]) -> tuple[float, float | None]:
        moment = datetime(*key, tzinfo=self.zone)  # ValueError for 31 June, hour 24 ...
        first = moment.timestamp()
        again = moment.replace(fold=1).timestamp()
        if len(self._hours) >= _HOURS_CACHED:
            self._hours.clear()
        hours = (first, again if again != first else None)
        self._hours[key] = hours
        return hours

    def _seen(self, ts: float) -> float:
        if self.previous is not None and ts < self.previous - JUMP_TOLERANCE:
            self.jumps += 1
            self.largest_jump = max(self.largest_jump, self.previous - ts)
        self.previous = ts
        return ts


def iso_time(text: str, timeline: Timeline) -> float:
    """An RFC 3339 time (``2019-06-26T17:00:01.123456-05:00``, ``...+0000``, ``...Z``) or
    one without an offset (local); ValueError if it is not one."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        return timeline.local(moment.year, moment.month, moment.day, moment.hour,
                              moment.minute, moment.second)
    return timeline.absolute(moment.timestamp())


def exim_time(text: str, timeline: Timeline) -> float:
    """Exim's ``2019-06-26 17:00:01``, local, or with ``log_timezone`` its offset
    (``2019-06-26 17:00:01 -0500``); ValueError if it is not one."""
    if len(text) > 19:
        return timeline.absolute(datetime.strptime(text, "%Y-%m-%d %H:%M:%S %z").timestamp())
    return timeline.local(int(text[:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]),
                          int(text[14:16]), int(text[17:19]))


def month_day(text: str) -> tuple[int, int] | None:
    """The month and day of a syslog time, or None."""
    month = MONTHS.get(text[:3])
    if month is None or not text[4:6].strip().isdigit():
        return None
    return month, int(text[4:6])


def year_of_last(last: tuple[int, int], modified: datetime) -> int:
    """The year of a year-less line dated ``last`` (month, day) in a file last modified at
    ``modified`` (local): the latest year in which that date is not after the file's
    modification (a day of slack for a zone between)."""
    for year in range(modified.year, modified.year - 9, -1):
        try:
            dated = datetime(year, *last, tzinfo=modified.tzinfo)
        except ValueError:  # 29 February in a year without one
            continue
        if dated <= modified + timedelta(days=1):
            return year
    return modified.year - 1
