"""The :class:`MailboxStore` seam, and :class:`ReportingStore` for stores whose outcomes
arrive one by one (remote servers)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from mailqueue.errors import DeliveryError
from mailqueue.queue.values import Claim

# None: delivered (or found already delivered); otherwise the reason it was not.
DeliveryOutcome = DeliveryError | None

# Called with (index of the claim in the batch, its outcome), from any thread.
Report = Callable[[int, DeliveryOutcome], None]


class MailboxStore(Protocol):
    """A place mailboxes live. :meth:`deliver` blocks; callers run it in a thread."""

    name: str

    def deliver(self, claims: Sequence[Claim]) -> list[DeliveryOutcome]:
        """Deliver each claim exactly once; one outcome per claim, in order."""
        ...


@runtime_checkable
class ReportingStore(Protocol):
    """A store that tells each outcome as soon as it is final, so that the worker can
    record it before the rest of the batch is done.

    A remote server's ``250`` cannot be taken back, and a repeat is not recognised there as
    a Maildir copy is: the sooner a delivery is recorded, the smaller the stretch in which a
    crash makes it happen twice. ``reports`` is False for a wrapper whose inner store does
    not report (the worker then settles the batch at once, as for any store)."""

    name: str
    reports: bool

    def deliver(self, claims: Sequence[Claim]) -> list[DeliveryOutcome]:
        ...

    def deliver_reporting(self, claims: Sequence[Claim], report: Report,
                          deadline: float | None) -> list[DeliveryOutcome]:
        """As :meth:`deliver`, calling ``report(i, outcome)`` once for each claim as its
        outcome becomes final (before returning). No transaction starts, and none waits,
        past ``deadline`` (``time.monotonic()``; None: no limit): what is left then fails
        temporarily."""
        ...
