"""``mailqueue queue ...``: see and steer the queue from another process, like Postfix's
mailq/postqueue/postsuper/qshape and Exim's -bp/-M* options.

Every command works through the queue database, so it sees and changes the queue of a
running server (which follows within its poll interval). Ids come as arguments, or ``-``
reads them from standard input (whitespace-separated, as ``queue list --ids`` prints them);
``--all`` means every message not yet done. An unknown id is a one-line error and a
non-zero exit, and then nothing is changed. A verb that stops delivery (hold, delete,
bounce) never takes a recipient from a worker delivering it: it names each such recipient
and exits 3 (:data:`IN_DELIVERY_EXIT`), so a script can run it again once they settle.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click

from mailqueue.cli._common import MAX_COUNT, config_option, in_queue, load
from mailqueue.clock import SystemClock
from mailqueue.config import Config
from mailqueue.delivery.dsn import Notifier
from mailqueue.errors import UnknownQueueIdError
from mailqueue.mailbox.router import Router
from mailqueue.queue.store import QueueStore
from mailqueue.queue.values import (
    SHAPE_EDGES_MINUTES,
    Action,
    ActionResult,
    MessageDetail,
    MessageView,
    QueueFilter,
    RecipientState,
)
from mailqueue.timeparse import format_duration, format_time, parse_duration

# The exit status of hold, delete and bounce when they left recipients to the worker
# delivering them (as ``window end --wait --timeout`` exits 3 when mail is still queued).
IN_DELIVERY_EXIT = 3


@click.group("queue")
def queue() -> None:
    """See and steer queued mail (like mailq, postsuper, qshape).

    Commands work on the queue database, so they act on a running server's queue.
    IDs come as arguments, as '-' (read from stdin), or --all. An unknown ID is an error
    and changes nothing.
    """


def _size(n: int) -> str:
    if n < 1024:
        return str(n)
    value = float(n)
    for unit in ("K", "M", "G"):
        value /= 1024
        if value < 1024 or unit == "G":
            break
    return f"{value:.1f}{unit}"


def _due(ts: float, now: float) -> str:
    return "now" if ts <= now else f"in {format_duration(ts - now)}"


# --- list ---------------------------------------------------------------------------------

@queue.command("list", short_help="List queued messages and their recipients.")
@config_option
@click.option("--state", "states", multiple=True,
              type=click.Choice([s.value for s in RecipientState]),
              help="Only messages with a recipient in this state (repeatable). A final "
                   "state (delivered, bounced, deleted) includes finished messages.")
@click.option("--store", metavar="NAME", help="Only messages with a recipient in this store.")
@click.option("--sender", metavar="TEXT", help="Sender contains TEXT (case-insensitive).")
@click.option("--recipient", metavar="TEXT", help="A recipient contains TEXT.")
@click.option("--older-than", metavar="DURATION", help="Only messages older than this (2h).")
@click.option("--all", "include_done", is_flag=True, help="Include finished messages.")
@click.option("--limit", type=click.IntRange(1, MAX_COUNT), metavar="N",
              help="Show at most N messages.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per message and line (like postqueue -j).")
@click.option("--ids", "ids_only", is_flag=True,
              help="Print only queue ids, one a line (pipe into hold/release/... -).")
def queue_list(config_path: str | None, states: tuple[str, ...], store: str | None,
               sender: str | None, recipient: str | None, older_than: str | None,
               include_done: bool, limit: int | None, as_json: bool, ids_only: bool) -> None:
    """List queued messages: recipients, states, attempts, next attempt, errors.

    \b
    Example:
      mailqueue queue list --store basic --older-than 1h
      mailqueue queue list --state held --ids | mailqueue queue release -
    """
    config: Config = load(config_path)
    now = SystemClock().now()
    if store is not None and store not in {s.name for s in config.stores}:
        raise click.UsageError(f"--store: unknown store {store!r} "
                               f"(known: {', '.join(s.name for s in config.stores)})")
    query = QueueFilter(states=states, store=store, sender=sender, recipient=recipient,
                        received_before=now - parse_duration(older_than) if older_than else None,
                        include_done=include_done, limit=limit)
    found: list[MessageView] = in_queue(config, lambda q: q.list_messages(query))
    if ids_only:
        for m in found:
            click.echo(m.queue_id)
    elif as_json:
        for m in found:
            click.echo(json.dumps(message_json(m, now)))
    else:
        click.echo(format_table(found, now))


def message_json(m: MessageView, now: float) -> dict[str, Any]:
    """The JSON form of one message (``queue list --json`` and ``queue show --json``)."""
    return {
        "queue_id": m.queue_id, "arrival_time": format_time(m.received_at),
        "age_seconds": round(now - m.received_at, 3), "size": m.size, "sender": m.mail_from,
        "message_id": m.message_id, "done": m.done_at is not None,
        "auth_user": m.auth_user, "tls": m.tls,
        "recipients": [{
            "address": r.address, "store": r.store, "state": r.state, "attempts": r.attempts,
            "next_attempt": format_time(r.next_attempt_at)
            if r.state in (RecipientState.QUEUED, RecipientState.ACTIVE) else None,
            "last_error": r.last_error,
        } for r in m.recipients]}


def format_table(found: Sequence[MessageView], now: float) -> str:
    """A postqueue-like table: one line per recipient, message columns on its first line."""
    if not found:
        return "queue is empty"
    header = ("QUEUE ID", "AGE", "SIZE", "SENDER", "RECIPIENT", "STATE", "TRIES", "NEXT",
              "LAST ERROR")
    rows: list[tuple[str, ...]] = []
    for m in found:
        first = (m.queue_id, format_duration(now - m.received_at), _size(m.size),
                 m.mail_from or "<>")
        for index, r in enumerate(m.recipients or ()):
            left = first if index == 0 else ("", "", "", "")
            pending = r.state in (RecipientState.QUEUED, RecipientState.ACTIVE)
            rows.append((*left, r.address, r.state, str(r.attempts),
                         _due(r.next_attempt_at, now) if pending else "-",
                         (r.last_error or "-")[:60]))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in (header, *rows)]
    total = sum(m.size for m in found)
    rcpts = sum(len(m.recipients) for m in found)
    lines.append(f"-- {len(found)} messages, {_size(total)} bytes, {rcpts} recipients")
    return "\n".join(lines)


# --- show ---------------------------------------------------------------------------------

@queue.command("show")
@config_option
@click.argument("queue_id")
@click.option("--raw", is_flag=True, help="Print the message itself, as received.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def queue_show(config_path: str | None, queue_id: str, raw: bool, as_json: bool) -> None:
    """Show one message: envelope, headers, each recipient's history."""
    config: Config = load(config_path)
    now = SystemClock().now()
    detail: MessageDetail | None = in_queue(config, lambda q: q.message(queue_id))
    if detail is None:
        raise UnknownQueueIdError(f"no such queue id: {queue_id}")
    if raw:
        if detail.body is None:
            delivered = any(r.state == RecipientState.DELIVERED
                            for r in detail.message.recipients)
            raise UnknownQueueIdError(f"message {queue_id} is done: its content is no longer "
                                      "kept" + (" (see the mailboxes)" if delivered else ""))
        sys.stdout.buffer.write(detail.body)
        sys.stdout.buffer.flush()
        return
    if as_json:
        data = message_json(detail.message, now)
        data["history"] = [{"at": format_time(e.at), "kind": e.kind, "recipient": e.address,
                            "detail": e.detail} for e in detail.events]
        data["headers"] = _headers(detail.body)
        click.echo(json.dumps(data))
        return
    click.echo(format_detail(detail, now))


