"""A traffic profile's shape in a few lines: ``mailqueue traffic show``.

Totals and rates, the busiest hour and minute, a size histogram (one row per doubling),
recipients per message, the domain mixes and what the log lines were.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

from mailqueue.timeparse import format_duration, get_zone
from mailqueue.traffic.profile import UNMAPPED, TrafficProfile

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_size(size: float) -> str:
    """``512 B``, ``12 KiB``, ``1.5 MiB``."""
    for unit in _UNITS:
        if size < 1024 or unit == _UNITS[-1]:
            return f"{size:.0f} {unit}" if size >= 10 or unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.0f} TiB"  # pragma: no cover - the loop returns


def busiest(profile: TrafficProfile, seconds: int) -> tuple[float, int]:
    """The start and message count of the busiest ``seconds``-long stretch, aligned to
    multiples of ``seconds`` in the profile's zone (an hour: 10:00 to 11:00)."""
    totals: dict[float, int] = {}
    zone = get_zone(profile.timezone)
    for index, count in enumerate(profile.arrivals.counts):
        if count:
            at = profile.interval_start(index)
            offset = datetime.fromtimestamp(at, zone).utcoffset()
            shift = offset.total_seconds() if offset is not None else 0.0
            start = (at + shift) // seconds * seconds - shift
            totals[start] = totals.get(start, 0) + count
    start, count = max(totals.items(), key=lambda item: (item[1], -item[0]))
    return start, count


def size_quantile(sizes: Sequence[Sequence[int]], share: float) -> float:
    """A size below which ``share`` of the messages lie (a bin's geometric middle)."""
    total = sum(row[2] for row in sizes)
    seen = 0
    for low, high, count in sizes:
        seen += count
        if seen >= share * total:
            return math.sqrt(max(low, 1) * high)
    return float(sizes[-1][1]) if sizes else 0.0


def by_doubling(sizes: Sequence[Sequence[int]]) -> list[tuple[int, int, int]]:
    """The fine size bins summed per doubling: ``(low, high, count)`` from 1 KiB up (all
    smaller sizes in the first row)."""
    rows: dict[int, int] = {}
    for low, _, count in sizes:
        power = max(10, int(math.log2(max(low, 1))))
        rows[power] = rows.get(power, 0) + count
    return [(0 if p == 10 else 2**p, 2 ** (p + 1), rows[p]) for p in sorted(rows)]


def _when(profile: TrafficProfile, ts: float, fmt: str = "%a %Y-%m-%d %H:%M") -> str:
    return datetime.fromtimestamp(ts, get_zone(profile.timezone)).strftime(fmt)


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _mix(counts: dict[str, int], other: int, whole: int, limit: int = 8) -> str:
    items = sorted(counts.items(), key=lambda item: -item[1])
    shown = [f"{name} {_share(n, whole)}" for name, n in items[:limit]]
    rest = other + sum(n for _, n in items[limit:])
    if rest:
        shown.append(f"others {_share(rest, whole)}")
    return ", ".join(shown) or "-"


def show_text(profile: TrafficProfile, name: str = "") -> str:
    """The profile's shape as aligned lines (what ``mailqueue traffic show`` prints)."""
    totals = profile.totals
    span = max(profile.span.end_ts - profile.span.start_ts, 1.0)
    hours = max(span / 3600, 1.0)
    formats = sorted({s.format for s in profile.sources if s.format})
    rows = [
        ("profile", f"{name or 'profile'}: {' and '.join(formats) or 'mail'} logs, "
                    f"{len(profile.sources)} file(s), times in {profile.timezone}"),
        ("span", f"{_when(profile, profile.span.start_ts)} to "
                 f"{_when(profile, profile.span.end_ts)} ({format_duration(span)})"),
        ("messages", f"{totals.messages:,} ({totals.messages / hours:,.1f} an hour on "
                     "average)"),
        ("recipients", f"{totals.recipients:,} ({totals.recipients / totals.messages:.2f} a "
                       "message)" if totals.messages else "0"),
        ("bytes", f"{human_size(totals.bytes)} (median message ≈ "
                  f"{human_size(size_quantile(profile.sizes, 0.5))}, 95% below ≈ "
                  f"{human_size(size_quantile(profile.sizes, 0.95))})"),
    ]
    hour_at, hour_count = busiest(profile, 3600)
    average = totals.messages / hours
    rows.append(("busiest hour", f"{_when(profile, hour_at)}-"
                                 f"{_when(profile, hour_at + 3600, '%H:%M')}: "
                                 f"{hour_count:,} messages "
                                 f"({hour_count / average:.1f}x the average hour)"))
    minute_at, minute_count = busiest(profile, max(60, profile.resolution))
    rows.append(("busiest minute" if profile.resolution <= 60 else "busiest interval",
                 f"{_when(profile, minute_at)}: {minute_count:,} messages"))
    rows.append(("per message", _recipients(profile.recipient_counts(), totals.messages)))
    rows.append(("to domains", _mix(profile.recipient_domains,
                                    profile.recipient_domains_other, totals.recipients)))
    if profile.stores is not None:
        stores = {k: v for k, v in profile.stores.items() if v or k != UNMAPPED}
        rows.append(("stores", _mix(stores, 0, totals.recipients)))
    rows.append(("from domains", _mix(profile.sender_domains, profile.sender_domains_other,
                                      totals.messages)))
    parse = profile.parse
    jumps = f"{parse.clock_jumps:,} clock jump(s)"
    if parse.clock_jumps:
        jumps += f" (largest {format_duration(parse.largest_clock_jump_seconds)} back)"
    rows.append(("lines", f"{parse.lines:,} read: {parse.mail_lines:,} mail, "
                          f"{parse.other_programs:,} other programs, {parse.unknown:,} "
                          f"unknown, {parse.truncated:,} cut short; {jumps}"))
    rows.append(("not arrivals", f"{parse.rejected:,} rejected, {parse.generated:,} made by "
                                 f"the server, {parse.reinjected:,} back from a content "
                                 f"filter, {parse.incomplete:,} never queued, "
                                 f"{parse.before_log:,} received before the logs, "
                                 f"{parse.outside:,} outside --since/--until"))
    text = "\n".join(f"{label:>14}: {value}" for label, value in rows)
    return text + "\n" + size_table(profile) + "\n"


def _recipients(counts: dict[int, int], messages: int) -> str:
    """``1: 82.0%  2: 12.0% ...``: the first six counts, the rest together."""
    ordered = sorted(counts)
    shown = [f"{n}: {_share(counts[n], messages)}" for n in ordered[:6]]
    if len(ordered) > 6:
        shown.append(f"more: {_share(sum(counts[n] for n in ordered[6:]), messages)}")
    return "  ".join(shown)


def size_table(profile: TrafficProfile, width: int = 40) -> str:
    """The size histogram, one row per doubling, with a bar."""
    rows = by_doubling(profile.sizes)
    if not rows:
        return ""
    most = max(count for _, _, count in rows)
    lines = [f"{'sizes':>14}:"]
    for low, high, count in rows:
        label = f"< {human_size(high)}" if not low else \
            f"{human_size(low)} - {human_size(high)}"
        bar = "#" * max(1 if count else 0, round(width * count / most))
        lines.append(f"{label:>22} {_share(count, profile.totals.messages):>6}  {bar}")
    return "\n".join(lines)
