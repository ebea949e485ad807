"""The operator verbs of :class:`~mailqueue.queue.sqlstore.SqlQueueStore`.

A mixin, so that the core claim/settle path stays short to read. Everything here is plain
SQLAlchemy Core that runs the same on SQLite and PostgreSQL: no dialect-only functions,
``RETURNING`` (SQLite ≥ 3.35), ``CASE`` for the age buckets, and explicit deletes instead of
relying on ``ON DELETE CASCADE`` being switched on.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Integer,
    String,
    and_,
    any_,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from mailqueue import faults
from mailqueue.errors import UnknownQueueIdError
from mailqueue.queue import postgres
from mailqueue.queue.schema import messages, recipient_events, recipients
from mailqueue.queue.values import (
    FINAL_STATES,
    SHAPE_EDGES_MINUTES,
    Action,
    ActionResult,
    BouncedRecipient,
    Change,
    DrainProgress,
    EventKind,
    MessageDetail,
    MessageView,
    NewMessage,
    Notify,
    PendingRecipient,
    QueueFilter,
    QueueReport,
    RecipientEvent,
    RecipientState,
    RecipientView,
    Settlement,
)

_FINAL = [s.value for s in FINAL_STATES]
_QUEUED, _HELD, _ACTIVE = (RecipientState.QUEUED.value, RecipientState.HELD.value,
                           RecipientState.ACTIVE.value)
_DELIVERED, _BOUNCED, _DELETED = (RecipientState.DELIVERED.value,
                                  RecipientState.BOUNCED.value, RecipientState.DELETED.value)
_CHUNK = 500  # ids per IN (...) list: well under SQLite's and PostgreSQL's limits

# Which recipients each action touches, and the state it leaves them in.
_TRANSITIONS: dict[Action, tuple[tuple[str, ...], str]] = {
    Action.HOLD: ((_QUEUED,), _HELD),
    Action.RELEASE: ((_HELD,), _QUEUED),
    Action.RETRY: ((_QUEUED,), _QUEUED),
}
_EVENT_OF = {Action.HOLD: EventKind.HELD, Action.RELEASE: EventKind.RELEASED,
             Action.RETRY: EventKind.RETRY}
# Actions that stop delivery name the recipients they found in delivery and left alone;
# release and retry have nothing to say about a recipient a worker is delivering.
_STOPS_DELIVERY = (Action.HOLD,)


def message_rows(batch: Sequence[NewMessage]) -> list[dict[str, Any]]:
    return [{
        "queue_id": m.queue_id, "mail_from": m.mail_from, "received_at": m.received_at,
        "size": len(m.body), "message_id": m.message_id, "digest": m.digest,
        "helo": m.helo, "peer": m.peer, "rcpt_count": len(m.recipients), "body": m.body,
        "auth_user": m.auth_user, "tls": m.tls,
    } for m in batch]


def recipient_rows(batch: Sequence[NewMessage]) -> list[dict[str, Any]]:
    return [{
        "queue_id": m.queue_id, "address": address, "store": store,
        "state": _QUEUED, "attempts": 0, "next_attempt_at": m.received_at,
    } for m in batch for address, store in m.recipients]


async def insert_messages(conn: AsyncConnection, batch: Sequence[NewMessage]) -> None:
    """Insert ``batch`` and its recipients in the caller's transaction."""
    if batch:
        await conn.execute(insert(messages), message_rows(batch))
        faults.hit("enqueue.mid_batch")
        await conn.execute(insert(recipients), recipient_rows(batch))


def _delay_warned() -> ColumnElement[bool]:
    """Whether the recipient row in the query has had its delay warning."""
    return exists().where(recipient_events.c.recipient_id == recipients.c.id,
                          recipient_events.c.kind == EventKind.DELAY_WARNING.value)


def chunks(values: Sequence[Any]) -> list[Sequence[Any]]:
    """``values`` in slices short enough for one statement's IN (...) list."""
    return [values[i:i + _CHUNK] for i in range(0, len(values), _CHUNK)]


