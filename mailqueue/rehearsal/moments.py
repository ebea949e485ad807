"""What the mailbox probes tell (:mod:`mailqueue.rehearsal.probes`), per store: logins by
outcome over time, what the users' clients showed, and the two moments an incident
commander is asked about.

- *Users read mail again*: when every probe user who was refused could log in again —
  for each, the first login that succeeded after their last refusal; the latest of these.
- *Queued mail arrived*: when the last of the store's recipients received while a window
  held the store was delivered (recipients that bounced or were deleted do not count; while
  any is still queued there is no such moment).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence

from mailqueue.control.windows import Window
from mailqueue.queue.values import FINAL_STATES, RecipientOutcome, RecipientState
from mailqueue.rehearsal.probes import OUTCOMES, REFUSALS, ProbeLog, ProbeResult, ProbeUser


@dataclasses.dataclass(frozen=True)
class StoreAccess:
    """One store's mailbox access over the rehearsal, and the two moments an incident
    commander is asked about."""

    store: str
    users: tuple[ProbeUser, ...]
    logins: dict[str, int]  # by outcome
    last_refusal: float | None
    # When every probe user refused at some point could read mail again (for each, the
    # first login that succeeded after their last refusal; the latest of these).
    read_again: float | None
    # Recipients of the store received while a window held it; of those, how many were
    # delivered, and how many are still queued when the rehearsal stops.
    window_mail: int
    window_delivered: int
    window_pending: int
    # When the last of those recipients was delivered (None: none was queued, or some
    # still are).
    mail_arrived: float | None
    # At the last round: the INBOX messages of the store's probe users (IMAP only), and
    # the recipients delivered to them.
    messages_seen: int | None
    delivered_to_users: int


def store_access(log: ProbeLog, store: str, windows: Sequence[Window],
                 outcomes: Sequence[RecipientOutcome], finished_at: float) -> StoreAccess:
    """What ``log`` saw of ``store``'s mailboxes, with its window mail from ``outcomes``."""
    mine = [r for r in log.results if r.user.store == store]
    users = tuple(u for u in log.users if u.store == store)
    last_refusal = max((r.at for r in mine if r.answer.outcome in REFUSALS), default=None)
    backs = [at for at in (read_again_at(mine, user) for user in users) if at is not None]
    read_again = max(backs) if backs and math.isfinite(max(backs)) else None
    spans = window_spans(windows, store, finished_at)
    held = [o for o in outcomes if o.store == store and
            any(lo <= o.received_at < hi for lo, hi in spans)]
    delivered = [o for o in held if o.state is RecipientState.DELIVERED]
    pending = sum(1 for o in held if o.state not in FINAL_STATES)
    arrived = max((o.settled_at or o.received_at for o in delivered), default=None) \
        if not pending else None
    return StoreAccess(
        store=store, users=users, logins={k: sum(1 for r in mine if r.answer.outcome == k)
                                          for k in OUTCOMES},
        last_refusal=last_refusal, read_again=read_again, window_mail=len(held),
        window_delivered=len(delivered), window_pending=pending, mail_arrived=arrived,
        messages_seen=_seen(log, users), delivered_to_users=sum(
            1 for o in outcomes if o.state is RecipientState.DELIVERED and
            o.address.lower() in {u.address for u in users}))


def read_again_at(results: Sequence[ProbeResult], user: ProbeUser) -> float | None:
    """When ``user`` could read mail again: their first successful login after their last
    refused one (None: never refused; infinity: still refused at the end)."""
    mine = [r for r in results if r.user == user]
    last = max((r.at for r in mine if r.answer.outcome in REFUSALS), default=None)
    if last is None:
        return None
    return min((r.at for r in mine if r.answer.outcome == "available" and r.at > last),
               default=float("inf"))


def window_spans(windows: Sequence[Window], store: str, finished_at: float
                 ) -> list[tuple[float, float]]:
    """When windows held ``store``: (start, end) of each window covering it that began."""
    return [(w.started_at, w.ended_at if w.ended_at is not None else finished_at)
            for w in windows if w.covers(store) and w.started_at is not None]


def _seen(log: ProbeLog, users: tuple[ProbeUser, ...]) -> int | None:
    if log.via != "imap" or not log.rounds:
        return None
    last = len(log.rounds) - 1
    counts = [r.answer.messages for r in log.results if r.round == last and r.user in users]
    if len(counts) != len(users) or any(c is None for c in counts):
        return None
    return sum(c or 0 for c in counts)


def first_reasons(log: ProbeLog) -> list[ProbeResult]:
    """The first login refused with each reason, per store, in time order: what users'
    clients showed, and each time it changed (a window's new planned end, another node)."""
    seen: set[tuple[str, str]] = set()
    found = []
    for result in sorted(log.results, key=lambda r: r.at):
        key = (result.user.store, result.answer.detail)
        if result.answer.outcome in REFUSALS and key not in seen:
            seen.add(key)
            found.append(result)
    return found


def access_notes(log: ProbeLog, windows: Sequence[Window],
                 outcomes: Sequence[RecipientOutcome], finished_at: float
                 ) -> list[tuple[float, str, str]]:
    """(time, kind, text) for the status timeline: what the probe users' clients showed,
    each refusal reason as it first appeared (``access``), and per store the two moments —
    its users read mail again, the mail queued for them in the window has arrived
    (``milestone``)."""
    notes = []
    for result in first_reasons(log):
        kind = "for maintenance" if result.answer.outcome == "maintenance" else "(node down)"
        notes.append((result.at, "access", f"{result.user.store}: logins refused {kind}; "
                                           f"clients show \"{result.answer.detail}\""))
    for store in log.stores():
        access = store_access(log, store, windows, outcomes, finished_at)
        if access.read_again is not None:
            notes.append((access.read_again, "milestone",
                          f"{store}: its users can read mail again (each probe user's first "
                          "login that succeeds after their last refusal)"))
        if access.mail_arrived is not None:
            notes.append((access.mail_arrived, "milestone",
                          f"{store}: the mail queued for its users during the window has "
                          f"arrived ({access.window_delivered} recipients)"))
    return notes


def round_rows(log: ProbeLog) -> list[tuple[float, str, Counter[str], int | None]]:
    """Per round and store: (round start, store, logins by outcome, INBOX messages seen by
    its available probe users, None without IMAP)."""
    rows: dict[tuple[int, str], Counter[str]] = {}
    seen: dict[tuple[int, str], int] = {}
    for result in log.results:
        key = (result.round, result.user.store)
        rows.setdefault(key, Counter())[result.answer.outcome] += 1
        if result.answer.messages is not None:
            seen[key] = seen.get(key, 0) + result.answer.messages
    return [(log.rounds[number], store, counts,
             seen.get((number, store), 0) if log.via == "imap" else None)
            for (number, store), counts in sorted(rows.items())]


def round_ends(log: ProbeLog) -> dict[float, float]:
    """Until when each round's answers hold (by its start): until the next round, as the
    queue depth holds until the next sample, but no longer than a little over the interval,
    so a skipped round (or the wait for the drain) leaves a gap."""
    return {at: min(after, at + 1.1 * log.interval) for at, after in
            zip(log.rounds, [*log.rounds[1:], math.inf], strict=True)}
