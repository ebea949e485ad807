"""What the operator verbs of the queue take and return (``mailqueue queue ...``, stats,
metrics, expiry). Plain values: the SQL behind them lives in :mod:`mailqueue.queue.sqladmin`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from enum import StrEnum

from mailqueue.queue.models import NewMessage

# qshape's age buckets, in minutes: each column holds messages younger than its edge.
SHAPE_EDGES_MINUTES = (5, 10, 20, 40, 80, 160, 320, 640, 1280)


class Action(StrEnum):
    """Operator actions on queued recipients, as ``queue hold|release|...`` names them."""

    HOLD = "hold"
    RELEASE = "release"
    RETRY = "retry"
    DELETE = "delete"
    BOUNCE = "bounce"


class EventKind(StrEnum):
    """Entries of a recipient's history."""

    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    EXPIRED = "expired"
    HELD = "held"
    RELEASED = "released"
    RETRY = "retry"
    DELETED = "deleted"
    DELAY_WARNING = "delay_warning"
    NOTICE_QUEUED = "notice_queued"
    NOTICE_NOT_SENT = "notice_not_sent"


@dataclasses.dataclass(frozen=True)
class QueueFilter:
    """Which messages ``queue list`` shows; a message matches if any recipient matches."""

    states: tuple[str, ...] = ()
    store: str | None = None
    sender: str | None = None  # case-insensitive substring
    recipient: str | None = None  # case-insensitive substring
    received_before: float | None = None
    include_done: bool = False
    limit: int | None = None


@dataclasses.dataclass(frozen=True)
class RecipientView:
    id: int
    address: str
    store: str
    state: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    settled_at: float | None


@dataclasses.dataclass(frozen=True)
class MessageView:
    queue_id: str
    mail_from: str
    received_at: float
    size: int
    message_id: str | None
    helo: str
    peer: str
    done_at: float | None
    recipients: tuple[RecipientView, ...]


@dataclasses.dataclass(frozen=True)
class RecipientEvent:
    at: float
    kind: str
    address: str | None
    detail: str | None


@dataclasses.dataclass(frozen=True)
class MessageDetail:
    """``queue show``: the envelope, the history, and the message while it is queued."""

    message: MessageView
    events: tuple[RecipientEvent, ...]
    body: bytes | None


@dataclasses.dataclass(frozen=True)
class Change:
    """One recipient an operator action changed (or, in ``ActionResult.in_delivery``, left
    alone: then ``before`` and ``after`` are both the state it was found in)."""

    queue_id: str
    address: str
    before: str
    after: str


@dataclasses.dataclass(frozen=True)
class ActionResult:
    """What one operator action did, read in the transaction that did it.

    ``in_delivery`` names the recipients the action would have changed but found leased to
    a worker (``active``): an operator verb never races a delivery, so they are left for
    their worker to settle. Running the action again once they settle applies it to any
    that are queued again (a deferral) and changes nothing for delivered ones.
    """

    changed: tuple[Change, ...] = ()
    in_delivery: tuple[Change, ...] = ()


@dataclasses.dataclass(frozen=True)
class BouncedRecipient:
    """A recipient given up on, with what a delivery status notification needs."""

    recipient_id: int
    queue_id: str
    address: str
    store: str
    attempts: int
    mail_from: str
    received_at: float
    reason: str
    body: bytes


# Builds the notices (DSNs) for recipients bounced in one transaction; they are enqueued in
# that same transaction, so a bounce and its notice are durable together.
Notify = Callable[[Sequence[BouncedRecipient], float], list[NewMessage]]


@dataclasses.dataclass(frozen=True)
class PendingRecipient:
    """A recipient not yet final (queued, active or held), as the sweeps see it."""

    id: int
    queue_id: str
    address: str
    store: str
    state: str
    attempts: int
    mail_from: str
    received_at: float
    last_error: str | None
    body: bytes


@dataclasses.dataclass(frozen=True)
class QueueReport:
    """Everything ``stats`` and ``/metrics`` show, read in one transaction."""

    by_state: dict[str, int]
    depth: dict[tuple[str, str], int]  # (store, state) -> recipients
    bytes: dict[tuple[str, str], int]  # (store, state) -> bytes still to deliver
    messages_pending: int
    bytes_pending: int
    oldest_pending: float | None
    accepted: int  # messages accepted: never goes down (deleted mail stays in the ledger)
    delivered: int
    bounced: int
    deleted: int
    delivered_recent: int
    recent_seconds: float

    @property
    def recipients_accepted(self) -> int:
        """Recipients of every accepted message, in whatever state."""
        return sum(self.by_state.values())

    @property
    def drain_rate(self) -> float:
        """Recipients delivered per second over the last ``recent_seconds``."""
        return self.delivered_recent / self.recent_seconds if self.recent_seconds else 0.0


@dataclasses.dataclass(frozen=True)
class DrainProgress:
    """How far the recipients of some stores have drained since a moment."""

    remaining: int  # queued or being delivered
    held: int  # held by an operator: not waited for
    delivered: int
    bounced: int
    last_settled: float | None  # the last delivery or bounce
    deleted: int = 0  # deleted by an operator since the moment