def ids_in(conn: AsyncConnection, column: ColumnElement[int]) -> ColumnElement[bool]:
    """``column IN :ids``, the ids passed as one parameter named ``ids``, in any number:
    execute the statement with ``{"ids": ids_param(conn, ids)}``.

    The statement's text does not depend on how many ids there are, so it is compiled once
    and kept (an ``IN (...)`` list of a thousand is rendered and bound one parameter at a
    time on every run, which costs the event loop more than the database's own work):
    ``IN (SELECT value FROM json_each(?))`` on SQLite, ``= ANY(?)`` with an array on
    PostgreSQL. Both are primary key or index lookups, one per id. An SQLite library built
    without its JSON functions gets the ``IN (...)`` list. The expression is built once per
    database kind and column.
    """
    key = (conn.dialect.name, column)
    found = _IDS_IN.get(key)
    if found is None:
        found = _IDS_IN[key] = _ids_in(conn.dialect.name, column)
    return found


def ids_param(conn: AsyncConnection, ids: Sequence[int]) -> Any:
    """The value of :func:`ids_in`'s ``ids`` parameter."""
    if conn.dialect.name == "sqlite" and _sqlite_json():
        return json.dumps(list(ids))
    return list(ids)


def ids_chunks(conn: AsyncConnection, ids: Sequence[int]) -> list[Sequence[int]]:
    """``ids`` in as many parts as :func:`ids_in` needs: one, or slices for an ``IN (...)``
    list where it falls back to one (an operator action may touch more recipients than a
    statement may have parameters)."""
    if conn.dialect.name == "sqlite" and not _sqlite_json():
        return chunks(ids)
    return [ids] if ids else []


_IDS_IN: dict[tuple[str, ColumnElement[int]], ColumnElement[bool]] = {}


def _ids_in(dialect: str, column: ColumnElement[int]) -> ColumnElement[bool]:
    if dialect == "sqlite":
        if not _sqlite_json():
            return column.in_(bindparam("ids", expanding=True))
        values = func.json_each(bindparam("ids", type_=String)).table_valued("value")
        return column.in_(select(values.c.value).scalar_subquery())
    return column == any_(bindparam("ids", type_=ARRAY(Integer)))


