"""The queue: list and show messages, the operator verbs (hold, release, retry, delete,
bounce), the queue's shape and its stats."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from mailqueue.delivery.dsn import Notifier
from mailqueue.errors import GoneError, UnknownQueueIdError
from mailqueue.mailbox.router import Router
from mailqueue.queue.values import (
    SHAPE_EDGES_MINUTES,
    Action,
    ActionResult,
    Change,
    MessageDetail,
    MessageView,
    QueueFilter,
    QueueReport,
    RecipientState,
)
from mailqueue.service.context import Context, about
from mailqueue.timeparse import format_time, parse_duration

# The most messages one page of the list holds.
MAX_PAGE = 1000
_PENDING = (RecipientState.QUEUED, RecipientState.ACTIVE)


# --- the JSON forms -------------------------------------------------------------------------

def message_json(m: MessageView, now: float) -> dict[str, Any]:
    """One message as ``queue list --json`` prints it."""
    return {
        "queue_id": m.queue_id, "arrival_time": format_time(m.received_at),
        "age_seconds": round(now - m.received_at, 3), "size": m.size, "sender": m.mail_from,
        "message_id": m.message_id, "done": m.done_at is not None,
        "auth_user": m.auth_user, "tls": m.tls,
        "recipients": [{
            "address": r.address, "store": r.store, "state": r.state, "attempts": r.attempts,
            "next_attempt": format_time(r.next_attempt_at) if r.state in _PENDING else None,
            "last_error": r.last_error,
        } for r in m.recipients]}


def message_view(m: MessageView, now: float) -> dict[str, Any]:
    """:func:`message_json` with the arrival as POSIX seconds."""
    return message_json(m, now) | {"arrival_epoch": m.received_at}


def header_lines(body: bytes | None) -> list[str]:
    """The header lines of a message as received ([] once its content is not kept)."""
    if body is None:
        return []
    head = body.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    return head.decode("utf-8", "replace").split("\n")


def detail_json(detail: MessageDetail, now: float) -> dict[str, Any]:
    """One message with its history and headers, as ``queue show --json`` prints it."""
    data = message_json(detail.message, now)
    data["history"] = [{"at": format_time(e.at), "kind": e.kind, "recipient": e.address,
                        "detail": e.detail} for e in detail.events]
    data["headers"] = header_lines(detail.body)
    return data


def detail_view(detail: MessageDetail, now: float) -> dict[str, Any]:
    """:func:`detail_json` with the client, POSIX seconds and whether the content is kept."""
    m = detail.message
    data = detail_json(detail, now) | {"arrival_epoch": m.received_at,
                                       "client": {"helo": m.helo, "peer": m.peer},
                                       "raw_available": detail.body is not None}
    for entry, event in zip(data["history"], detail.events, strict=True):
        entry["at_epoch"] = event.at
    return data


# --- list and show --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Page:
    """One page of the list, and the cursor of the next (None: this is the last)."""

    messages: list[MessageView]
    next_cursor: str | None


async def list_messages(ctx: Context, *, states: Sequence[str] = (), store: str | None = None,
                        sender: str | None = None, recipient: str | None = None,
                        message_id: str | None = None, text: str | None = None,
                        older_than: str | float | None = None,
                        newer_than: str | float | None = None, include_done: bool = False,
                        limit: int | None = None, cursor: str | None = None) -> Page:
    """Messages matching the filters, oldest first: a message matches if any of its
    recipients does. ``limit`` messages at most, after the message ``cursor`` names."""
    now = ctx.now()
    for state in states:
        if state not in set(RecipientState):
            raise ctx.invalid("state", f"{ctx.name('state')}: {state!r} is not one of "
                                       f"{', '.join(RecipientState)}")
    if store is not None and store not in ctx.stores:
        raise ctx.invalid("store", f"{ctx.name('store')}: unknown store {store!r} "
                                   f"(known: {', '.join(ctx.stores)})")
    with about("older_than"):
        before = now - parse_duration(older_than) if older_than is not None else None
    with about("newer_than"):
        after = now - parse_duration(newer_than) if newer_than is not None else None
    query = QueueFilter(states=tuple(states), store=store, sender=sender, recipient=recipient,
                        received_before=before, include_done=include_done,
                        limit=None if limit is None else limit + 1, message_id=message_id,
                        text=text, received_after=after, after=cursor)
    found = await ctx.queue.list_messages(query)
    if limit is not None and len(found) > limit:
        return Page(found[:limit], found[limit - 1].queue_id)
    return Page(found, None)


async def show_message(ctx: Context, queue_id: str) -> MessageDetail:
    """One message: envelope, recipients, history and (until it is done) its content."""
    detail = await ctx.queue.message(queue_id)
    if detail is None:
        raise UnknownQueueIdError(f"no such queue id: {queue_id}", field="queue_id")
    return detail


async def raw_message(ctx: Context, queue_id: str) -> bytes:
    """The message as received; :class:`GoneError` once it is done (content dropped)."""
    detail = await show_message(ctx, queue_id)
    if detail.body is None:
        delivered = any(r.state == RecipientState.DELIVERED for r in detail.message.recipients)
        raise GoneError(f"message {queue_id} is done: its content is no longer kept"
                        + (" (see the mailboxes)" if delivered else ""), field="queue_id")
    return detail.body


# --- the operator verbs ---------------------------------------------------------------------

# Which recipients each verb applies to, for the ids it leaves alone ("no queued recipients").
ACTS_ON = {Action.HOLD: "queued", Action.RELEASE: "held", Action.RETRY: "queued",
           Action.DELETE: "queued or held", Action.BOUNCE: "queued or held"}
DEFAULT_BOUNCE_REASON = "bounced by the operator"


@dataclasses.dataclass(frozen=True)
class ActionOutcome:
    """What an operator verb did: the store's result and the given ids it left alone."""

    action: Action
    result: ActionResult
    unchanged: tuple[str, ...]

    @property
    def complete(self) -> bool:
        """No recipient was left to a worker delivering it (run again once they settle)."""
        return not self.result.in_delivery