def _headers(body: bytes | None) -> list[str]:
    if body is None:
        return []
    head = body.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    return head.decode("utf-8", "replace").split("\n")


def format_detail(detail: MessageDetail, now: float) -> str:
    m = detail.message
    status = "queued" if m.done_at is None else f"done at {format_time(m.done_at)}"
    lines = [f"queue id:    {m.queue_id}",
             f"arrival:     {format_time(m.received_at)} ({format_duration(now - m.received_at)}"
             " ago)",
             f"size:        {m.size} bytes",
             f"sender:      <{m.mail_from}>",
             f"client:      {m.helo or '-'} [{m.peer or '-'}]",
             f"tls:         {m.tls or 'none'}",
             f"auth:        {m.auth_user or 'none'}",
             f"message-id:  {m.message_id or '-'}",
             f"status:      {status}", "", "recipients:"]
    for r in m.recipients:
        line = f"  {r.address}  store={r.store} state={r.state} attempts={r.attempts}"
        if r.state in (RecipientState.QUEUED, RecipientState.ACTIVE):
            line += f" next={_due(r.next_attempt_at, now)}"
        if r.last_error:
            line += f"\n      last error: {r.last_error}"
        lines.append(line)
    lines += ["", "history:"]
    lines += [f"  {format_time(e.at)}  {e.address or '-'}  {e.kind}"
              + (f"  {e.detail}" if e.detail else "") for e in detail.events] or ["  (none)"]
    lines += ["", "headers:"]
    lines += [f"  {h}" for h in _headers(detail.body)] or ["  (content no longer kept)"]
    return "\n".join(lines)


