"""The :class:`MailboxStore` seam."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from mailqueue.errors import DeliveryError
from mailqueue.queue.values import Claim

# None: delivered (or found already delivered); otherwise the reason it was not.
DeliveryOutcome = DeliveryError | None


class MailboxStore(Protocol):
    """A place mailboxes live. :meth:`deliver` blocks; callers run it in a thread."""

    name: str

    def deliver(self, claims: Sequence[Claim]) -> list[DeliveryOutcome]:
        """Deliver each claim exactly once; one outcome per claim, in order."""
        ...
