"""The durable queue: the :class:`QueueStore` seam (the union of :class:`MessageQueue`,
:class:`ControlState`, :class:`QueueAdmin` and :class:`QueueAudit`) and its SQLAlchemy
implementation."""

from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.queue.store import ControlState, MessageQueue, QueueAdmin, QueueAudit, QueueStore
from mailqueue.queue.values import (
    Claim,
    NewMessage,
    QueueStats,
    RecipientState,
    Settlement,
    new_queue_id,
)


def open_store(url: str) -> QueueStore:
    """The store for a SQLAlchemy URL (not yet opened)."""
    return SqlQueueStore(url)


__all__ = ["Claim", "ControlState", "MessageQueue", "NewMessage", "QueueAdmin", "QueueAudit",
           "QueueStats", "QueueStore", "RecipientState", "Settlement", "SqlQueueStore",
           "new_queue_id", "open_store"]