# --- actions ------------------------------------------------------------------------------

def _ids(ids: tuple[str, ...], every: bool) -> list[str] | None:
    if every and ids:
        raise click.UsageError("give queue ids or --all, not both")
    if every:
        return None
    if not ids:
        raise click.UsageError("give one or more queue ids, '-' to read them from stdin, "
                               "or --all")
    out: list[str] = []
    for item in ids:
        out.extend(sys.stdin.read().split() if item == "-" else [item])
    if not out:
        raise click.UsageError("no queue ids were given on stdin")
    return out


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _report(verb: str, result: ActionResult, ids: list[str] | None, what: str) -> None:
    """One line per recipient changed or left in delivery, one per given id left alone,
    a total; exit :data:`IN_DELIVERY_EXIT` if a recipient was left in delivery."""
    for c in result.changed:
        click.echo(f"{verb} {c.queue_id} {c.address} ({c.before or '?'} -> {c.after})")
    for c in result.in_delivery:
        click.echo(f"skipped {c.queue_id} {c.address} (in delivery; not {verb})")
    touched = {c.queue_id for c in result.changed + result.in_delivery}
    for queue_id in dict.fromkeys(ids or ()):
        if queue_id not in touched:
            click.echo(f"unchanged {queue_id}: no {what} recipients")
    total = (f"{verb} {_count(len(result.changed), 'recipient')} of "
             f"{_count(len({c.queue_id for c in result.changed}), 'message')}")
    if result.in_delivery:
        left = len(result.in_delivery)
        total += (f"; {_count(left, 'recipient')} in delivery, not {verb}: run again once "
                  f"{'it settles' if left == 1 else 'they settle'}")
    click.echo(total)
    if result.in_delivery:
        sys.exit(IN_DELIVERY_EXIT)


def _action_command(action: Action, verb: str, what: str, doc: str) -> click.Command:
    @config_option
    @click.argument("ids", nargs=-1, metavar="[ID]... | -")
    @click.option("--all", "every", is_flag=True, help="Every message not yet done.")
    def command(config_path: str | None, ids: tuple[str, ...], every: bool) -> None:
        config: Config = load(config_path)
        wanted = _ids(ids, every)
        now = SystemClock().now()

        async def run(q: QueueStore) -> ActionResult:
            return await q.change(action, wanted, now)

        _report(verb, in_queue(config, run), wanted, what)

    command.__doc__ = doc
    return queue.command(action.value)(command)


_action_command(Action.HOLD, "held", "queued",
                "Hold messages: not delivered until released (postsuper -h).\n\n"
                "Queued recipients become held. Held recipients neither expire nor get\n"
                "delay warnings. A recipient being delivered right now is left to its\n"
                "worker and listed as 'in delivery; not held'; the command then exits 3,\n"
                "so a script can run it again once it settles.")
