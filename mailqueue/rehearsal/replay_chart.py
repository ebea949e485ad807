"""``traffic.png``: a replay against its traffic profile — the arrival curves over each
other, and sizes and recipients per message side by side."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.dates as mdates
import matplotlib.pyplot as plt

from mailqueue.rehearsal.runner import Observations
from mailqueue.timeparse import format_duration, get_zone
from mailqueue.traffic.show import by_doubling, human_size


def draw_replay(obs: Observations, rows: list[dict[str, Any]], path: Path) -> None:
    """Messages per interval the profile puts there (times the scale) as a line, those the
    server acknowledged as bars; below, the share of messages by size (per doubling) and
    by recipient count, profile against replay."""
    replay = obs.scenario.replay
    assert replay is not None
    zone = get_zone(obs.scenario.timezone)
    fig = plt.figure(figsize=(12, 7.5))
    grid = fig.add_gridspec(2, 2, height_ratios=[3, 2])
    top: Any = fig.add_subplot(grid[0, :])
    when = [datetime.fromtimestamp(r["epoch"], zone) for r in rows]
    width = obs.scenario.info.sample / 86400
    top.bar(when, [r["accepted"] for r in rows], width=width * 0.9, align="edge",
            color="#4c72b0", alpha=0.7, label="replayed: acknowledged per interval")
    top.step(when, [r["expected"] for r in rows], where="post", color="#c44e52",
             linewidth=1.4, label="profile, times the scale")
    top.set_ylabel(f"messages / {format_duration(obs.scenario.info.sample)}")
    top.grid(True, alpha=0.3)
    # The running totals: a faithful replay's stays on the profile's.
    total: Any = top.twinx()
    total.plot(when, list(itertools.accumulate(r["expected"] for r in rows)), color="#c44e52",
               linestyle="--", linewidth=1, label="profile, running total")
    total.plot(when, list(itertools.accumulate(r["accepted"] for r in rows)), color="#4c72b0",
               linestyle="--", linewidth=1, label="replayed, running total")
    total.set_ylabel("messages so far")
    total.set_ylim(bottom=0)
    handles = top.get_legend_handles_labels()
    more = total.get_legend_handles_labels()
    top.legend(handles[0] + more[0], handles[1] + more[1], loc="upper left", fontsize=9)
    span = obs.scenario.end - obs.scenario.start
    top.xaxis.set_major_formatter(mdates.DateFormatter(  # type: ignore[no-untyped-call]
        "%a %d %b\n%H:%M" if span > 6 * 3600 else "%H:%M:%S", tz=zone))
    top.set_title(f"{obs.scenario.info.name}: traffic replayed from {Path(replay.path).name} "
                  f"({obs.scenario.timezone})")
    plan = obs.sender.plan if obs.sender else []
    _sizes(fig.add_subplot(grid[1, 0]), replay.profile.sizes, [p.size for p in plan])
    counts = Counter(len(p.recipients) for p in plan)
    _recipients(fig.add_subplot(grid[1, 1]), replay.profile.recipient_counts(), counts)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _shares(counts: dict[Any, int]) -> dict[Any, float]:
    total = sum(counts.values()) or 1
    return {key: n / total for key, n in counts.items()}


def _sizes(axis: Any, profile_sizes: list[tuple[int, int, int]], replayed: list[int]) -> None:
    profile = {low: n for low, _, n in by_doubling(profile_sizes)}
    sent: Counter[int] = Counter()
    for size in replayed:
        power = max(10, int(math.log2(max(size, 1))))
        sent[0 if power == 10 else 2**power] += 1
    lows = sorted(set(profile) | set(sent))
    _paired(axis, [("< 2 KiB" if not low else human_size(low)) for low in lows],
            [_shares(profile).get(low, 0.0) for low in lows],
            [_shares(dict(sent)).get(low, 0.0) for low in lows])
    axis.set_xlabel("message size (from)")


def _recipients(axis: Any, profile: dict[int, int], replayed: Counter[int]) -> None:
    shown = sorted(n for n in set(profile) | set(replayed) if n <= 10)
    more = any(n > 10 for n in set(profile) | set(replayed))
    labels = [str(n) for n in shown] + (["> 10"] if more else [])
    ours, theirs = _shares(profile), _shares(dict(replayed))
    first = [ours.get(n, 0.0) for n in shown] + \
        ([sum(v for n, v in ours.items() if n > 10)] if more else [])
    second = [theirs.get(n, 0.0) for n in shown] + \
        ([sum(v for n, v in theirs.items() if n > 10)] if more else [])
    _paired(axis, labels, first, second)
    axis.set_xlabel("recipients per message")


def _paired(axis: Any, labels: list[str], profile: list[float], replayed: list[float]) -> None:
    places = range(len(labels))
    axis.bar([p - 0.2 for p in places], profile, width=0.4, color="#c44e52", alpha=0.8,
             label="profile")
    axis.bar([p + 0.2 for p in places], replayed, width=0.4, color="#4c72b0", alpha=0.8,
             label="replayed")
    axis.set_xticks(list(places), labels, fontsize=8, rotation=45 if len(labels) > 8 else 0)
    axis.set_ylabel("share of messages")
    axis.grid(True, alpha=0.3, axis="y")
    axis.legend(fontsize=8)
