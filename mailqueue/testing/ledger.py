"""The ledger a test asserts on: what mailqueue accepted, against what the Maildirs hold."""

from __future__ import annotations

from collections.abc import Sequence

from mailqueue.queue.models import LedgerEntry
from mailqueue.verify.audit import Audit, Finding, audit
from mailqueue.verify.scan import DeliveredCopy


class MailLossError(AssertionError):
    """Mail that was accepted is not in its mailbox, intact, exactly once."""


class Ledger:
    """Every message mailqueue accepted (queue id, Message-ID, recipients, body digest),
    compared with the files actually found in the Maildirs when it was taken."""

    def __init__(self, entries: Sequence[LedgerEntry], copies: Sequence[DeliveredCopy]) -> None:
        self.entries: tuple[LedgerEntry, ...] = tuple(entries)
        self.audit: Audit = audit(entries, copies)

    def __len__(self) -> int:
        """How many messages were accepted."""
        return len(self.entries)

    @property
    def message_ids(self) -> list[str | None]:
        return [e.message_id for e in self.entries]

    @property
    def recipients(self) -> int:
        """How many recipients were accepted, over all messages."""
        return self.audit.accepted

    def assert_no_loss(self, *, allow_bounced: bool = False,
                       allow_deleted: bool = False) -> None:
        """Every accepted recipient has its message in its mailbox, intact.

        Fails naming each message that is missing, corrupted, still queued (end the window
        and ``drained()`` first), bounced (unless ``allow_bounced``) or deleted by an
        operator (unless ``allow_deleted``). A bounced or deleted recipient is accounted for
        in the equation either way; the options say whether the test expects them.
        """
        __tracebackhide__ = True  # pytest: show the message, not this frame
        pending = [("not delivered", self.audit.pending)]
        given_up: list[tuple[str, Sequence[Finding]]] = []
        if not allow_bounced:
            given_up.append(("bounced", self.audit.bounces))
        if not allow_deleted:
            given_up.append(("deleted", self.audit.deletions))
        failing = self.audit.of_kind("missing") or self.audit.of_kind("corrupted") or \
            self.audit.unaccounted or self.audit.pending or any(f for _, f in given_up)
        if failing:
            hint = "\n  (end the window, advance() the clock or await drained() first)" \
                if self.audit.pending else ""
            raise MailLossError("mailqueue: accepted mail is not in the mailboxes\n" +
                                self.audit.report(("missing", "corrupted"), pending + given_up)
                                + hint)

    def assert_no_duplicates(self) -> None:
        """No message is in a mailbox twice, and no mailbox holds mail nobody sent it."""
        __tracebackhide__ = True  # pytest: show the message, not this frame
        if self.audit.of_kind("duplicated") or self.audit.of_kind("unexpected"):
            raise MailLossError("mailqueue: mail delivered more than once or unexpectedly\n" +
                                self.audit.report(("duplicated", "unexpected")))

    def assert_ok(self, *, allow_bounced: bool = False, allow_deleted: bool = False) -> None:
        """Both: nothing lost and nothing twice."""
        __tracebackhide__ = True  # pytest: show the message, not this frame
        self.assert_no_loss(allow_bounced=allow_bounced, allow_deleted=allow_deleted)
        self.assert_no_duplicates()

    def report(self) -> str:
        """The conservation equation and every exception, as ``mailqueue verify`` prints."""
        return self.audit.report()
