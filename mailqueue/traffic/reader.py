"""Mail logs in, a traffic profile out: :class:`LogReader`.

Before reading, each file's first lines are looked at: a file with binary data, or whose
first lines are in no log form at all, is not a mail log (one error, naming it). For
year-less syslog times each file's first and last dates are looked at too, and the year
is carried back through a rotated set from its newest file's last line: the year given
(``--year``), or the latest year in which that date is not after the file's modification
time. Then the files are read in order, one line at a time: each group of files (one
server's rotated set) has its own followers, as its queue ids are its own.

Lines of other programs are counted and skipped; so are lines in no known form
(``unknown``) unless ``strict``, which makes the first one an error naming the file and
the line. A line cut short (the last line of a file being written) is counted and
skipped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from mailqueue.errors import MailLogError
from mailqueue.timeparse import format_time, get_zone
from mailqueue.traffic.exim import EximFollower
from mailqueue.traffic.lines import classify
from mailqueue.traffic.postfix import Arrival, PostfixFollower
from mailqueue.traffic.profile import Parse, ProfileBuilder, Source, TrafficProfile
from mailqueue.traffic.sources import (
    LogFile,
    Truncated,
    head_lines,
    order_logs,
    read_lines,
    tail_lines,
)
from mailqueue.traffic.stamps import Timeline, exim_time, iso_time, month_day, year_of_last

Progress = Callable[[int], None]  # bytes of the files read since the last call


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """How to read the logs."""

    timezone: str  # the zone of times without an offset (syslog's, Exim's)
    resolution: int = 60  # seconds per arrival interval
    strict: bool = False
    year: int | None = None  # of the newest file's last line, for year-less times
    since: float | None = None
    until: float | None = None
    stores: Mapping[str, str] | None = None  # recipient domain -> configured store


@dataclasses.dataclass
class _Counts:
    lines: int = 0
    mail_lines: int = 0
    other: int = 0
    unknown: int = 0
    truncated: int = 0
    postfix: int = 0
    exim: int = 0
    first: float | None = None
    last: float | None = None


Edge = tuple[int | None, int, int]  # (year if the line has one, month, day)


def _edge(line: bytes) -> Edge | None:
    kind, form, stamp, _, _ = classify(line.decode("utf-8", "replace").rstrip("\r\n"))
    if kind == "unknown" or not form:
        return None
    if form == "syslog":
        found = month_day(stamp)
        return None if found is None else (None, *found)
    return int(stamp[:4]), int(stamp[5:7]), int(stamp[8:10])


class LogReader:
    """Reads a set of logs (see the module's docstring). Construction looks at every
    file's first lines; :attr:`total_bytes` is what :meth:`run` reports progress
    against."""

    def __init__(self, paths: Sequence[Path], options: ReadOptions) -> None:
        if not paths:
            raise MailLogError("give at least one log file")
        self.options = options
        self.zone: ZoneInfo = get_zone(options.timezone)
        self.groups = order_logs(paths)
        self._firsts: dict[Path, Edge | None] = {}
        for group in self.groups:
            for log in group:
                self._firsts[log.path] = self._sniff(log)
        # Compressed year-less files are read through once more, for their last line.
        self.total_bytes = sum(log.size + (log.size if self._needs_tail(log) else 0)
                               for group in self.groups for log in group)

    def _needs_tail(self, log: LogFile) -> bool:
        first = self._firsts[log.path]
        return bool(log.compression) and first is not None and first[0] is None

    def _sniff(self, log: LogFile) -> Edge | None:
        """The first line's date; MailLogError if the file is not a log."""
        lines = head_lines(log)
        if any(b"\x00" in line for line in lines):
            raise MailLogError(f"{log.name}: not a mail log (binary data)")
        shown = [line for line in lines if line.strip() and line.endswith(b"\n")]
        edges = [_edge(line) for line in shown]
        if shown and not any(edges):
            sample = shown[0].decode("utf-8", "replace").strip()[:60]
            raise MailLogError(f"{log.name}: not a mail log: its first lines are not syslog, "
                               f"Postfix or Exim log lines (line 1: {sample!r})")
        return next((edge for edge in edges if edge is not None), None)

    # --- the years of year-less files -----------------------------------------------------

    def _years(self, group: list[LogFile], progress: Progress | None) -> dict[Path, int]:
        """The year of each year-less file's first line, carried back from the newest."""
        years: dict[Path, int] = {}
        following: tuple[int, tuple[int, int]] | None = None
        for log in reversed(group):
            first = self._firsts[log.path]
            if first is None:
                continue
            if first[0] is not None:  # its times carry their year
                following = (first[0], (first[1], first[2]))
                continue
            last = self._last_edge(log, progress) or first
            last_year = last[0] if last[0] is not None else \
                self._year_before(last[1:], following) if following is not None else \
                self._anchor(log, last[1:])
            first_year = last_year - (1 if first[1:] > last[1:] else 0)
            years[log.path] = first_year
            following = (first_year, (first[1], first[2]))
        return years

    def _last_edge(self, log: LogFile, progress: Progress | None) -> Edge | None:
        lines = tail_lines(log, progress if log.compression else None)
        return next((edge for line in reversed(lines)
                     if line.endswith(b"\n") and (edge := _edge(line)) is not None), None)

    @staticmethod
    def _year_before(last: tuple[int, int], following: tuple[int, tuple[int, int]]) -> int:
        """The year of a file's last line, from the next file's first line."""
        year, first = following
        return year - 1 if last > first else year

    def _anchor(self, log: LogFile, last: tuple[int, int]) -> int:
        if self.options.year is not None:
            return self.options.year
        return year_of_last(last, datetime.fromtimestamp(log.mtime, self.zone))

    # --- reading ----------------------------------------------------------------------

    def run(self, progress: Progress | None = None) -> TrafficProfile:
        """Read every file; the profile. MailLogError for a file that cannot be read, for
        logs without an accepted message, or (strict) for a line in no known form;
        ProfileError for a span too long for the resolution."""
        options = self.options
        builder = ProfileBuilder(options.timezone, options.resolution, options.stores,
                                 options.since, options.until)
        total = _Counts()
        sources: list[Source] = []
        tallies = []
        jumps, largest = 0, 0.0
        for group in self.groups:
            years = self._years(group, progress)
            postfix = PostfixFollower(builder_sink(builder))
            exim = EximFollower(builder_sink(builder))
            for log in group:
                timeline = Timeline(self.zone, years.get(log.path))
                counts = self._read(log, timeline, postfix, exim, builder, progress)
                sources.append(self._source(log, counts))
                _add(total, counts)
                jumps += timeline.jumps
                largest = max(largest, timeline.largest_jump)
            postfix.finish()
            exim.finish()
            tallies += [postfix.tally, exim.tally]
        names = ", ".join(str(log.path) for group in self.groups for log in group)
        if not total.mail_lines:
            raise MailLogError(f"no Postfix or Exim lines in {names} ({total.lines} lines: "
                               f"{total.other} from other programs, {total.unknown} in no "
                               "log form)")
        if not builder.messages:
            rejected = sum(t.rejected for t in tallies)
            raise MailLogError(f"no accepted messages in {names} ({total.mail_lines} "
                               f"Postfix or Exim lines, {rejected} rejected, "
                               f"{builder.outside} outside --since/--until)")
        parse = Parse(lines=total.lines, mail_lines=total.mail_lines,
                      other_programs=total.other, unknown=total.unknown,
                      truncated=total.truncated, clock_jumps=jumps,
                      largest_clock_jump_seconds=round(largest, 3),
                      rejected=sum(t.rejected for t in tallies),
                      generated=sum(t.generated for t in tallies),
                      reinjected=sum(t.reinjected for t in tallies),
                      incomplete=sum(t.incomplete for t in tallies),
                      before_log=sum(t.before_log for t in tallies))
        return builder.build(sources, parse)

    def _read(self, log: LogFile, timeline: Timeline, postfix: PostfixFollower,
              exim: EximFollower, builder: ProfileBuilder, progress: Progress | None
              ) -> _Counts:
        # The loop every line goes through: locals, and the time worked out once a second.
        counts = _Counts()
        last_stamp, last_ts = "", 0.0
        number = other = postfix_lines = exim_lines = 0
        try:
            for number, raw in enumerate(read_lines(log, progress), start=1):
                if not raw.endswith(b"\n"):
                    counts.truncated += 1
                    continue
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                kind, form, stamp, program, text = classify(line)
                if kind == "other":
                    other += 1
                    continue
                if kind == "unknown":
                    if line.strip():
                        self._unknown(log, number, line, counts, "not a Postfix or Exim "
                                      "log line")
                    continue
                if stamp != last_stamp:
                    try:
                        last_ts = _time(form, stamp, timeline)
                    except ValueError:
                        self._unknown(log, number, line, counts, "not a time")
                        continue
                    last_stamp = stamp
                    builder.seen(last_ts)
                    if counts.first is None:
                        counts.first = last_ts
                if kind == "postfix":
                    ok = postfix.line(last_ts, program, text)
                    postfix_lines += ok
                else:
                    ok = exim.line(last_ts, text)
                    exim_lines += ok
                if not ok:
                    self._unknown(log, number, line, counts, f"a {kind.capitalize()} line "
                                  "without the fields it should have")
        except Truncated:
            counts.truncated += 1
        counts.lines, counts.other = number, other
        counts.postfix, counts.exim = postfix_lines, exim_lines
        counts.mail_lines = postfix_lines + exim_lines
        counts.last = last_ts if counts.first is not None else None
        return counts

    def _unknown(self, log: LogFile, number: int, line: str, counts: _Counts,
                 what: str) -> None:
        if self.options.strict:
            shown = line if len(line) <= 80 else line[:77] + "..."
            raise MailLogError(f"{log.name}:{number}: {what}: {shown!r} (--strict; without "
                               "it such lines are counted and skipped)")
        counts.unknown += 1

    def _source(self, log: LogFile, counts: _Counts) -> Source:
        kinds = [k for k in ("postfix", "exim") if getattr(counts, k)]
        zone = self.options.timezone
        return Source(file=str(log.path), format="+".join(kinds), lines=counts.lines,
                      mail_lines=counts.mail_lines,
                      first=None if counts.first is None else format_time(counts.first, zone),
                      last=None if counts.last is None else format_time(counts.last, zone))


def _time(form: str, stamp: str, timeline: Timeline) -> float:
    if form == "syslog":
        return timeline.syslog(stamp)
    if form == "iso":
        return iso_time(stamp, timeline)
    return exim_time(stamp, timeline)


def builder_sink(builder: ProfileBuilder) -> Callable[[Arrival], None]:
    def emit(arrival: Arrival) -> None:
        builder.add(arrival.at, arrival.size, arrival.domains, arrival.sender_domain)
    return emit


def _add(total: _Counts, counts: _Counts) -> None:
    for field in ("lines", "mail_lines", "other", "unknown", "truncated", "postfix", "exim"):
        setattr(total, field, getattr(total, field) + getattr(counts, field))


def profile_logs(paths: Sequence[Path], options: ReadOptions,
                 progress: Progress | None = None) -> TrafficProfile:
    """Read ``paths`` into a profile (see :class:`LogReader`)."""
    return LogReader(paths, options).run(progress)