@functools.cache
def _sqlite_json() -> bool:
    """Whether this process's SQLite library has ``json_each`` (every build since 3.38
    does unless built without it; before, most builds do)."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("SELECT value FROM json_each('[1]')").fetchall()
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    return True


class SqlAdminMixin:
    """Operator verbs: list, show, hold/release/retry/delete/bounce, shape, report, sweeps."""

    def _tx(self, write: bool = False) -> AbstractAsyncContextManager[AsyncConnection]:
        raise NotImplementedError

    async def _finish_messages(self, conn: AsyncConnection, recipient_ids: list[int],
                               now: float) -> None:
        raise NotImplementedError

    # --- reads -----------------------------------------------------------------------

    async def list_messages(self, query: QueueFilter) -> list[MessageView]:
        """Messages matching ``query``, oldest first, with all their recipients."""
        async with self._tx() as conn:
            stmt = (select(*_MESSAGE_COLUMNS).where(*_message_conditions(query))
                    .order_by(messages.c.received_at, messages.c.queue_id))
            if query.limit:
                stmt = stmt.limit(query.limit)
            rows = list(await conn.execute(stmt))
            by_message = await _recipients_of(conn, [r.queue_id for r in rows])
            return [_message_view(r, by_message.get(r.queue_id, ())) for r in rows]

    async def message(self, queue_id: str) -> MessageDetail | None:
        """One message with its history and (while it is not done) its content."""
        async with self._tx() as conn:
            row = (await conn.execute(select(*_MESSAGE_COLUMNS, messages.c.body)
                                      .where(messages.c.queue_id == queue_id))).first()
            if row is None:
                return None
            rcpts = (await _recipients_of(conn, [queue_id])).get(queue_id, ())
            events = await conn.execute(
                select(recipient_events.c.at, recipient_events.c.kind,
                       recipient_events.c.detail, recipients.c.address)
                .select_from(recipient_events.outerjoin(
                    recipients, recipients.c.id == recipient_events.c.recipient_id))
                .where(recipient_events.c.queue_id == queue_id)
                .order_by(recipient_events.c.at, recipient_events.c.id))
            history = tuple(RecipientEvent(at=e.at, kind=e.kind, address=e.address,
                                           detail=e.detail) for e in events)
            return MessageDetail(message=_message_view(row, rcpts), events=history,
                                 body=row.body)

    async def shape(self, now: float, edges_minutes: Sequence[int] = SHAPE_EDGES_MINUTES,
                    ) -> dict[str, list[int]]:
        """Messages not yet delivered, per store, counted in age buckets (qshape)."""
        age = literal(now) - messages.c.received_at
        bucket = case(*[(age < edge * 60.0, index) for index, edge in enumerate(edges_minutes)],
                      else_=len(edges_minutes))
        stmt = (select(recipients.c.store, bucket.label("bucket"),
                       func.count(func.distinct(recipients.c.queue_id)))
                .join(messages, messages.c.queue_id == recipients.c.queue_id)
                .where(recipients.c.state.not_in(_FINAL))
                .group_by(recipients.c.store, bucket))
        shape: dict[str, list[int]] = {}
        async with self._tx() as conn:
            for store, index, count in await conn.execute(stmt):
                shape.setdefault(store, [0] * (len(edges_minutes) + 1))[int(index)] += int(count)
        return shape

    async def report(self, now: float, recent_seconds: float = 60.0) -> QueueReport:
        """Counts by state and store, bytes, totals and the recent delivery rate."""
        async with self._tx() as conn:
            depth: dict[tuple[str, str], int] = {}
            size: dict[tuple[str, str], int] = {}
            for store, state, count, total in await conn.execute(
                    select(recipients.c.store, recipients.c.state, func.count(),
                           func.coalesce(func.sum(messages.c.size), 0))
                    .join(messages, messages.c.queue_id == recipients.c.queue_id)
                    .group_by(recipients.c.store, recipients.c.state)):
                depth[(store, state)] = int(count)
                size[(store, state)] = int(total)
            pending = (await conn.execute(
                select(func.count(), func.coalesce(func.sum(messages.c.size), 0),
                       func.min(messages.c.received_at))
                .where(messages.c.done_at.is_(None)))).one()
            accepted = (await conn.execute(select(func.count()).select_from(messages))).scalar()
            recent = (await conn.execute(
                select(func.count()).select_from(recipients)
                .where(recipients.c.state == RecipientState.DELIVERED.value,
                       recipients.c.settled_at >= now - recent_seconds))).scalar()
        by_state = {s.value: 0 for s in RecipientState}
        for (_, state), count in depth.items():
            by_state[state] = by_state.get(state, 0) + count
        return QueueReport(
            by_state=by_state, depth=depth, bytes=size, messages_pending=int(pending[0]),
            bytes_pending=int(pending[1]), oldest_pending=pending[2], accepted=int(accepted or 0),
            delivered=by_state[_DELIVERED], bounced=by_state[_BOUNCED],
            deleted=by_state[_DELETED], delivered_recent=int(recent or 0),
            recent_seconds=recent_seconds)

    async def drain_progress(self, stores: Sequence[str], since: float) -> DrainProgress:
        """Recipients of ``stores`` still to go, and those settled since ``since``."""
        in_stores = recipients.c.store.in_(stores) if stores else literal(True)
        async with self._tx() as conn:
            open_counts = {state: int(count) for state, count in await conn.execute(
                select(recipients.c.state, func.count())
                .where(in_stores, recipients.c.state.not_in(_FINAL))
                .group_by(recipients.c.state))}
            settled = {state: (int(count), last) for state, count, last in await conn.execute(
                select(recipients.c.state, func.count(), func.max(recipients.c.settled_at))
                .where(in_stores, recipients.c.state.in_(_FINAL),
                       recipients.c.settled_at >= since)
                .group_by(recipients.c.state))}
        # The drain ends with its last delivery or bounce, not with an operator's delete.
        lasts = [last for state, (_, last) in settled.items()
                 if state != _DELETED and last is not None]
        return DrainProgress(
            remaining=open_counts.get(_QUEUED, 0) + open_counts.get(_ACTIVE, 0),
            held=open_counts.get(_HELD, 0),
            delivered=settled.get(_DELIVERED, (0, None))[0],
            bounced=settled.get(_BOUNCED, (0, None))[0],
            last_settled=max(lasts) if lasts else None,
            deleted=settled.get(_DELETED, (0, None))[0])

    # --- operator actions ------------------------------------------------------------

    async def change(self, action: Action, queue_ids: Sequence[str] | None,
                     now: float) -> ActionResult:
        """Hold, release or retry the recipients of ``queue_ids`` (None: every message).

        Raises :class:`UnknownQueueIdError` (and changes nothing) if an id does not exist.
        Recipients being delivered right now (``active``) and final ones are left alone; a
        hold names the active ones in ``in_delivery``.
        """
        sources, target = _TRANSITIONS[action]
        async with self._tx(write=True) as conn:
            ids = await _resolve(conn, queue_ids)
            changes: list[Change] = []
            left: list[Change] = []
            for chunk in chunks(ids):
                result = await conn.execute(
                    update(recipients)
                    .where(recipients.c.queue_id.in_(chunk), recipients.c.state.in_(sources))
                    .values(state=target, next_attempt_at=now)
                    .returning(recipients.c.id, recipients.c.queue_id, recipients.c.address))
                rows = list(result)
                changes += [Change(r.queue_id, r.address, sources[0], target) for r in rows]
                await add_events(conn, [(r.queue_id, r.id) for r in rows], now,
                                  _EVENT_OF[action], "by operator")
                if action in _STOPS_DELIVERY:
                    left += await _left_in_delivery(conn, chunk, {r.id for r in rows},
                                                    keep=(target,))
            return _result(changes, left)

    async def delete(self, queue_ids: Sequence[str] | None, now: float) -> ActionResult:
        """Delete the queued and held recipients of ``queue_ids`` (None: every message not
        yet done), as ``postsuper -d`` does, telling no one.

        A deleted recipient keeps its row in the final state ``deleted`` with a history
        entry, so the ledger still counts it as accepted; its message is done (and its
        content dropped) once every recipient is final. A recipient a worker is delivering
        (``active``) is not taken from it: it is named in ``in_delivery`` and settles as
        its delivery goes. Raises :class:`UnknownQueueIdError` (changing nothing) for an
        unknown id.
        """
        async with self._tx(write=True) as conn:
            ids = await _resolve(conn, queue_ids)
            changes: list[Change] = []
            left: list[Change] = []
            deleted: list[int] = []
            for chunk in chunks(ids):
                taken = await _mark_deleted(conn, chunk, now)
                changes += [c for _, c in taken]
                deleted += [rid for rid, _ in taken]
                await add_events(conn, [(c.queue_id, rid) for rid, c in taken], now,
                                  EventKind.DELETED, "by operator")
                left += await _left_in_delivery(conn, chunk, {rid for rid, _ in taken})
            await self._finish_messages(conn, deleted, now)
            return _result(changes, left)

    async def bounce(self, queue_ids: Sequence[str] | None, reason: str, now: float,
                     notify: Notify | None = None) -> ActionResult:
        """Give up on the queued and held recipients of ``queue_ids`` now (``exim -Mg``);
        recipients a worker is delivering are left to it and named in ``in_delivery``."""
        async with self._tx(write=True) as conn:
            ids = await _resolve(conn, queue_ids)
            before: dict[int, str] = {}  # recipient id -> its state before the bounce
            for chunk in chunks(ids):
                before.update((r.id, r.state) for r in await conn.execute(
                    select(recipients.c.id, recipients.c.state)
                    .where(recipients.c.queue_id.in_(chunk),
                           recipients.c.state.in_([_QUEUED, _HELD]))))
            bounced = await self._bounce_in(conn, dict.fromkeys(before, reason), now,
                                            EventKind.BOUNCED, notify)
            taken = {b.recipient_id for b in bounced}
            left: list[Change] = []
            for chunk in chunks(ids):
                left += await _left_in_delivery(conn, chunk, taken)
            return _result([Change(b.queue_id, b.address, before.get(b.recipient_id, ""),
                                   _BOUNCED) for b in bounced], left)

    async def expire(self, reasons: Mapping[int, str], now: float,
                     notify: Notify | None = None) -> list[BouncedRecipient]:
        """Bounce recipients past their lifetime (by id, each with its reason)."""
        async with self._tx(write=True) as conn:
            return await self._bounce_in(conn, reasons, now, EventKind.EXPIRED, notify)

    async def _bounce_in(self, conn: AsyncConnection, reasons: Mapping[int, str], now: float,
                         kind: EventKind, notify: Notify | None) -> list[BouncedRecipient]:
        bounced: list[BouncedRecipient] = []
        for chunk in chunks(list(reasons)):
            # Only recipients nobody is delivering: an active one settles on its own.
            taken = list((await conn.execute(
                update(recipients)
                .where(recipients.c.id.in_(chunk), recipients.c.state.in_([_QUEUED, _HELD]))
                .values(state=RecipientState.BOUNCED.value, settled_at=now)
                .returning(recipients.c.id))).scalars())
            if not taken:
                continue
            await conn.execute(
                update(recipients).where(recipients.c.id == bindparam("rid"))
                .values(last_error=bindparam("err")),
                [{"rid": rid, "err": reasons[rid]} for rid in taken])
            bounced += await _bounced_details(conn, taken, reasons)
        await add_events(conn, [(b.queue_id, b.recipient_id, b.reason) for b in bounced],
                          now, kind)
        await self._notify(conn, bounced, now, notify)
        await self._finish_messages(conn, [b.recipient_id for b in bounced], now)
        return bounced

    async def _notify(self, conn: AsyncConnection, bounced: Sequence[BouncedRecipient],
                      now: float, notify: Notify | None) -> None:
        """Enqueue the notices for ``bounced`` in this transaction and note them."""
        if not bounced or notify is None:
            return
        notices = notify(bounced, now)
        await insert_messages(conn, notices)
        await _note_notices(conn, [(b.queue_id, b.recipient_id, b.mail_from) for b in bounced],
                            notices, now)

    # --- sweeps (expiry, delay warnings) ---------------------------------------------

    async def pending_before(self, received_before: float, limit: int,
                             unwarned: bool = False) -> list[PendingRecipient]:
        """Recipients not yet final of messages received before ``received_before``;
        with ``unwarned``, only those without a delay warning yet."""
        conditions: list[ColumnElement[bool]] = [
            messages.c.received_at < received_before,
            recipients.c.state.not_in(_FINAL)]
        if unwarned:
            conditions.append(~_delay_warned())
        async with self._tx() as conn:
            rows = await conn.execute(
                select(recipients.c.id, recipients.c.queue_id, recipients.c.address,
                       recipients.c.store, recipients.c.state, recipients.c.attempts,
                       recipients.c.last_error, messages.c.mail_from, messages.c.received_at,
                       messages.c.body)
                .join(messages, messages.c.queue_id == recipients.c.queue_id)
                .where(*conditions).order_by(messages.c.received_at).limit(limit))
            return [PendingRecipient(id=r.id, queue_id=r.queue_id, address=r.address,
                                     store=r.store, state=r.state, attempts=r.attempts,
                                     mail_from=r.mail_from, received_at=r.received_at,
                                     last_error=r.last_error, body=r.body or b"")
                    for r in rows]

    async def record_delay_warnings(
            self, due: Sequence[PendingRecipient],
            notices_for: Callable[[Sequence[PendingRecipient]], Sequence[NewMessage]],
            now: float) -> list[PendingRecipient]:
        """Warn about those of ``due`` no process has warned about yet: their history rows
        and ``notices_for(them)`` in one transaction. Sweeps in several processes take it
        one at a time (SQLite's write lock; an advisory lock on PostgreSQL), so the re-check
        inside it sees any warning another process committed."""
        async with self._tx(write=True) as conn:
            if conn.dialect.name == "postgresql":
                await postgres.delay_warning_lock(conn)
            warned_already: set[int] = set()
            for chunk in chunks([p.id for p in due]):
                warned_already.update((await conn.execute(
                    select(recipients.c.id).where(recipients.c.id.in_(chunk), _delay_warned())
                )).scalars())
            fresh = [p for p in due if p.id not in warned_already]
            if fresh:
                await insert_messages(conn, list(notices_for(fresh)))
                await add_events(conn, [(p.queue_id, p.id, f"sender <{p.mail_from}>")
                                         for p in fresh], now, EventKind.DELAY_WARNING)
            return fresh

    async def record_settlement(self, conn: AsyncConnection, settlement: Settlement,
                                now: float) -> None:
        """History rows for one settled batch, and the notices it carries."""
        for part in ids_chunks(conn, settlement.delivered):
            # The hot path: one INSERT ... SELECT, no round trip for the queue ids.
            await conn.execute(insert(recipient_events).from_select(
                ["queue_id", "recipient_id", "at", "kind"],
                select(recipients.c.queue_id, recipients.c.id, literal(now),
                       literal(EventKind.DELIVERED.value))
                .where(ids_in(conn, recipients.c.id))), {"ids": ids_param(conn, part)})
        rows: list[tuple[int, str | None, EventKind]] = []
        rows += [(i, err, EventKind.DEFERRED) for i, _, err in settlement.deferred]
        rows += [(i, err, EventKind.BOUNCED) for i, err in settlement.bounced]
        queue_of: dict[int, str] = {}
        for chunk in chunks([i for i, _, _ in rows]):
            queue_of.update((r.id, r.queue_id) for r in await conn.execute(
                select(recipients.c.id, recipients.c.queue_id)
                .where(recipients.c.id.in_(chunk))))
        if queue_of:
            await conn.execute(insert(recipient_events), [
                {"queue_id": queue_of[i], "recipient_id": i, "at": now, "kind": k.value,
                 "detail": d} for i, d, k in rows if i in queue_of])
        if settlement.bounced and settlement.notices is not None:
            await insert_messages(conn, settlement.notices)
            bounced_ids = [i for i, _ in settlement.bounced]
            senders = await conn.execute(
                select(recipients.c.queue_id, recipients.c.id, messages.c.mail_from)
                .join(messages, messages.c.queue_id == recipients.c.queue_id)
                .where(recipients.c.id.in_(bounced_ids)))
            await _note_notices(conn, [tuple(r) for r in senders], settlement.notices, now)


async def _note_notices(conn: AsyncConnection, bounced: Sequence[tuple[Any, ...]],
                        notices: Sequence[NewMessage], now: float) -> None:
    """History rows saying whether each bounced (queue_id, recipient_id, sender) got a
    notice, and if not, why."""
    sent = {m.recipients[0][0].lower() for m in notices if m.recipients}
    done, missing = [], []
    for queue_id, rid, sender in bounced:
        if sender and sender.lower() in sent:
            done.append((queue_id, rid, f"to <{sender}>"))
        else:
            missing.append((queue_id, rid, "null sender: never bounce a bounce" if not sender
                            else f"sender <{sender}> is not local"))
    await add_events(conn, done, now, EventKind.NOTICE_QUEUED)
    await add_events(conn, missing, now, EventKind.NOTICE_NOT_SENT)


# --- helpers ------------------------------------------------------------------------------

_MESSAGE_COLUMNS = (messages.c.queue_id, messages.c.mail_from, messages.c.received_at,
                    messages.c.size, messages.c.message_id, messages.c.helo, messages.c.peer,
                    messages.c.done_at, messages.c.auth_user, messages.c.tls)


def _message_conditions(query: QueueFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    wants_final = any(s in _FINAL for s in query.states)
    if not (query.include_done or wants_final):
        conditions.append(messages.c.done_at.is_(None))
    if query.sender:
        conditions.append(func.lower(messages.c.mail_from).contains(query.sender.lower(),
                                                                    autoescape=True))
    if query.received_before is not None:
        conditions.append(messages.c.received_at < query.received_before)
    if query.received_after is not None:
        conditions.append(messages.c.received_at > query.received_after)
    if query.message_id:
        conditions.append(_contains(messages.c.message_id, query.message_id))
    if query.text:
        conditions.append(or_(
            messages.c.queue_id == query.text.strip(),
            _contains(messages.c.message_id, query.text),
            _contains(messages.c.mail_from, query.text),
            exists().where(recipients.c.queue_id == messages.c.queue_id,
                           _contains(recipients.c.address, query.text))))
    if query.after is not None:
        conditions.append(_after(query.after))
    rcpt: list[ColumnElement[bool]] = []
    if query.states:
        rcpt.append(recipients.c.state.in_(query.states))
    if query.store:
        rcpt.append(recipients.c.store == query.store)
    if query.recipient:
        rcpt.append(func.lower(recipients.c.address).contains(query.recipient.lower(),
                                                              autoescape=True))
    if rcpt:
        conditions.append(exists().where(recipients.c.queue_id == messages.c.queue_id, *rcpt))
    return conditions


def _contains(column: Any, text: str) -> ColumnElement[bool]:
    """``column`` holds ``text``, case-insensitively (``%`` and ``_`` match themselves)."""
    return func.lower(column).contains(text.lower(), autoescape=True)


def _after(queue_id: str) -> ColumnElement[bool]:
    """Messages after ``queue_id`` in the list's order (received time, then queue id)."""
    at = select(messages.c.received_at).where(messages.c.queue_id == queue_id) \
        .scalar_subquery()
    return or_(messages.c.received_at > at,
               and_(messages.c.received_at == at, messages.c.queue_id > queue_id))


async def _recipients_of(conn: AsyncConnection, queue_ids: Sequence[str],
                         ) -> dict[str, tuple[RecipientView, ...]]:
    found: dict[str, list[RecipientView]] = defaultdict(list)
    for chunk in chunks(list(queue_ids)):
        rows = await conn.execute(select(recipients).where(recipients.c.queue_id.in_(chunk))
                                  .order_by(recipients.c.id))
        for r in rows:
            found[r.queue_id].append(RecipientView(
                id=r.id, address=r.address, store=r.store, state=r.state, attempts=r.attempts,
                next_attempt_at=r.next_attempt_at, last_error=r.last_error,
                settled_at=r.settled_at))
    return {k: tuple(v) for k, v in found.items()}


def _message_view(row: Any, rcpts: Sequence[RecipientView]) -> MessageView:
    return MessageView(queue_id=row.queue_id, mail_from=row.mail_from,
                       received_at=row.received_at, size=row.size, message_id=row.message_id,
                       helo=row.helo, peer=row.peer, done_at=row.done_at,
                       recipients=tuple(rcpts), auth_user=row.auth_user, tls=row.tls)


def _result(changes: Sequence[Change], left: Sequence[Change]) -> ActionResult:
    def order(c: Change) -> tuple[str, str]:
        return c.queue_id, c.address
    return ActionResult(changed=tuple(sorted(changes, key=order)),
                        in_delivery=tuple(sorted(left, key=order)))


async def _mark_deleted(conn: AsyncConnection, queue_ids: Sequence[str],
                        now: float) -> list[tuple[int, Change]]:
    """Mark the queued and held recipients of ``queue_ids`` deleted; (recipient id, change)
    for each. Only those: an active recipient is its worker's to settle. One UPDATE per
    state it leaves, each re-checking the state, so every change knows its state before and
    a recipient claimed meanwhile is skipped rather than taken."""
    marked: list[tuple[int, Change]] = []
    for state in (_QUEUED, _HELD):
        rows = await conn.execute(
            update(recipients)
            .where(recipients.c.queue_id.in_(queue_ids), recipients.c.state == state)
            .values(state=_DELETED, settled_at=now)
            .returning(recipients.c.id, recipients.c.queue_id, recipients.c.address))
        marked += [(r.id, Change(r.queue_id, r.address, state, _DELETED)) for r in rows]
    return marked


async def _left_in_delivery(conn: AsyncConnection, queue_ids: Sequence[str],
                            changed: set[int], keep: Sequence[str] = ()) -> list[Change]:
    """The recipients of ``queue_ids`` an action left alone because a worker held them:
    read after the action's UPDATE in its transaction, every one neither changed, nor
    final, nor already where the action puts it (``keep``). That is ``active``; on
    PostgreSQL also one its worker deferred between the UPDATE and this read."""
    rows = await conn.execute(
        select(recipients.c.id, recipients.c.queue_id, recipients.c.address,
               recipients.c.state)
        .where(recipients.c.queue_id.in_(queue_ids),
               recipients.c.state.not_in([*_FINAL, *keep])))
    return [Change(r.queue_id, r.address, r.state, r.state) for r in rows
            if r.id not in changed]


async def _resolve(conn: AsyncConnection, queue_ids: Sequence[str] | None) -> list[str]:
    """The ids to act on: all pending messages for None, else ``queue_ids`` once each,
    after checking that every one exists."""
    if queue_ids is None:
        return list((await conn.execute(select(messages.c.queue_id)
                                        .where(messages.c.done_at.is_(None))
                                        .order_by(messages.c.received_at))).scalars())
    wanted = list(dict.fromkeys(queue_ids))
    known: set[str] = set()
    for chunk in chunks(wanted):
        known.update((await conn.execute(select(messages.c.queue_id)
                                         .where(messages.c.queue_id.in_(chunk)))).scalars())
    unknown = [q for q in wanted if q not in known]
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5
                                          else "")
        raise UnknownQueueIdError(f"no such queue id: {shown}; nothing was changed")
    return wanted


