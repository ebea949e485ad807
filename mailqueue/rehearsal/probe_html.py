"""Mailbox access in ``report.html``: the band the chart component draws under the queue
depth (what queue.png draws: per store, what its probe users' logins got, and the two
moments), and the same as text — per store its logins and moments, and period by period
what the logins got — so nothing is told by colour alone."""

from __future__ import annotations

import html
from typing import Any

from mailqueue.rehearsal.moments import round_ends, round_rows
from mailqueue.rehearsal.probe_report import accesses, arrived_text, read_again_text
from mailqueue.rehearsal.probes import OUTCOMES
from mailqueue.rehearsal.report import local
from mailqueue.rehearsal.runner import Observations

LABELS = {"available": "available", "maintenance": "refused: maintenance",
          "node-down": "refused: node down", "error": "error"}


def access_spans(obs: Observations) -> list[dict[str, Any]]:
    """Per store, the stretches of rounds in a row whose logins got the same (a skipped
    round ends a stretch): store, start, end, rounds, logins by outcome."""
    log = obs.probes
    if log is None:
        return []
    until = round_ends(log)
    spans: list[dict[str, Any]] = []
    last: dict[str, dict[str, Any]] = {}
    for at, store, counts, _ in round_rows(log):
        got = {kind: counts[kind] for kind in OUTCOMES}
        span = last.get(store)
        if span is not None and span["counts"] == got and span["end"] == at:
            span["end"], span["rounds"] = until[at], span["rounds"] + 1
            continue
        last[store] = {"store": store, "start": at, "end": until[at], "rounds": 1,
                       "counts": got}
        spans.append(last[store])
    return spans


def access_data(obs: Observations) -> dict[str, Any] | None:
    """The band for the chart component (None without probes)."""
    log = obs.probes
    if log is None:
        return None
    moments = [{"store": a.store, "at": at, "kind": kind} for a in accesses(obs)
               for kind, at in (("read_again", a.read_again), ("mail_arrived", a.mail_arrived))
               if at is not None]
    return {"label": "mailbox access", "stores": log.stores(),
            "spans": access_spans(obs), "moments": moments}


def access_section(obs: Observations, figures: dict[str, Any] | None) -> str:
    """The ``Mailbox access`` section: per store its logins and the two moments, and in a
    table that opens, what the logins got period by period ("" without probes)."""
    if obs.probes is None or figures is None:
        return ""
    way = "IMAP logins through Dovecot" if figures["via"] == "imap" else \
        f"the access decision, asked directly ({figures['why']})"
    head = "".join(f"<th scope=\"col\">{html.escape(t)}</th>" for t in (
        "Store", "Logins", "Users read mail again", "Their queued mail arrived"))
    body = "".join(_store_row(obs, a.store, figures["stores"][a.store],
                              (a.read_again, a.mail_arrived)) for a in accesses(obs))
    return (f'<h2>Mailbox access</h2><p class="muted">{figures["users"]} probe users, '
            f"{html.escape(way)}; {figures['rounds']} rounds "
            f"({figures['skipped_rounds']} skipped). The band under the queue depth shows "
            "each store's logins per round; the circle marks when its users read mail "
            "again, the diamond when their queued mail arrived.</p>"
            f'<table id="access-table"><thead><tr>{head}</tr></thead><tbody>{body}'
            f"</tbody></table>{_periods(obs)}")


def _store_row(obs: Observations, store: str, seen: dict[str, Any],
               moments: tuple[float | None, float | None]) -> str:
    logins = ", ".join(f"{LABELS[k]} {seen['logins'][k]}" for k in OUTCOMES
                       if k != "error" or seen["logins"][k])
    back, arrived = (local(obs, at) if at is not None else None for at in moments)
    cells = (store, logins, back or read_again_text(seen), arrived or arrived_text(seen))
    return "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def _periods(obs: Observations) -> str:
    head = "".join(f"<th scope=\"col\">{html.escape(t)}</th>" for t in (
        "Store", "From", "Until", "Rounds", *(LABELS[k].capitalize() for k in OUTCOMES)))
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
            s["store"], obs.scenario.time(s["start"]), obs.scenario.time(s["end"]), s["rounds"],
            *(s["counts"][k] for k in OUTCOMES))) + "</tr>"
        for s in access_spans(obs))
    return (f"<details><summary>What the logins got, period by period</summary>"
            f'<table id="access-periods"><thead><tr>{head}</tr></thead><tbody>{rows}'
            "</tbody></table></details>")
