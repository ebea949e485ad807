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

import click

from mailqueue.cli._common import MAX_COUNT, config_option, in_service, load
from mailqueue.clock import SystemClock
from mailqueue.config import Config
from mailqueue.queue.values import (
    Action,
    MessageDetail,
    MessageView,
    RecipientState,
)
from mailqueue.service import messages as service
from mailqueue.service.messages import ACTS_ON, SHAPE_HEADS, header_lines
from mailqueue.timeparse import format_duration, format_time

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
    page = in_service(config, lambda ctx: service.list_messages(
        ctx, states=states, store=store, sender=sender, recipient=recipient,
        older_than=older_than or None, include_done=include_done, limit=limit))
    found: list[MessageView] = page.messages
    if ids_only:
        for m in found:
            click.echo(m.queue_id)
    elif as_json:
        for m in found:
            click.echo(json.dumps(message_json(m, now)))
    else:
        click.echo(format_table(found, now))


message_json = service.message_json


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
    if raw:
        body = in_service(config, lambda ctx: service.raw_message(ctx, queue_id))
        sys.stdout.buffer.write(body)
        sys.stdout.buffer.flush()
        return
    detail = in_service(config, lambda ctx: service.show_message(ctx, queue_id))
    if as_json:
        click.echo(json.dumps(service.detail_json(detail, now)))
        return
    click.echo(format_detail(detail, now))


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
    lines += [f"  {h}" for h in header_lines(detail.body)] or ["  (content no longer kept)"]
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


# The past tense each verb's lines use.
VERBS = {Action.HOLD: "held", Action.RELEASE: "released", Action.RETRY: "retried",
         Action.DELETE: "deleted", Action.BOUNCE: "bounced"}


def _report(outcome: service.ActionOutcome) -> None:
    """One line per recipient changed or left in delivery, one per given id left alone,
    a total; exit :data:`IN_DELIVERY_EXIT` if a recipient was left in delivery."""
    verb, result = VERBS[outcome.action], outcome.result
    for c in result.changed:
        click.echo(f"{verb} {c.queue_id} {c.address} ({c.before or '?'} -> {c.after})")
    for c in result.in_delivery:
        click.echo(f"skipped {c.queue_id} {c.address} (in delivery; not {verb})")
    for queue_id in outcome.unchanged:
        click.echo(f"unchanged {queue_id}: no {ACTS_ON[outcome.action]} recipients")
    total = (f"{verb} {_count(len(result.changed), 'recipient')} of "
             f"{_count(len({c.queue_id for c in result.changed}), 'message')}")
    if result.in_delivery:
        left = len(result.in_delivery)
        total += (f"; {_count(left, 'recipient')} in delivery, not {verb}: run again once "
                  f"{'it settles' if left == 1 else 'they settle'}")
    click.echo(total)
    if not outcome.complete:
        sys.exit(IN_DELIVERY_EXIT)


def _act(config_path: str | None, action: Action, ids: tuple[str, ...], every: bool,
         reason: str | None = None) -> None:
    config: Config = load(config_path)
    wanted = _ids(ids, every)
    _report(in_service(config, lambda ctx: service.act(ctx, action, wanted, reason)))


def _action_command(action: Action, doc: str) -> click.Command:
    @config_option
    @click.argument("ids", nargs=-1, metavar="[ID]... | -")
    @click.option("--all", "every", is_flag=True, help="Every message not yet done.")
    def command(config_path: str | None, ids: tuple[str, ...], every: bool) -> None:
        _act(config_path, action, ids, every)

    command.__doc__ = doc
    return queue.command(action.value)(command)


_action_command(Action.HOLD,
                "Hold messages: not delivered until released (postsuper -h).\n\n"
                "Queued recipients become held. Held recipients neither expire nor get\n"
                "delay warnings. A recipient being delivered right now is left to its\n"
                "worker and listed as 'in delivery; not held'; the command then exits 3,\n"
                "so a script can run it again once it settles.")
_action_command(Action.RELEASE,
                "Release held messages; they are due at once (postsuper -H).")
_action_command(Action.RETRY,
                "Deliver now, skipping the backoff (postqueue -i, postsuper -r).\n\n"
                "Queued recipients become due at once. Held recipients stay held, and a\n"
                "store inside an active window stays closed.")
_action_command(Action.DELETE,
                "Delete messages, with no notice to anyone (postsuper -d).\n\n"
                "Queued and held recipients become deleted: never delivered, and still\n"
                "counted as accepted (stats, verify and queue show account for them). A\n"
                "recipient being delivered right now is left to its worker and listed as\n"
                "'in delivery; not deleted'; the command then exits 3, so a script can run\n"
                "it again once it settles. A message whose recipients are all delivered,\n"
                "bounced or deleted is left as it is.")


@queue.command("bounce")
@config_option
@click.argument("ids", nargs=-1, metavar="[ID]... | -")
@click.option("--all", "every", is_flag=True, help="Every message not yet done.")
@click.option("--reason", default=service.DEFAULT_BOUNCE_REASON, show_default=True,
              help="The diagnostic the sender's notice gives.")
def queue_bounce(config_path: str | None, ids: tuple[str, ...], every: bool,
                 reason: str) -> None:
    """Give up on messages now, telling the sender (exim -Mg).

    Queued and held recipients bounce; a local sender gets a delivery status
    notification (RFC 3464) in the same commit. Null-sender mail is never bounced back.
    A recipient being delivered right now is left to its worker and listed as 'in
    delivery; not bounced'; the command then exits 3, so a script can run it again.
    """
    _act(config_path, Action.BOUNCE, ids, every, reason)


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
    shape = in_service(config, service.queue_shape)
    if as_json:
        click.echo(json.dumps(service.shape_json(shape)))
        return
    click.echo(format_shape(shape, SHAPE_HEADS))


def format_shape(shape: dict[str, list[int]], heads: list[str]) -> str:
    totals = [sum(col) for col in zip(*shape.values(), strict=True)] if shape else \
        [0] * len(heads)
    rows = [("", "T", *heads), ("TOTAL", str(sum(totals)), *map(str, totals))]
    rows += [(name, str(sum(c)), *map(str, c)) for name, c in sorted(shape.items())]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(" ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True))
                     for r in rows)