async def _bounced_details(conn: AsyncConnection, ids: Sequence[int],
                           reasons: Mapping[int, str]) -> list[BouncedRecipient]:
    rows = await conn.execute(
        select(recipients.c.id, recipients.c.queue_id, recipients.c.address,
               recipients.c.store, recipients.c.attempts, messages.c.mail_from,
               messages.c.received_at, messages.c.body)
        .join(messages, messages.c.queue_id == recipients.c.queue_id)
        .where(recipients.c.id.in_(ids)).order_by(recipients.c.id))
    return [BouncedRecipient(recipient_id=r.id, queue_id=r.queue_id, address=r.address,
                             store=r.store, attempts=r.attempts, mail_from=r.mail_from,
                             received_at=r.received_at, reason=reasons[r.id],
                             body=r.body or b"") for r in rows]


async def add_events(conn: AsyncConnection, rows: Sequence[tuple[Any, ...]], now: float,
                      kind: EventKind, detail: str | None = None) -> None:
    """Insert history rows from (queue_id, recipient_id[, detail]) tuples."""
    if rows:
        await conn.execute(insert(recipient_events), [
            {"queue_id": r[0], "recipient_id": r[1], "at": now, "kind": kind.value,
             "detail": r[2] if len(r) > 2 else detail} for r in rows])
