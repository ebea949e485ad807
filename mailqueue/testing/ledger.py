"""The ledger a test asserts on: what mailqueue accepted, against what the Maildirs hold."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from mailqueue.queue.values import LedgerEntry
from mailqueue.verify.audit import Audit, Finding, audit
from mailqueue.verify.scan import DeliveredCopy


class MailLossError(AssertionError):
    """Mail that was accepted is not in its mailbox, intact, exactly once."""


class Ledger:
    """Every message mailqueue accepted (queue id, Message-ID, recipients, body digest),
    compared with the files actually found in the Maildirs when it was taken (``roots``:
    each store's root, to check that every copy is in its recipient's mailbox)."""

    def __init__(self, entries: Sequence[LedgerEntry], copies: Sequence[DeliveredCopy],
                 roots: Mapping[str, Path] | None = None,
                 unchecked: Sequence[str] = ()) -> None:
        self.entries: tuple[LedgerEntry, ...] = tuple(entries)
        # ``unchecked``: stores whose mailboxes cannot be read (remote, no verify_path).
        self.audit: Audit = audit(entries, copies, roots, unchecked)

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

        Fails naming each message that is missing, in another mailbox than its recipient's,
        corrupted, still queued (end the window and ``drained()`` first), bounced (unless
        ``allow_bounced``) or deleted by an operator (unless ``allow_deleted``). A bounced or
        deleted recipient is accounted for in the equation either way; the options say
        whether the test expects them.
        """
        __tracebackhide__ = True  # pytest: show the message, not this frame
        kinds = ("missing", "misplaced", "corrupted")
        pending = [("not delivered", self.audit.pending)]
        given_up: list[tuple[str, Sequence[Finding]]] = []
        if not allow_bounced:
            given_up.append(("bounced", self.audit.bounces))
        if not allow_deleted:
            given_up.append(("deleted", self.audit.deletions))
        failing = any(self.audit.of_kind(k) for k in kinds) or \
            self.audit.unaccounted or self.audit.pending or any(f for _, f in given_up)
        if failing:
            hint = "\n  (end the window, advance() the clock or await drained() first)" \
                if self.audit.pending else ""
            raise MailLossError("mailqueue: accepted mail is not in the mailboxes\n" +
                                self.audit.report(kinds, pending + given_up) + hint)

    def assert_no_duplicates(self, *, allow_sent_twice: bool = False) -> None:
        """No message is in a mailbox twice, and no mailbox holds mail nobody sent it.

        Also fails when one Message-ID was accepted as several messages for one recipient:
        mailqueue delivered each once, so the code under test sent it more than once
        (``allow_sent_twice`` when it may, as a list copy and a direct copy of one post).
        """
        __tracebackhide__ = True  # pytest: show the message, not this frame
        kinds = ("duplicated", "misplaced", "unexpected")
        parts = []
        if any(self.audit.of_kind(k) for k in kinds):
            parts.append("mailqueue: mail delivered more than once or unexpectedly\n" +
                         self.audit.report(kinds))
        if self.audit.same_message_id and not allow_sent_twice:
            parts.append(_sent_twice(self.audit.same_message_id))
        if parts:
            raise MailLossError("\n".join(parts))

    def assert_ok(self, *, allow_bounced: bool = False, allow_deleted: bool = False,
                  allow_sent_twice: bool = False) -> None:
        """Both: nothing lost and nothing twice."""
        __tracebackhide__ = True  # pytest: show the message, not this frame
        self.assert_no_loss(allow_bounced=allow_bounced, allow_deleted=allow_deleted)
        self.assert_no_duplicates(allow_sent_twice=allow_sent_twice)

    def report(self) -> str:
        """The conservation equation and every exception, as ``mailqueue verify`` prints."""
        return self.audit.report()


def _sent_twice(groups: Sequence[Finding]) -> str:
    """One paragraph per Message-ID accepted as several messages for one recipient."""
    lines = []
    for group in groups:
        lines.append(f"mailqueue: sent twice: the same Message-ID was accepted as "
                     f"{len(group.paths)} messages for {group.recipient}")
        lines.append(f"  {group.message_id}: {group.detail}")
        lines += [f"      {path}" for path in group.paths]
    return "\n".join(lines)
