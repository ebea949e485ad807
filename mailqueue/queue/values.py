"""The queue's values: what goes in (a new message), what comes out (claims, settlements,
stats, the ledger), and what the operator verbs take and return (filters, views, actions,
reports). Plain data with no I/O; the store protocols in :mod:`mailqueue.queue.store` and
every backend speak in these."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from enum import StrEnum

from mailqueue.errors import RemoteReply

_B32 = "0123456789BCDFGHJKLMNPQRSTVWXYZ"  # no vowels: ids never spell words


class RecipientState(StrEnum):
    QUEUED = "queued"
    ACTIVE = "active"
    HELD = "held"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    DELETED = "deleted"  # removed by an operator: never delivered, no notice sent


# A recipient in one of these is settled for good; a message is done when all of its
# recipients are. A deleted recipient stays in the ledger (accepted totals never shrink).
FINAL_STATES = (RecipientState.DELIVERED, RecipientState.BOUNCED, RecipientState.DELETED)


def new_queue_id(now: float | None = None) -> str:
    """A 14-character id that sorts by acceptance time (ms) and is unique across processes."""
    ms = int((time.time() if now is None else now) * 1000)
    value = (ms << 30) | int.from_bytes(os.urandom(4), "big") >> 2
    chars = []
    for _ in range(14):
        value, rest = divmod(value, 31)
        chars.append(_B32[rest])
    return "".join(reversed(chars))


@dataclasses.dataclass(frozen=True)
class NewMessage:
    """A message accepted by the front end, ready to be committed."""

    queue_id: str
    mail_from: str
    recipients: tuple[tuple[str, str], ...]  # (address, store name)
    body: bytes
    received_at: float
    helo: str = ""
    peer: str = ""
    message_id: str | None = None
    digest: str = ""
    auth_user: str | None = None  # the user the session authenticated as (AUTH)
    tls: str | None = None  # the session's TLS protocol and cipher, "TLSv1.3 TLS_AES_..."


@dataclasses.dataclass(frozen=True)
class Claim:
    """One recipient leased to a worker, with what it needs to deliver."""

    recipient_id: int
    queue_id: str
    address: str
    store: str
    attempts: int
    mail_from: str
    received_at: float
    helo: str
    peer: str
    body: bytes
    auth_user: str | None = None  # the user the sending session authenticated as
    tls: str | None = None  # the sending session's TLS protocol and cipher

    @property
    def protocol(self) -> str:
        """The ``with`` of the ``Received:`` line its delivery writes (RFC 3848): ESMTP,
        with ``S`` when the message came over TLS and ``A`` when its sender
        authenticated."""
        return f"ESMTP{'S' if self.tls else ''}{'A' if self.auth_user else ''}"


@dataclasses.dataclass
class Settlement:
    """The outcome of one batch of deliveries, written in one transaction."""

    delivered: list[int] = dataclasses.field(default_factory=list)
    deferred: list[tuple[int, float, str]] = dataclasses.field(default_factory=list)
    bounced: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    # Delivery status notifications for the bounces, enqueued in the same transaction
    # (None: this worker sends none, and none is recorded as missing).
    notices: list[NewMessage] | None = None
    # The remote server's reply behind an outcome, where one decided it, by recipient id:
    # for the notices and the observers, not stored (the reason strings hold it too).
    replies: dict[int, RemoteReply] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.delivered) + len(self.deferred) + len(self.bounced)


@dataclasses.dataclass(frozen=True)
class QueueStats:
    """Counts for ``mailqueue stats``, capacity checks and metrics."""

    recipients: dict[str, int]
    messages_pending: int
    bytes_pending: int
    oldest_pending: float | None
    messages_total: int


@dataclasses.dataclass(frozen=True, slots=True)
class LedgerRecipient:
    """One recipient of an accepted message and where it stands."""

    address: str
    store: str
    state: RecipientState
    last_error: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class LedgerEntry:
    """What the queue remembers of an accepted message, kept after delivery."""

    queue_id: str
    message_id: str | None
    digest: str  # SHA-256 of the message as received (CRLF line ends)
    received_at: float
    size: int
    rcpt_count: int  # recipients accepted, as counted when the message was committed
    recipients: tuple[LedgerRecipient, ...]


@dataclasses.dataclass(frozen=True)
class RecipientOutcome:
    """One recipient as a report sees it."""

    queue_id: str
    address: str
    store: str
    state: RecipientState
    received_at: float
    settled_at: float | None
    attempts: int
    last_error: str | None


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
    message_id: str | None = None  # case-insensitive substring
    # One search box: the queue id itself, or a substring of the Message-ID, the sender or
    # a recipient (case-insensitive).
    text: str | None = None
    received_after: float | None = None
    # Keyset paging: only messages after this queue id in the list's order (oldest first).
    after: str | None = None


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
    auth_user: str | None = None
    tls: str | None = None


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
    # Where a remote server's reply decided it: the server (for Remote-MTA) and its reply
    # (``550 5.1.1 ...``, for Diagnostic-Code).
    remote_mta: str | None = None
    diagnostic: str | None = None


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


@dataclasses.dataclass(frozen=True)
class Changes:
    """A cheap look at the queue database (:meth:`ControlState.changes`); two looks tell
    what changed between them."""

    commits: int  # differs from an earlier look's once anything was committed since
    control: Hashable  # differs from an earlier look's once a window or node changed
    # Each store's earliest retry time of a queued recipient (None: none queued).
    due: Mapping[str, float | None]