async def act(ctx: Context, action: Action, queue_ids: Sequence[str] | None,
              reason: str | None = None) -> ActionOutcome:
    """Apply ``action`` to the messages ``queue_ids`` (None: every message not yet done).

    An unknown id changes nothing (:class:`UnknownQueueIdError`). A recipient a worker is
    delivering right now is left to it and named in ``in_delivery``."""
    now = ctx.now()
    if action is Action.DELETE:
        result = await ctx.queue.delete(queue_ids, now)
    elif action is Action.BOUNCE:
        config = ctx.config
        notifier = Notifier(Router(config.stores), config.smtp.hostname,
                            config.queue.max_lifetime)
        result = await ctx.queue.bounce(queue_ids, reason or DEFAULT_BOUNCE_REASON, now,
                                        notifier)
    else:
        result = await ctx.queue.change(action, queue_ids, now)
    if ctx.events is not None:
        ctx.events.operator_changed(action, result.changed, reason or DEFAULT_BOUNCE_REASON,
                                    now)
    touched = {c.queue_id for c in result.changed + result.in_delivery}
    unchanged = tuple(q for q in dict.fromkeys(queue_ids or ()) if q not in touched)
    ctx.changed()  # released or retried mail is due now: a worker here need not wait
    return ActionOutcome(action, result, unchanged)


def _change_json(c: Change) -> dict[str, str]:
    return {"queue_id": c.queue_id, "address": c.address, "before": c.before, "after": c.after}


def outcome_view(outcome: ActionOutcome) -> dict[str, Any]:
    """An operator verb's outcome as JSON."""
    return {"action": outcome.action.value,
            "changed": [_change_json(c) for c in outcome.result.changed],
            "in_delivery": [_change_json(c) for c in outcome.result.in_delivery],
            "unchanged": list(outcome.unchanged), "complete": outcome.complete}


# --- shape and stats ------------------------------------------------------------------------

SHAPE_HEADS = [str(e) for e in SHAPE_EDGES_MINUTES] + [f"{SHAPE_EDGES_MINUTES[-1]}+"]


async def queue_shape(ctx: Context) -> dict[str, list[int]]:
    """Undelivered messages per store (every configured one) in qshape's age buckets."""
    shape = await ctx.queue.shape(ctx.now())
    for store in ctx.stores:
        shape.setdefault(store, [0] * (len(SHAPE_EDGES_MINUTES) + 1))
    return shape


def shape_json(shape: dict[str, list[int]]) -> dict[str, Any]:
    """The shape as ``queue shape --json`` prints it."""
    return {"buckets_minutes": SHAPE_HEADS, "stores": {
        name: {"total": sum(counts), "buckets": counts} for name, counts in shape.items()}}


async def queue_report(ctx: Context) -> QueueReport:
    """Counts by state and store, bytes, totals and the recent delivery rate."""
    return await ctx.queue.report(ctx.now())


def stats_json(report: QueueReport, now: float) -> dict[str, Any]:
    """The stats as ``mailqueue stats --json`` prints them."""
    oldest = None if report.oldest_pending is None else max(0.0, now - report.oldest_pending)
    return {
        "recipients": report.by_state,
        "messages_pending": report.messages_pending,
        "bytes_pending": report.bytes_pending,
        "oldest_pending_seconds": oldest,
        "messages_total": report.accepted,
        "accepted": report.accepted,
        "recipients_accepted": report.recipients_accepted,
        "delivered": report.delivered,
        "bounced": report.bounced,
        "deleted": report.deleted,
        "drain_rate_per_second": round(report.drain_rate, 3),
        "drain_rate_window_seconds": report.recent_seconds,
        "by_store": {f"{store}/{state}": count
                     for (store, state), count in sorted(report.depth.items())},
    }


def by_store(report: QueueReport, stores: Sequence[str]) -> dict[str, dict[str, int]]:
    """Recipients per store and state, every state and every configured store present."""
    out = {store: {state.value: 0 for state in RecipientState} for store in stores}
    for (store, state), count in report.depth.items():
        out.setdefault(store, {s.value: 0 for s in RecipientState})[state] = count
    return out


def stats_view(ctx: Context, report: QueueReport, now: float) -> dict[str, Any]:
    """:func:`stats_json` with the moment and the counts per store as a table."""
    return {"at": format_time(now), "at_epoch": now} | stats_json(report, now) | {
        "stores": by_store(report, ctx.stores)}