_action_command(Action.RELEASE, "released", "held",
                "Release held messages; they are due at once (postsuper -H).")
_action_command(Action.RETRY, "retried", "queued",
                "Deliver now, skipping the backoff (postqueue -i, postsuper -r).\n\n"
                "Queued recipients become due at once. Held recipients stay held, and a\n"
                "store inside an active window stays closed.")


@queue.command("delete")
@config_option
@click.argument("ids", nargs=-1, metavar="[ID]... | -")
@click.option("--all", "every", is_flag=True, help="Every message not yet done.")
def queue_delete(config_path: str | None, ids: tuple[str, ...], every: bool) -> None:
    """Delete messages, with no notice to anyone (postsuper -d).

    Queued and held recipients become deleted: never delivered, and still counted as
    accepted (stats, verify and queue show account for them). A recipient being
    delivered right now is left to its worker and listed as 'in delivery; not deleted';
    the command then exits 3, so a script can run it again once it settles. A message
    whose recipients are all delivered, bounced or deleted is left as it is.
    """
    config: Config = load(config_path)
    wanted = _ids(ids, every)
    now = SystemClock().now()

    async def run(q: QueueStore) -> ActionResult:
        return await q.delete(wanted, now)

    _report("deleted", in_queue(config, run), wanted, "queued or held")


@queue.command("bounce")
@config_option
@click.argument("ids", nargs=-1, metavar="[ID]... | -")
@click.option("--all", "every", is_flag=True, help="Every message not yet done.")
@click.option("--reason", default="bounced by the operator", show_default=True,
              help="The diagnostic the sender's notice gives.")
def queue_bounce(config_path: str | None, ids: tuple[str, ...], every: bool,
                 reason: str) -> None:
    """Give up on messages now, telling the sender (exim -Mg).

    Queued and held recipients bounce; a local sender gets a delivery status
    notification (RFC 3464) in the same commit. Null-sender mail is never bounced back.
    A recipient being delivered right now is left to its worker and listed as 'in
    delivery; not bounced'; the command then exits 3, so a script can run it again.
    """
    config: Config = load(config_path)
    wanted = _ids(ids, every)
    now = SystemClock().now()
    notifier = Notifier(Router(config.stores), config.smtp.hostname, config.queue.max_lifetime)

    async def run(q: QueueStore) -> ActionResult:
        return await q.bounce(wanted, reason, now, notifier)

    _report("bounced", in_queue(config, run), wanted, "queued or held")


# --- shape --------------------------------------------------------------------------------

@queue.command("shape")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def queue_shape(config_path: str | None, as_json: bool) -> None:
    """Undelivered messages per store and age, in minutes (like qshape).

    A column holds the messages younger than its heading and older than the one before;
    T is the total. A message with recipients in two stores counts in both rows.
    """
    config: Config = load(config_path)
    now = SystemClock().now()
    shape: dict[str, list[int]] = in_queue(config, lambda q: q.shape(now))
    for store in config.stores:
        shape.setdefault(store.name, [0] * (len(SHAPE_EDGES_MINUTES) + 1))
    heads = [str(e) for e in SHAPE_EDGES_MINUTES] + [f"{SHAPE_EDGES_MINUTES[-1]}+"]
    if as_json:
        click.echo(json.dumps({"buckets_minutes": heads, "stores": {
            name: {"total": sum(counts), "buckets": counts} for name, counts in shape.items()}}))
        return
    click.echo(format_shape(shape, heads))


def format_shape(shape: dict[str, list[int]], heads: list[str]) -> str:
    totals = [sum(col) for col in zip(*shape.values(), strict=True)] if shape else \
        [0] * len(heads)
    rows = [("", "T", *heads), ("TOTAL", str(sum(totals)), *map(str, totals))]
    rows += [(name, str(sum(c)), *map(str, c)) for name, c in sorted(shape.items())]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(" ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True))
                     for r in rows)
