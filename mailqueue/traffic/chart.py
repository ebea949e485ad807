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

from mailqueue.timeparse import get_zone
from mailqueue.traffic.profile import TrafficProfile
from mailqueue.traffic.show import human_size


def hourly(profile: TrafficProfile) -> tuple[list[float], list[int]]:
    """Arrivals summed per hour (UTC-aligned hours; the zones used are whole hours)."""
    totals: dict[float, int] = {}
    for index, count in enumerate(profile.arrivals.counts):
        hour = profile.interval_start(index) // 3600 * 3600
        totals[hour] = totals.get(hour, 0) + count
    starts = sorted(totals)
    return starts, [totals[s] for s in starts]


def draw_profile(profile: TrafficProfile, path: Path, title: str = "") -> None:
    """Arrivals per hour (per interval faint behind, when finer), the size histogram and
    recipients per message."""
    zone = get_zone(profile.timezone)
    fig = plt.figure(figsize=(12, 7.5))
    grid = fig.add_gridspec(2, 2, height_ratios=[3, 2])
    top: Any = fig.add_subplot(grid[0, :])
    starts, counts = hourly(profile)
    when = [datetime.fromtimestamp(s, zone) for s in starts]
    top.bar(when, counts, width=1 / 24, align="edge", color="#4c72b0", alpha=0.8,
            label="messages per hour")
    if profile.resolution < 3600:
        fine = [datetime.fromtimestamp(profile.interval_start(i), zone)
                for i in range(len(profile.arrivals.counts))]
        per_hour = 3600 / profile.resolution
        top.plot(fine, [c * per_hour for c in profile.arrivals.counts], color="#dd8452",
                 linewidth=0.5, alpha=0.6,
                 label=f"per {profile.resolution} s, as an hourly rate")
    top.set_ylabel("messages per hour")
    top.grid(True, alpha=0.3)
    top.legend(loc="upper left", fontsize=9)
    top.xaxis.set_major_formatter(mdates.DateFormatter(  # type: ignore[no-untyped-call]
        "%a %d %b\n%H:%M", tz=zone))
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
