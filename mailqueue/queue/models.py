"""The queue's domain objects and the :class:`QueueStore` seam every backend implements."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from mailqueue.nodes import NodeState
from mailqueue.windows import Window

if TYPE_CHECKING:
    from mailqueue.queue.admin import (
        Action,
        ActionResult,
        BouncedRecipient,
        DrainProgress,
        MessageDetail,
        MessageView,
        Notify,
        PendingRecipient,
        QueueFilter,
        QueueReport,
    )

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


@dataclasses.dataclass
class Settlement:
    """The outcome of one batch of deliveries, written in one transaction."""

    delivered: list[int] = dataclasses.field(default_factory=list)
    deferred: list[tuple[int, float, str]] = dataclasses.field(default_factory=list)
    bounced: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    # Delivery status notifications for the bounces, enqueued in the same transaction
    # (None: this worker sends none, and none is recorded as missing).
    notices: list[NewMessage] | None = None

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


@dataclasses.dataclass(frozen=True)
class LedgerRecipient:
    """One recipient of an accepted message and where it stands."""

    address: str
    store: str
    state: RecipientState
    last_error: str | None = None


@dataclasses.dataclass(frozen=True)
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


class MessageQueue(Protocol):
    """The core seam: accept, lease, settle. No caller sees SQL; every method is one short
    transaction. The front end (through the group committer) and the worker need only this."""

    async def open(self) -> None:
        """Connect; create the schema in an empty database, refuse one at another schema
        revision (SchemaError: run ``mailqueue db upgrade``)."""
        ...

    async def close(self) -> None: ...

    async def enqueue(self, messages: Sequence[NewMessage]) -> None:
        """Commit ``messages`` and their recipients durably, all or nothing."""
        ...

    async def claim(self, stores: Sequence[str], limit: int, owner: str, now: float,
                    lease_until: float, max_bytes: int = 0) -> list[Claim]:
        """Lease up to ``limit`` due recipients of ``stores`` that no active window holds;
        counts an attempt for each. With ``max_bytes``, stop before the claimed bodies add
        up to more than that (one recipient is claimed however large its message)."""
        ...

    async def settle(self, settlement: Settlement, owner: str, now: float) -> None:
        """Record delivered / deferred / bounced outcomes of claims held by ``owner``."""
        ...

    async def reclaim_expired(self, now: float) -> int:
        """Return recipients whose lease has expired to the queue; how many."""
        ...

    async def capacity(self) -> tuple[int, int]:
        """(messages, bytes) not yet done, for the front end's capacity check."""
        ...

    async def stats(self) -> QueueStats: ...

    def file_lost(self) -> str | None:
        """Why the queue's storage is known to be lost (an SQLite file deleted or replaced
        under the server), as last seen: new mail is refused while it is. Never waits:
        the store looks again on its own. None for a queue with no file to lose."""
        ...


class ControlState(Protocol):
    """Windows and mailbox node states, shared through the queue database by every process."""

    async def windows(self) -> list[Window]: ...

    async def save_window(self, window: Window, expect_state: str | None = None) -> bool:
        """Insert or update ``window``; with ``expect_state``, only if it is still in it."""
        ...

    async def add_window_if_absent(self, window: Window) -> bool: ...

    async def nodes(self) -> list[NodeState]:
        """Every mailbox node whose state was ever set (absent nodes are up)."""
        ...

    async def save_nodes(self, nodes: Sequence[NodeState]) -> None:
        """Insert or update ``nodes``, in one transaction."""
        ...

    async def retry_deferred(self, store: str, now: float, pick: Callable[[str], bool],
                             reason: str) -> int:
        """Make due at ``now`` the queued recipients of ``store`` waiting for a later retry
        whose address ``pick`` chooses (those on a node that came back), recording
        ``reason`` in their history. Returns how many."""
        ...


class QueueAdmin(Protocol):
    """Operator verbs (types in :mod:`mailqueue.queue.admin`): inspect, hold, release,
    retry, delete, bounce and expire; the reports and drain progress built on them."""

    async def list_messages(self, query: QueueFilter) -> list[MessageView]:
        """Messages matching ``query``, oldest first, with all their recipients."""
        ...

    async def message(self, queue_id: str) -> MessageDetail | None:
        """One message with its per-recipient history and (until done) its content."""
        ...

    async def change(self, action: Action, queue_ids: Sequence[str] | None,
                     now: float) -> ActionResult:
        """Hold, release or retry (None: every pending message); unknown id: nothing done.
        A hold leaves recipients a worker is delivering alone and names them."""
        ...

    async def delete(self, queue_ids: Sequence[str] | None, now: float) -> ActionResult:
        """Mark queued and held recipients deleted (kept in the ledger, never delivered);
        recipients a worker is delivering are left alone and named."""
        ...

    async def bounce(self, queue_ids: Sequence[str] | None, reason: str, now: float,
                     notify: Notify | None = None) -> ActionResult:
        """Give up on queued and held recipients now; notices enqueued in the same commit.
        Recipients a worker is delivering are left alone and named."""
        ...

    async def expire(self, reasons: Mapping[int, str], now: float,
                     notify: Notify | None = None) -> list[BouncedRecipient]:
        """Bounce the recipients ``reasons`` names (queued or held ones only)."""
        ...

    async def pending_before(self, received_before: float, limit: int,
                             unwarned: bool = False) -> list[PendingRecipient]:
        """Recipients not yet final of messages received before a moment."""
        ...

    async def record_delay_warnings(
            self, due: Sequence[PendingRecipient],
            notices_for: Callable[[Sequence[PendingRecipient]], Sequence[NewMessage]],
            now: float) -> list[PendingRecipient]:
        """Of ``due``, those not yet warned (another process may have warned some since
        they were read): record their warnings and enqueue ``notices_for(them)``, in one
        transaction that such sweeps take one at a time. Returns them."""
        ...

    async def shape(self, now: float, edges_minutes: Sequence[int] = ...,
                    ) -> dict[str, list[int]]:
        """Undelivered messages per store in age buckets (qshape)."""
        ...

    async def report(self, now: float, recent_seconds: float = 60.0) -> QueueReport:
        """Counts by state and store, bytes, totals and the recent delivery rate."""
        ...

    async def drain_progress(self, stores: Sequence[str], since: float) -> DrainProgress:
        """Recipients of ``stores`` still to go and those settled since ``since``."""
        ...


class QueueAudit(Protocol):
    """What the queue remembers of every accepted message, for audits and reports."""

    async def ledger(self) -> list[LedgerEntry]:
        """Every accepted message with its recipients' states, oldest first."""
        ...

    async def outcomes(self) -> list[RecipientOutcome]:
        """Every recipient with its state and times (reports and audits)."""
        ...


class QueueStore(MessageQueue, ControlState, QueueAdmin, QueueAudit, Protocol):
    """The whole durable queue, as :class:`~mailqueue.queue.sqlstore.SqlQueueStore` offers
    it; a part that needs less takes the narrower protocol."""
