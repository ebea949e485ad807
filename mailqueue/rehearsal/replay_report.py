"""How faithful a replay was: the replayed stream against its traffic profile.

For a scenario whose traffic comes from a profile, the report adds ``traffic.csv`` (per
sample interval: the messages the profile puts there times the scale, the messages
planned, and those the server acknowledged), ``traffic.png`` (the arrival curves over
each other; sizes and recipients per message, profile against replay) and a ``replay``
section in the figures: counts, the correlation of the arrival curves, sizes and
recipients of both, the recipients per store.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mailqueue.rehearsal.profile import scale_text
from mailqueue.rehearsal.replay import expected, store_of
from mailqueue.rehearsal.runner import Observations
from mailqueue.timeparse import format_time
from mailqueue.traffic.show import human_size, size_quantile


def replay_rows(obs: Observations) -> list[dict[str, Any]]:
    """One row per sample interval: expected (profile times scale), planned, accepted."""
    scenario = obs.scenario
    interval = scenario.info.sample
    wanted = expected(scenario, interval)
    planned = [0] * len(wanted)
    accepted = [0] * len(wanted)
    last = len(wanted) - 1
    sender = obs.sender
    for item in sender.plan if sender else []:
        planned[min(int((item.at - scenario.start) // interval), last)] += 1
    for taken in sender.accepted if sender else []:
        slot = int((taken.at - scenario.start) // interval)
        accepted[min(max(slot, 0), last)] += 1
    return [{"time": scenario.time(scenario.start + i * interval),
             "epoch": round(scenario.start + i * interval, 1),
             "expected": round(wanted[i], 2), "planned": planned[i], "accepted": accepted[i]}
            for i in range(len(wanted))]


def correlation(first: Sequence[float], second: Sequence[float]) -> float | None:
    """Pearson's correlation of two series (None when either is flat)."""
    n = len(first)
    if n < 2:
        return None
    mean_a, mean_b = sum(first) / n, sum(second) / n
    cov = sum((a - mean_a) * (b - mean_b) for a, b in zip(first, second, strict=True))
    var_a = sum((a - mean_a) ** 2 for a in first)
    var_b = sum((b - mean_b) ** 2 for b in second)
    if not var_a or not var_b:
        return None
    return cov / math.sqrt(var_a * var_b)


def replay_figures(obs: Observations, rows: list[dict[str, Any]] | None = None
                   ) -> dict[str, Any] | None:
    """The ``replay`` figures (None for synthetic traffic)."""
    replay = obs.scenario.replay
    if replay is None:
        return None
    from mailqueue.rehearsal.replay import ArrivalMap

    rows = replay_rows(obs) if rows is None else rows
    plan = obs.sender.plan if obs.sender else []
    profile = replay.profile
    sizes = sorted(item.size for item in plan)
    counts = Counter(len(item.recipients) for item in plan)
    stores = store_of(obs.scenario)
    per_store = Counter(stores[r.rpartition("@")[2].lower()].name
                        for item in plan for r in item.recipients)
    recipients = sum(per_store.values())
    score = correlation([r["expected"] for r in rows], [r["accepted"] for r in rows])
    coverage = ArrivalMap(replay, obs.scenario.start, obs.scenario.end,
                          obs.scenario.timezone).coverage()
    return {
        "profile": replay.path, "scale": scale_text(replay.scale),
        "shift": "week" if replay.shift is None else
        format_time(replay.shift, profile.timezone),
        "coverage": round(coverage, 4),
        "expected_messages": round(sum(r["expected"] for r in rows), 1),
        "planned_messages": len(plan),
        "accepted_messages": len(obs.sender.accepted) if obs.sender else 0,
        "arrival_correlation": None if score is None else round(score, 3),
        "size_median": {"profile": round(size_quantile(profile.sizes, 0.5)),
                        "replayed": _quantile(sizes, 0.5)},
        "size_p95": {"profile": round(size_quantile(profile.sizes, 0.95)),
                     "replayed": _quantile(sizes, 0.95)},
        "recipients_per_message": {
            "profile": round(profile.totals.recipients / profile.totals.messages, 3),
            "replayed": round(sum(n * c for n, c in counts.items()) / len(plan), 3)
            if plan else None},
        "recipients_by_count": {str(n): counts[n] for n in sorted(counts)},
        "store_share": {name: round(n / recipients, 4) for name, n in sorted(per_store.items())}
        if recipients else {},
    }


def _quantile(ordered: Sequence[int], share: float) -> int | None:
    if not ordered:
        return None
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def replay_text(replay: dict[str, Any]) -> list[tuple[str, str]]:
    """The replay figures as rows of the printed figures."""
    score = replay["arrival_correlation"]
    sizes = (f"median {_size(replay['size_median']['replayed'])} (profile "
             f"{_size(replay['size_median']['profile'])}), 95% below "
             f"{_size(replay['size_p95']['replayed'])} (profile "
             f"{_size(replay['size_p95']['profile'])})")
    per = replay["recipients_per_message"]
    return [
        ("traffic", f"replayed from {Path(replay['profile']).name} at scale "
                    f"{replay['scale']}, shift {replay['shift']}; covers "
                    f"{replay['coverage']:.0%} of the scenario"),
        ("replayed", f"{replay['planned_messages']} messages planned for "
                     f"{replay['expected_messages']:g} expected, "
                     f"{replay['accepted_messages']} accepted; arrivals per interval "
                     f"correlate {'-' if score is None else f'{score:.2f}'} with the profile"),
        ("replayed sizes", sizes),
        ("recipients", f"{per['replayed'] if per['replayed'] is not None else '-'} a message "
                       f"(profile {per['profile']})"),
    ]


def _size(value: float | None) -> str:
    return "-" if value is None else human_size(value)


def write_replay(obs: Observations, out: Path) -> None:
    """``traffic.csv`` and ``traffic.png`` into the report directory ``out``."""
    import csv

    from mailqueue.rehearsal.replay_chart import draw_replay

    rows = replay_rows(obs)
    with (out / "traffic.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    draw_replay(obs, rows, out / "traffic.png")
