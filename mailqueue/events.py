"""Live events: what this process's front end, worker, sweeps and control plane do, for
the subscribers of the HTTP API's event stream.

The :class:`EventHub` observes the app the way :class:`~mailqueue.metrics.Metrics` does
(the accept hook, the worker's settlement observer, the expiry sweep's, the control
plane's window and node changes) and hands each event, serialised once, to every
subscriber that wants its kind. With no subscriber an observation costs one check.

A subscriber's buffer is bounded: one that falls :attr:`EventHub.buffer` events behind
(a client not reading) is dropped, never the process; it reconnects and reads the state
afresh. Delivery is at most once: an event stream is for watching, the queue for truth.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from mailqueue.queue.values import (
    Action,
    BouncedRecipient,
    Change,
    Claim,
    NewMessage,
    RecipientState,
    Settlement,
)
from mailqueue.timeparse import format_time

# Every event name the stream sends, in the order the docs list them.
EVENT_NAMES = ("hello", "counts", "queued", "delivered", "deferred", "bounced", "window",
               "node", "rehearsal")
# Events a subscriber may have waiting before it is dropped.
DEFAULT_BUFFER = 1000


def stamped(name: str, ts: float | None) -> dict[str, Any]:
    """``{name: RFC 3339, name_epoch: seconds}`` (both None for no time)."""
    return {name: None if ts is None else format_time(ts), f"{name}_epoch": ts}


class Subscription:
    """One subscriber's events, waiting to be sent (serialised SSE frames)."""

    def __init__(self, names: Iterable[str], limit: int) -> None:
        self.names = frozenset(names)
        self._limit = limit
        self._waiting: collections.deque[str] = collections.deque()
        self._ready = asyncio.Event()
        self.dropped = False  # fell too far behind: the stream ends
        self.closed = False  # the hub is closing
        # Called once when dropped: the stream closes its connection, since its sender may
        # be stuck writing to a client that reads nothing.
        self.on_drop: Callable[[], None] | None = None

    def offer(self, name: str, frame: str) -> None:
        if name not in self.names or self.dropped:
            return
        if len(self._waiting) >= self._limit:
            self.dropped = True
            self._waiting.clear()
            if self.on_drop is not None:
                self.on_drop()
        else:
            self._waiting.append(frame)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def next_frames(self, idle: float) -> list[str]:
        """The frames waiting, after waiting up to ``idle`` seconds for one ([] then)."""
        if not self._waiting and not (self.dropped or self.closed):
            try:
                await asyncio.wait_for(self._ready.wait(), idle)
            except TimeoutError:
                return []
        self._ready.clear()
        frames = list(self._waiting)
        self._waiting.clear()
        return frames


@dataclasses.dataclass
class EventHub:
    """Publishes events to the subscriptions; the app's observers feed it."""

    buffer: int = DEFAULT_BUFFER
    _subscribers: set[Subscription] = dataclasses.field(default_factory=set)
    _ids: itertools.count[int] = dataclasses.field(default_factory=lambda: itertools.count(1))

    @property
    def listening(self) -> bool:
        """Whether anyone subscribes (observers skip their work otherwise)."""
        return bool(self._subscribers)

    def subscribe(self, names: Iterable[str] = EVENT_NAMES) -> Subscription:
        sub = Subscription(names, self.buffer)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def close(self) -> None:
        """End every subscription (the server is stopping)."""
        for sub in list(self._subscribers):
            sub.close()
        self._subscribers.clear()

    def frame(self, name: str, data: dict[str, Any]) -> str:
        """One Server-Sent Events frame: id, event name, the data as one JSON line."""
        return f"id: {next(self._ids)}\nevent: {name}\ndata: {json.dumps(data)}\n\n"

    def publish(self, name: str, data: dict[str, Any]) -> None:
        if not self._subscribers:
            return
        frame = self.frame(name, data)
        for sub in list(self._subscribers):
            sub.offer(name, frame)
            if sub.dropped:
                self._subscribers.discard(sub)

    # --- the app's observers ----------------------------------------------------------

    def observe_accepted(self, message: NewMessage) -> None:
        """The front end's accept hook: a message committed (250 sent)."""
        if not self._subscribers:
            return
        self.publish("queued", {
            "queue_id": message.queue_id, "sender": message.mail_from,
            "message_id": message.message_id, "size": len(message.body),
            **stamped("at", message.received_at),
            "recipients": [{"address": a, "store": s} for a, s in message.recipients]})

    def observe_settlement(self, settlement: Settlement, claims: Sequence[Claim],
                           now: float) -> None:
        """The worker's observer: each recipient delivered, deferred or bounced."""
        if not self._subscribers:
            return
        by_id = {c.recipient_id: c for c in claims}
        for rid in settlement.delivered:
            claim = by_id[rid]
            self.publish("delivered", _recipient(claim, now) | {
                "attempts": claim.attempts,
                "latency_seconds": round(max(0.0, now - claim.received_at), 3)})
        for rid, next_at, reason in settlement.deferred:
            claim = by_id[rid]
            self.publish("deferred", _recipient(claim, now) | {
                "attempts": claim.attempts, "reason": reason,
                **stamped("next_attempt", next_at)})
        for rid, reason in settlement.bounced:
            self.publish("bounced", _recipient(by_id[rid], now) | {"reason": reason})

    def observe_expired(self, bounced: Sequence[BouncedRecipient], now: float) -> None:
        """The expiry sweep's observer: recipients given up on after their lifetime."""
        for item in bounced if self._subscribers else ():
            self.publish("bounced", {"queue_id": item.queue_id, "recipient": item.address,
                                     "store": item.store, **stamped("at", now),
                                     "reason": item.reason})

    def operator_changed(self, action: Action, changes: Sequence[Change], reason: str,
                         now: float) -> None:
        """An operator verb run in this process: its bounces are events too."""
        if action is not Action.BOUNCE or not self._subscribers:
            return
        for change in changes:
            if change.after == RecipientState.BOUNCED:
                self.publish("bounced", {"queue_id": change.queue_id,
                                         "recipient": change.address, "store": None,
                                         **stamped("at", now), "reason": reason})

    def window_changed(self, change: str, window: dict[str, Any]) -> None:
        """The control plane saw a window start, end, move or get cancelled."""
        self.publish("window", {"change": change, "window": window})

    def node_changed(self, node: dict[str, Any]) -> None:
        """The control plane saw a node change mode."""
        self.publish("node", {"node": node})


def _recipient(claim: Claim, now: float) -> dict[str, Any]:
    return {"queue_id": claim.queue_id, "recipient": claim.address, "store": claim.store,
            **stamped("at", now)}

