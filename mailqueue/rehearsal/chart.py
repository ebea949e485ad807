"""The queue curve as a PNG: depth and deliveries over simulated time, windows shaded; with
mailbox probes, a band of mailbox access per store under the queue depth; and, where the
scenario delivers into mail servers, what they answered."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from mailqueue.rehearsal.moments import round_ends, round_rows
from mailqueue.rehearsal.probe_report import accesses
from mailqueue.rehearsal.probes import OUTCOMES
from mailqueue.rehearsal.runner import Observations
from mailqueue.timeparse import get_zone

# Mailbox access, in colours told apart with any colour vision (Okabe and Ito), node down
# and errors hatched as well.
ACCESS_STYLE = {
    "available": ("#009E73", "", "available"),
    "maintenance": ("#E69F00", "", "refused: maintenance"),
    "node-down": ("#D55E00", "////", "refused: node down"),
    "error": ("#999999", "xx", "error"),
}


def draw_chart(obs: Observations, rows: list[dict[str, Any]], path: Path,
               backend: list[dict[str, Any]] | None = None) -> None:
    """Queue depth (top) and recipients delivered per interval (below), events numbered;
    with probes, between them a band per store of what its probe users' logins got; with
    ``backend`` (the remote stores' replies per interval, as ``backend.csv`` holds them), a
    last panel of what the mail servers answered: accepted, deferred, bounced."""
    zone = get_zone(obs.scenario.timezone)
    when = [datetime.fromtimestamp(r["epoch"], zone) for r in rows]
    band = 0.3 + 0.35 * len(obs.probes.stores()) if obs.probes is not None else 0.0
    ratios = [3.0, *([band] if band else []), 2.0, *([2.0] if backend else [])]
    fig, axes = plt.subplots(len(ratios), 1, sharex=True, gridspec_kw={"height_ratios": ratios},
                             figsize=(12, 6.5 + 2.5 * bool(backend) + 1.3 * band))
    top, bottom = axes[0], axes[2 if band else 1]
    top.fill_between(when, [r["queue_depth"] for r in rows], step="post", color="#4c72b0",
                     alpha=0.35, linewidth=0)
    top.step(when, [r["queue_depth"] for r in rows], where="post", color="#4c72b0",
             label="queue depth (messages)")
    width = (obs.scenario.info.sample / 86400) * 0.9
    # A sample counts the deliveries since the one before: its bar ends at its time.
    bottom.bar(when, [r["delivered_in_interval"] for r in rows], width=-width, align="edge",
               color="#55a868", label="delivered per interval (recipients)")
    if band:
        _access(obs, axes[1], zone)
    if backend:
        _replies(obs, axes[-1], backend, zone, width)
    for axis in axes:
        if not band or axis is not axes[1]:  # the band shows the window in its own colours
            _windows(obs, axis, zone)
        axis.grid(True, alpha=0.3)
    _events(obs, top, axes, zone)
    top.set_ylabel("messages queued")
    bottom.set_ylabel(f"delivered / {int(obs.scenario.info.sample // 60)} min")
    shown = "queue depth, mailbox access and deliveries" if band else \
        "queue depth and deliveries"
    top.set_title(f"{obs.scenario.info.name}: {shown} ({obs.scenario.timezone})", pad=22)
    top.legend(loc="upper left", fontsize=9)
    axes[-1].xaxis.set_major_formatter(mdates.DateFormatter(  # type: ignore[no-untyped-call]
        "%a %d %b\n%H:%M", tz=zone))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _windows(obs: Observations, axis: Any, zone: Any) -> None:
    for index, window in enumerate(obs.windows):
        if window.started_at is None:
            continue
        end = window.ended_at or obs.finished_at
        axis.axvspan(datetime.fromtimestamp(window.started_at, zone),
                     datetime.fromtimestamp(end, zone), color="#c44e52", alpha=0.12,
                     label=f"window {window.name}" if index == 0 else None)
    for config in obs.scenario.file.windows:
        ended = next((w.ended_at for w in obs.windows if w.name == config.name), None)
        if ended is not None and abs(config.end_ts - ended) > 60:
            axis.axvline(datetime.fromtimestamp(config.end_ts, zone), color="#c44e52",
                         linestyle=":", linewidth=1.5, label="planned end")


def _replies(obs: Observations, axis: Any, backend: list[dict[str, Any]], zone: Any,
             width: float) -> None:
    """The mail servers' replies per interval, all remote stores together, stacked:
    accepted (a 2xx), deferred (a 4xx, no reply, or the node down), bounced (a 5xx)."""
    totals: dict[float, dict[str, int]] = {}
    for row in backend:
        slot = totals.setdefault(row["epoch"], {"accepted": 0, "deferred": 0, "bounced": 0})
        for outcome in slot:
            slot[outcome] += int(row[outcome])
    when = [datetime.fromtimestamp(at, zone) for at in sorted(totals)]
    below = [0] * len(when)
    for outcome, colour in (("accepted", "#55a868"), ("deferred", "#dd8452"),
                            ("bounced", "#c44e52")):
        values = [totals[at][outcome] for at in sorted(totals)]
        axis.bar(when, values, width=width, align="edge", bottom=below, color=colour,
                 label=f"{outcome}")
        below = [b + v for b, v in zip(below, values, strict=True)]
    stores = ", ".join(sorted({str(row["store"]) for row in backend}))
    axis.set_ylabel(f"replies / {int(obs.scenario.info.sample // 60)} min")
    axis.legend(loc="upper left", fontsize=9, title=f"mail servers of {stores}",
                title_fontsize=9)


def _access(obs: Observations, axis: Any, zone: Any) -> None:
    """A row per store: at each probe round, the share of its probe users whose login
    was available, refused for maintenance, refused with the node down, or failed; a
    circle where its users read mail again, a diamond where its queued mail had arrived."""
    log = obs.probes
    assert log is not None
    stores = log.stores()
    seen = {r.answer.outcome for r in log.results}
    until = round_ends(log)
    handles: list[Any] = []
    for outcome, (colour, hatch, label) in ACCESS_STYLE.items():
        lefts, widths, heights, bottoms = [], [], [], []
        for at, store, counts, _ in round_rows(log):
            total = sum(counts.values())
            below = sum(counts[k] for k in OUTCOMES[:OUTCOMES.index(outcome)])
            if counts[outcome]:
                lefts.append(datetime.fromtimestamp(at, zone))
                widths.append((until[at] - at) / 86400)
                heights.append(0.8 * counts[outcome] / total)
                bottoms.append(stores.index(store) + 0.1 + 0.8 * below / total)
        axis.bar(lefts, heights, width=widths, bottom=bottoms, align="edge", color=colour,
                 hatch=hatch, edgecolor="white" if hatch else colour, linewidth=0)
        if outcome != "error" or outcome in seen:  # the three states always, errors if any
            handles.append(Patch(facecolor=colour, hatch=hatch, edgecolor="white",
                                 label=label))
    for access in accesses(obs):
        row = stores.index(access.store) + 0.5
        for moment, marker in ((access.read_again, "o"), (access.mail_arrived, "D")):
            if moment is not None:
                axis.plot([datetime.fromtimestamp(moment, zone)], [row], marker=marker,
                          markersize=7, color="black", markerfacecolor="white",
                          linestyle="none", zorder=5)
    handles += [Line2D([], [], marker=marker, markersize=7, color="black",
                       markerfacecolor="white", linestyle="none", label=label)
                for marker, label in (("o", "users read mail again"),
                                      ("D", "their queued mail arrived"))]
    axis.set_ylim(len(stores), 0)
    axis.set_yticks([i + 0.5 for i in range(len(stores))], stores, fontsize=9)
    way = "IMAP logins" if log.via == "imap" else "access decision"
    axis.set_ylabel(f"mailbox access\n({way})", fontsize=9)
    axis.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=6,
                fontsize=8, frameon=False, borderaxespad=0.1, handlelength=1.5)


def _events(obs: Observations, top: Any, axes: Any, zone: Any) -> None:
    """A numbered dashed line per timeline event (the numbers match the timeline)."""
    events = [e for e in obs.timeline if e.kind in ("event", "problem")]
    above = top.get_xaxis_transform()  # x in data, y in axes fractions
    groups: dict[float, list[int]] = {}
    for number, entry in enumerate(events, start=1):
        groups.setdefault(entry.at, []).append(number)
    for at_ts, numbers in groups.items():
        at = datetime.fromtimestamp(at_ts, zone)
        for axis in axes:
            axis.axvline(at, color="#555555", linestyle="--", linewidth=0.6, alpha=0.6)
        x = mdates.date2num(at)  # type: ignore[no-untyped-call]
        top.annotate(",".join(map(str, numbers)), (x, 1.0), xycoords=above, xytext=(0, 3),
                     textcoords="offset points", ha="center", va="bottom", fontsize=8,
                     annotation_clip=False,
                     bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "#555555"})
