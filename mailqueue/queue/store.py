"""The :class:`QueueStore` seam every backend implements: the union of
:class:`MessageQueue` (accept, lease, settle), :class:`ControlState` (windows and nodes),
:class:`QueueAdmin` (the operator verbs) and :class:`QueueAudit` (the ledger)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from mailqueue.control.nodes import NodeState
from mailqueue.control.windows import Window
from mailqueue.errors import QueueError
from mailqueue.queue.values import (
    Action,
    ActionResult,
    BouncedRecipient,
    Changes,
    Claim,
    DrainProgress,
    LedgerEntry,
    MessageDetail,
    MessageView,
    NewMessage,
    Notify,
    PendingRecipient,
    QueueFilter,
    QueueReport,
    QueueStats,
    RecipientOutcome,
    Settlement,
)

# A blocking, all-or-nothing commit of a batch of messages, run on a writer thread.
BlockingEnqueue = Callable[[Sequence[NewMessage]], None]


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

    def blocking_enqueue(self) -> BlockingEnqueue | None:
        """The writer strategy: :meth:`enqueue` as a blocking call that the group committer
        runs on its own thread (an SQLite file, written by one connection), or None, where
        commits go through :meth:`enqueue` on the event loop (PostgreSQL)."""
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

    def watch(self, stores: Sequence[str], interval: Callable[[], float],
              report: Callable[[Changes | QueueError], None]) -> bool:
        """Look for changes every ``interval()`` seconds, far more cheaply than reading
        :meth:`windows` and :meth:`nodes`, until the store closes; call ``report`` on the
        running event loop with the first look, every look that differs from the last
        (compared with an earlier one, a look tells whether anything was committed since,
        by any process; whether a window or node changed; when each of ``stores`` next
        has a queued recipient due) and the error of every look that fails. Once per
        store. False, and nothing started, where the store cannot tell (read; poll)."""
        ...

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
    """Operator verbs (types in :mod:`mailqueue.queue.values`): inspect, hold, release,
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

    async def read_ledger(self, take: Callable[[list[LedgerEntry]], Awaitable[object]]
                          ) -> None:
        """:meth:`ledger` a slice at a time, each awaited through ``take`` before the next
        is read (in one read transaction): a ledger of any size in bounded memory."""
        ...

    async def outcomes(self) -> list[RecipientOutcome]:
        """Every recipient with its state and times (reports and audits)."""
        ...


class QueueStore(MessageQueue, ControlState, QueueAdmin, QueueAudit, Protocol):
    """The whole durable queue, as :class:`~mailqueue.queue.sqlstore.SqlQueueStore` offers
    it; a part that needs less takes the narrower protocol."""
