"""A traffic profile as a PNG: arrivals over the logs' span, sizes, recipients per message
(``mailqueue traffic show --chart``)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.dates as mdates
import matplotlib.pyplot as plt

from mailqueue.timeparse import format_duration, get_zone
from mailqueue.traffic.profile import TrafficProfile
from mailqueue.traffic.show import human_size

BARS = 400  # at most this many bars of arrivals
_STEPS = (1, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400)


def binned(profile: TrafficProfile, bars: int = BARS) -> tuple[int, list[float], list[int]]:
    """Arrivals summed into at most ``bars`` bins of a round length (a multiple of the
    profile's interval): ``(seconds, starts, counts)``."""
    counts = profile.arrivals.counts
    span = len(counts) * profile.resolution
    width = next((step for step in _STEPS if step >= profile.resolution and
                  step % profile.resolution == 0 and span / step <= bars), _STEPS[-1])
    per = max(1, width // profile.resolution)
    starts = [profile.interval_start(i) for i in range(0, len(counts), per)]
    return width, starts, [sum(counts[i:i + per]) for i in range(0, len(counts), per)]


def draw_profile(profile: TrafficProfile, path: Path, title: str = "") -> None:
    """Arrivals over the logs' span (in at most :data:`BARS` bars), the size histogram and
    recipients per message."""
    zone = get_zone(profile.timezone)
    fig = plt.figure(figsize=(12, 7.5))
    grid = fig.add_gridspec(2, 2, height_ratios=[3, 2])
    top: Any = fig.add_subplot(grid[0, :])
    width, starts, counts = binned(profile)
    when = [datetime.fromtimestamp(s, zone) for s in starts]
    top.bar(when, counts, width=width / 86400 * 0.9, align="edge", color="#4c72b0")
    top.set_ylabel(f"messages per {format_duration(width)}")
    top.grid(True, alpha=0.3)
    span = len(profile.arrivals.counts) * profile.resolution
    top.xaxis.set_major_formatter(mdates.DateFormatter(  # type: ignore[no-untyped-call]
        "%a %d %b\n%H:%M" if span > 6 * 3600 else "%H:%M:%S", tz=zone))
    top.set_xlim(when[0], datetime.fromtimestamp(starts[-1] + width, zone))
    top.set_title(f"{title or 'traffic profile'}: {profile.totals.messages:,} messages "
                  f"({profile.timezone})")
    _sizes(fig.add_subplot(grid[1, 0]), profile)
    _recipients(fig.add_subplot(grid[1, 1]), profile)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sizes(axis: Any, profile: TrafficProfile) -> None:
    lows = [max(low, 1) for low, _, _ in profile.sizes]
    widths = [high - max(low, 1) for low, high, _ in profile.sizes]
    axis.bar(lows, [n for _, _, n in profile.sizes], width=widths, align="edge",
             color="#55a868")
    axis.set_xscale("log", base=2)
    ticks = [2**p for p in range(8, 31, 2)
             if lows and min(lows) / 2 <= 2**p <= max(lows) * 4]
    axis.set_xticks(ticks, [human_size(t) for t in ticks], fontsize=8)
    axis.set_xlabel("message size")
    axis.set_ylabel("messages")
    axis.grid(True, alpha=0.3)


def _recipients(axis: Any, profile: TrafficProfile) -> None:
    counts = profile.recipient_counts()
    shown = [n for n in sorted(counts) if n <= 10]
    more = sum(c for n, c in counts.items() if n > 10)
    labels = [str(n) for n in shown] + (["> 10"] if more else [])
    values = [counts[n] for n in shown] + ([more] if more else [])
    axis.bar(labels, values, color="#8172b3")
    axis.set_xlabel("recipients per message")
    axis.set_ylabel("messages")
    if values and max(values) > 50 * max(1, min(values)):
        axis.set_yscale("log")
    axis.grid(True, alpha=0.3, axis="y")
    axis.set_ylim(bottom=0.8 if axis.get_yscale() == "log" else 0)
