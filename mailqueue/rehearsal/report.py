"""The rehearsal report: figures, a status timeline, the queue curve as CSV and PNG, JSON,
and all of it in one ``report.html`` that opens offline in a browser.

Lost and duplicated mail is counted from the Maildirs themselves, not from the queue's
own bookkeeping: every file is read for its ``X-Rehearsal-Id`` and ``Delivered-To``, and
each recipient the server acknowledged with 250 must be there exactly once (or bounced, or
deleted by an operator). A remote store's mail is read in the Maildirs its servers write
(its ``verify_path``), counting only this run's copies (by ``X-Mailqueue-Id``); a copy with
no ``Delivered-To`` belongs to the mailbox it lies in. A remote store without a
``verify_path`` cannot be checked: its deliveries are counted from the queue and named
apart (``unchecked``).

For remote stores the report also shows what their servers answered over time
(``backend.csv``, and a line per store in the figures): deliveries accepted, deferred by
reply code (``no reply`` for a refused or dropped connection or a timeout, ``node`` for a
node's fault), bounced by reply code.

With mailbox probes, it shows what their logins got over time (``probes.csv``, a band on
the chart, lines per store in the figures) and when each store's users could read mail
again and their queued mail had arrived (:mod:`mailqueue.rehearsal.moments`).
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from mailqueue.queue.values import FINAL_STATES, RecipientState
from mailqueue.rehearsal.probe_report import (
    login_rows,
    probe_figures,
    probe_lines,
    probe_rows,
    probe_warnings,
)
from mailqueue.rehearsal.replay_report import replay_figures, replay_text, write_replay
from mailqueue.rehearsal.runner import Observations, drain_complete, last_window_end
from mailqueue.timeparse import format_duration, get_zone
from mailqueue.verify.scan import read_files

HEADERS_MAX = 8192
LATE_WARNING = 1.0  # real seconds an event may run behind before the report warns


def scan_maildirs(root: Path, queue_ids: Collection[str] | None = None
                  ) -> Counter[tuple[int, str]]:
    """How many files each (rehearsal id, recipient) has in the Maildirs under ``root``:
    each file counted once, also one a reader moves during the scan (blocking). With
    ``queue_ids`` (a mailbox server's Maildirs, which hold other mail too) only copies of
    those messages count, and a copy without ``Delivered-To`` is its mailbox's,
    ``{root}/{domain}/{local}``."""
    found: Counter[tuple[int, str]] = Counter()
    for path, (seq, rcpt, queue_id) in read_files(root, _identify_file):
        if queue_ids is not None:
            if queue_id not in queue_ids:
                continue
            rcpt = rcpt or _mailbox_of(path, root)
        found[seq, rcpt] += 1
    return found


def _mailbox_of(path: Path, root: Path) -> str:
    parts = path.relative_to(root).parts
    return f"{parts[1]}@{parts[0]}".lower() if len(parts) >= 4 else ""


def _identify_file(path: Path) -> tuple[int, str, str]:
    with open(path, "rb") as handle:
        return _identify(handle.read(HEADERS_MAX).split(b"\n\n", 1)[0])


def _identify(head: bytes) -> tuple[int, str, str]:
    seq, rcpt, queue_id = -1, "", ""
    for line in head.decode("utf-8", "replace").splitlines():
        name, _, value = line.partition(":")
        if name.lower() == "x-rehearsal-id":
            seq = int(value.strip() or -1)
        elif name.lower() == "delivered-to" and not rcpt:
            rcpt = value.strip().strip("<>").lower()
        elif name.lower() == "x-mailqueue-id" and not queue_id:
            queue_id = value.strip()
    return seq, rcpt, queue_id


def percentile(values: Sequence[float], share: float) -> float | None:
    """The nearest-rank percentile of ``values`` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def compute_figures(obs: Observations, files: Counter[tuple[int, str]]) -> dict[str, Any]:
    """Every figure of the report, as plain JSON-ready values."""
    sender = obs.sender
    accepted = sender.accepted if sender else []
    expected = {(a.seq, r.lower()) for a in accepted for r in a.recipients}
    by_queue_id = {a.queue_id: a.seq for a in accepted}
    # A remote store without a verify_path: its mailboxes cannot be read here.
    unreadable = {s.name for s in obs.config.stores if s.mailbox_root is None}
    unchecked = {(by_queue_id.get(o.queue_id, -1), o.address.lower()) for o in obs.outcomes
                 if o.store in unreadable}
    unchecked_delivered = sum(1 for o in obs.outcomes if o.store in unreadable and
                              o.state is RecipientState.DELIVERED)
    expected -= unchecked
    bounced = {(by_queue_id.get(o.queue_id, -1), o.address.lower()): o for o in obs.outcomes
               if o.state is RecipientState.BOUNCED}
    deleted = {(by_queue_id.get(o.queue_id, -1), o.address.lower()) for o in obs.outcomes
               if o.state is RecipientState.DELETED}
    pending = {(by_queue_id.get(o.queue_id, -1), o.address.lower()) for o in obs.outcomes
               if o.state not in FINAL_STATES}
    # A file for a recipient that bounced or was deleted is unexpected, not a delivery.
    given_up = set(bounced) | deleted
    in_mailbox = {key for key in files if key in expected and key not in given_up}
    lost = expected - in_mailbox - given_up - pending
    delays = [o.settled_at - o.received_at for o in obs.outcomes
              if o.state is RecipientState.DELIVERED and o.settled_at is not None]
    peak = max(obs.samples, key=lambda s: s.depth, default=None)
    peak_bytes = max((s.bytes for s in obs.samples), default=0)
    drain = drain_complete(obs)
    probes = probe_figures(obs)
    return {
        "scenario": obs.scenario.info.name, "speed": obs.speed, "seed": obs.seed,
        "wall_seconds": round(obs.wall_seconds, 1),
        "simulated_seconds": round(obs.finished_at - obs.scenario.start),
        "planned_messages": obs.planned,
        "accepted_messages": len(accepted),
        "accepted_recipients": len(expected),
        "refused_messages": len(sender.refused) if sender else 0,
        "tempfail_replies": sender.tempfailed if sender else 0,
        "delivered": len(in_mailbox) + unchecked_delivered,
        "unchecked": unchecked_delivered,
        "bounced": len(bounced),
        "expired": sum(1 for o in bounced.values() if "expired" in (o.last_error or "")),
        "deleted": len(deleted),
        "pending": len(pending),
        "lost": len(lost),
        "duplicated": sum(n - 1 for key, n in files.items() if n > 1),
        "unexpected_files": sum(n for key, n in files.items()
                                if key not in expected or key in given_up),
        "peak_depth": peak.depth if peak else 0,
        "peak_depth_at": obs.scenario.time(peak.at) if peak else None,
        "peak_bytes": peak_bytes,
        "window_end": _time(obs, last_window_end(obs)),
        "drain_seconds": round(drain[1] - drain[0]) if drain else None,
        "drained": obs.drained,
        "delay_p50_seconds": _round(percentile(delays, 0.50)),
        "delay_p95_seconds": _round(percentile(delays, 0.95)),
        "delay_max_seconds": _round(max(delays) if delays else None),
        "warnings": _warnings(obs, drain) + [
            f"store {name!r} has no verify_path: its deliveries are counted from the queue, "
            "not found in its mailboxes" for name in sorted(unreadable)] +
            probe_warnings(probes),
        "backend": backend_figures(obs),
        "probes": probes,
        "replay": replay_figures(obs),
    }


def backend_figures(obs: Observations) -> dict[str, dict[str, Any]]:
    """Per remote store: deliveries its servers accepted, and deferrals and bounces by
    reply code, over the whole run."""
    out: dict[str, dict[str, Any]] = {}
    for reply in obs.replies:
        store = out.setdefault(reply.store, {"accepted": 0, "deferred": {}, "bounced": {}})
        if reply.outcome == "accepted":
            store["accepted"] += 1
        else:
            store[reply.outcome][reply.code] = store[reply.outcome].get(reply.code, 0) + 1
    return out


def backend_rows(obs: Observations) -> list[dict[str, Any]]:
    """The remote stores' replies per sample interval: one row per interval and store,
    a column per outcome and code seen in the run."""
    if not obs.replies:
        return []
    interval = obs.scenario.info.sample
    codes = sorted({(r.outcome, r.code) for r in obs.replies if r.outcome != "accepted"})
    buckets: dict[tuple[int, str], Counter[tuple[str, str]]] = {}
    for reply in obs.replies:
        slot = int((reply.at - obs.scenario.start) // interval)
        buckets.setdefault((slot, reply.store), Counter())[reply.outcome, reply.code] += 1
    rows = []
    for (slot, store), counts in sorted(buckets.items()):
        at = obs.scenario.start + slot * interval
        row: dict[str, Any] = {"time": obs.scenario.time(at), "epoch": round(at, 1),
                               "store": store, "accepted": counts["accepted", "2xx"]}
        for outcome in ("deferred", "bounced"):
            row[outcome] = sum(n for (o, _), n in counts.items() if o == outcome)
        for outcome, code in codes:
            row[f"{outcome} {code}"] = counts[outcome, code]
        rows.append(row)
    return rows


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _time(obs: Observations, ts: float | None) -> str | None:
    return None if ts is None else obs.scenario.time(ts)


def _warnings(obs: Observations, drain: tuple[float, float] | None) -> list[str]:
    warnings = []
    lifetime = obs.config.queue.max_lifetime
    share = obs.scenario.file.report.get("lifetime_warning", 0.5)
    spans = [(w.ended_at or obs.finished_at) - (w.started_at or w.start)
             for w in obs.windows if w.started_at is not None]
    window = max(spans, default=0.0)
    drain_time = (drain[1] - drain[0]) if drain else 0.0
    if window and window + drain_time >= share * lifetime:
        counts = "counts" if obs.config.queue.window_time_counts else "does not count"
        warnings.append(
            f"window + drain lasted {format_duration(window + drain_time)}, "
            f"{(window + drain_time) / lifetime:.0%} of the queue lifetime "
            f"({format_duration(lifetime)}; window time {counts} against it)")
    if not obs.drained:
        warnings.append("the queue did not drain before the rehearsal stopped waiting")
    for entry in obs.timeline:
        if entry.kind == "problem":
            warnings.append(entry.text)
    late = max(obs.timeline, key=lambda e: e.late, default=None)
    if late is not None and late.late > LATE_WARNING * obs.speed:
        warnings.append(f"events ran up to {format_duration(late.late)} behind their time "
                        f"({late.text.rstrip('.')}): this machine is busy for this speed; "
                        "try a lower --speed")
    return warnings


def local(obs: Observations, ts: float) -> str:
    """An incident-page time: ``Wed 26 Jun 2019 5:00 PM CDT``."""
    moment = datetime.fromtimestamp(ts, get_zone(obs.scenario.timezone))
    return moment.strftime("%a %d %b %Y %I:%M %p %Z").replace(" 0", " ")


def timeline_text(obs: Observations) -> str:
    """The status timeline, newest last, in the voice of an incident page (Markdown)."""
    lines = [f"# {obs.scenario.info.name} — status timeline", ""]
    if obs.scenario.info.description:
        lines += [obs.scenario.info.description.strip(), ""]
    number = 0
    for entry in obs.timeline:
        mark = ""
        if entry.kind in ("event", "problem"):
            number += 1
            mark = f"({number}) "  # the number on the chart
        text = entry.text.rstrip(".")
        unit = "message" if entry.depth == 1 else "messages"
        lines.append(f"- **{local(obs, entry.at)}** — {mark}{text}. "
                     f"_Queue: {entry.depth} {unit}._")
    return "\n".join(lines) + "\n"


def figures_text(figures: dict[str, Any]) -> str:
    """The figures as a few aligned lines (printed at the end of a run)."""
    def dur(key: str) -> str:
        value = figures[key]
        return "-" if value is None else format_duration(value)

    rows = [
        ("accepted", f"{figures['accepted_messages']} messages, "
                     f"{figures['accepted_recipients']} recipients"),
        ("delivered", f"{figures['delivered']}   bounced {figures['bounced']}   "
                      f"expired {figures['expired']}   deleted {figures['deleted']}   "
                      f"pending {figures['pending']}"),
        ("lost", f"{figures['lost']}   duplicated {figures['duplicated']}"),
        ("peak queue", f"{figures['peak_depth']} messages, {figures['peak_bytes']} bytes "
                       f"({figures['peak_depth_at']})"),
        ("window end", f"{figures['window_end']}; queue empty {dur('drain_seconds')} later"
         if figures["window_end"] else "no window ended"),
        ("delivery delay", f"p50 {dur('delay_p50_seconds')}  p95 {dur('delay_p95_seconds')}  "
                           f"max {dur('delay_max_seconds')}"),
        ("run", f"{figures['wall_seconds']} s wall at {figures['speed']:g}x, "
                f"seed {figures['seed']}"),
    ]
    for store, seen in sorted(figures.get("backend", {}).items()):
        rows.append((f"{store} replies", _replies_text(seen)))
    rows += probe_lines(figures.get("probes"))
    if figures.get("replay"):
        rows += replay_text(figures["replay"])
    width = max(15, *(len(name) for name, _ in rows))
    text = "\n".join(f"{name:>{width}}: {value}" for name, value in rows)
    for warning in figures["warnings"]:
        text += f"\n{'warning':>{width}}: {warning}"
    return text + "\n"


def _replies_text(seen: dict[str, Any]) -> str:
    def by_code(counts: dict[str, int]) -> str:
        return ", ".join(f"{code} x{n}" for code, n in sorted(counts.items())) or "0"
    return (f"accepted {seen['accepted']}   deferred {by_code(seen['deferred'])}   "
            f"bounced {by_code(seen['bounced'])}")


def series_rows(obs: Observations) -> list[dict[str, Any]]:
    """The queue curve: one row per sample, delivered counted per interval."""
    rows, previous = [], 0
    for sample in obs.samples:
        rows.append({"time": obs.scenario.time(sample.at), "epoch": round(sample.at, 1),
                     "queue_depth": sample.depth, "queue_bytes": sample.bytes,
                     "recipients_waiting": sample.queued,
                     "delivered_in_interval": sample.delivered - previous,
                     "delivered_total": sample.delivered, "accepted_total": sample.accepted,
                     "window_active": int(sample.held)})
        previous = sample.delivered
    return rows


def write_csv(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    rows = list(rows)
    with path.open("w", newline="", encoding="utf-8") as handle:
        if not rows:
            return
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_report(obs: Observations, out: Path) -> dict[str, Any]:
    """Scan the Maildirs, write every part of the report into ``out``; the figures."""
    from mailqueue.rehearsal.chart import draw_chart
    from mailqueue.rehearsal.html import report_html

    out.mkdir(parents=True, exist_ok=True)
    files = scan_maildirs(obs.workdir / "mail")
    queue_ids = {a.queue_id for a in (obs.sender.accepted if obs.sender else [])}
    for root in {s.verify_path for s in obs.config.stores if s.kind != "maildir"} - {None}:
        assert root is not None
        files += scan_maildirs(root, queue_ids)
    figures = compute_figures(obs, files)
    rows = series_rows(obs)
    write_csv(out / "series.csv", rows)
    backend = backend_rows(obs)
    if backend:
        write_csv(out / "backend.csv", backend)
    if obs.probes is not None:
        write_csv(out / "probes.csv", probe_rows(obs))
        write_csv(out / "logins.csv", login_rows(obs))
    (out / "timeline.md").write_text(timeline_text(obs), encoding="utf-8")
    (out / "figures.txt").write_text(figures_text(figures), encoding="utf-8")
    draw_chart(obs, rows, out / "queue.png", backend)
    (out / "report.html").write_text(report_html(obs, figures, rows, backend),
                                     encoding="utf-8")
    if obs.scenario.replay is not None:
        write_replay(obs, out)
    document = {"figures": figures, "timeline": [
        {"time": obs.scenario.time(e.at), "event": e.text, "queue_depth": e.depth,
         "kind": e.kind, "applied_late_seconds": round(e.late)} for e in obs.timeline]}
    (out / "report.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return figures
