"""The mailbox probes in the rehearsal report: figures per store (``report.json``,
``figures.txt``), logins per round and store (``probes.csv``) and every login
(``logins.csv``), with the two moments per store (:mod:`mailqueue.rehearsal.moments`).
"""

from __future__ import annotations

from typing import Any

from mailqueue.rehearsal.moments import StoreAccess, round_rows, store_access
from mailqueue.rehearsal.probes import OUTCOMES
from mailqueue.rehearsal.runner import Observations
from mailqueue.timeparse import format_duration

ERRORS_LISTED = 3  # distinct error texts the report quotes
SKIPPED_WARNING = 0.1  # share of skipped rounds from which the report warns


def accesses(obs: Observations) -> list[StoreAccess]:
    """Each probed store's access, in the order of the scenario's stores."""
    log = obs.probes
    if log is None:
        return []
    return [store_access(log, store, obs.windows, obs.outcomes, obs.finished_at)
            for store in log.stores()]


def probe_figures(obs: Observations) -> dict[str, Any] | None:
    """The probes' figures (None without ``[probes]``)."""
    log = obs.probes
    if log is None:
        return None
    errors = list(dict.fromkeys(r.answer.detail for r in log.results
                                if r.answer.outcome == "error"))
    return {
        "via": log.via, "why": log.why, "interval_seconds": log.interval,
        "users": len(log.users), "rounds": len(log.rounds), "skipped_rounds": len(log.skipped),
        "errors": errors[:ERRORS_LISTED],
        "stores": {a.store: _store(obs, a) for a in accesses(obs)},
    }


def _store(obs: Observations, access: StoreAccess) -> dict[str, Any]:
    def when(ts: float | None) -> str | None:
        return None if ts is None else obs.scenario.time(ts)

    return {
        "users": [{"address": u.address, "node": u.node} for u in access.users],
        "logins": access.logins,
        "last_refusal": when(access.last_refusal),
        "read_again": when(access.read_again),
        "mail_arrived": when(access.mail_arrived),
        "window_recipients": access.window_mail,
        "window_delivered": access.window_delivered,
        "window_pending": access.window_pending,
        "inbox_messages": access.messages_seen,
        "delivered_to_probe_users": access.delivered_to_users,
    }


def probe_warnings(figures: dict[str, Any] | None) -> list[str]:
    """What in the probes' figures needs a look: failed logins, skipped rounds."""
    if figures is None:
        return []
    warnings = []
    failed = sum(s["logins"]["error"] for s in figures["stores"].values())
    if failed:
        warnings.append(f"{failed} probe logins failed with an error (not a refusal), e.g. "
                        f"{figures['errors'][0]}")
    due = figures["rounds"] + figures["skipped_rounds"]
    if due and figures["skipped_rounds"] >= SKIPPED_WARNING * due:
        warnings.append(f"{figures['skipped_rounds']} of {due} probe rounds were skipped (the "
                        "one before was still logging in): this machine is busy for this "
                        "speed; try a lower --speed or a longer probes.interval")
    return warnings


def probe_lines(figures: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(name, value) rows for ``figures.txt``."""
    if figures is None:
        return []
    way = "IMAP logins through Dovecot" if figures["via"] == "imap" else \
        f"the access decision, asked directly ({figures['why']})"
    rows = [("probes", f"{way}; {figures['users']} users every "
                       f"{format_duration(figures['interval_seconds'])}, "
                       f"{figures['rounds']} rounds ({figures['skipped_rounds']} skipped)")]
    for store, seen in figures["stores"].items():
        rows.append((f"{store} logins", "   ".join(
            f"{kind.replace('-', ' ')} {seen['logins'][kind]}" for kind in OUTCOMES)))
        rows.append((f"{store} users", f"read mail again {read_again_text(seen)}; queued "
                                       f"mail arrived {arrived_text(seen)}"))
    return rows


def read_again_text(seen: dict[str, Any]) -> str:
    """When a store's users read mail again (its figures ``seen``), or why there is no
    such moment."""
    if seen["read_again"] is not None:
        return str(seen["read_again"])
    return "- (never refused)" if seen["last_refusal"] is None else \
        "- (still refused at the end)"


def arrived_text(seen: dict[str, Any]) -> str:
    """When a store's queued mail arrived (its figures ``seen``), or why there is no such
    moment."""
    if seen["mail_arrived"] is not None:
        return str(seen["mail_arrived"])
    if seen["window_pending"]:
        return f"- ({seen['window_pending']} recipients still queued)"
    return "- (none queued in a window)"


def probe_rows(obs: Observations) -> list[dict[str, Any]]:
    """``probes.csv``: per round and store, the logins by outcome and the INBOX messages
    its available probe users saw (empty without IMAP)."""
    if obs.probes is None:
        return []
    rows = []
    for at, store, counts, seen in round_rows(obs.probes):
        row: dict[str, Any] = {"time": obs.scenario.time(at), "epoch": round(at, 1),
                               "store": store, "logins": sum(counts.values())}
        row.update({kind.replace("-", "_"): counts[kind] for kind in OUTCOMES})
        row["inbox_messages"] = "" if seen is None else seen
        rows.append(row)
    return rows


def login_rows(obs: Observations) -> list[dict[str, Any]]:
    """``logins.csv``: every probe login, with what it got and how long it took (in
    simulated seconds, from connecting to the answer)."""
    if obs.probes is None:
        return []
    return [{"time": obs.scenario.time(r.at), "epoch": round(r.at, 1), "round": r.round,
             "store": r.user.store, "node": r.user.node, "address": r.user.address,
             "outcome": r.answer.outcome,
             "inbox_messages": "" if r.answer.messages is None else r.answer.messages,
             "login_seconds": round(r.seconds, 1), "reply": r.answer.detail}
            for r in obs.probes.results]
