"""Compare the queue's ledger with the mailbox files and state the conservation equation.

Per recipient, ``accepted = delivered + bounced + deleted + still queued``: *accepted* is
what each message had at 250, the others count recipient rows by state (deleted: by an
operator), so a row lost from the queue shows as a gap. Each recipient the queue marks
delivered must then be in its mailbox exactly once, intact (digest equal). A copy is known
by its trace headers (queue id and recipient), whatever its file is called. Exceptions:

- **missing** — marked delivered, no file holds it (or the queue lost the recipient);
- **duplicated** — more than one file for one queue id and recipient in its mailbox;
- **misplaced** — a copy outside the mailbox of its recipient (another user's Maildir,
  another store's tree); the recipient's own folders count as its mailbox;
- **corrupted** — a file whose message no longer has the digest recorded at acceptance;
- **unexpected** — a file the ledger cannot account for (unknown queue id, a recipient the
  message did not have, or one that bounced or was deleted).

One Message-ID accepted as several messages for one recipient (a list copy and a direct
copy of one post, a client sending again after a timeout) is not an exception: each is an
accepted message delivered once. Such groups are listed apart, as information
(:attr:`Audit.same_message_id`); ``verify --strict`` fails on them.

A store whose mailboxes cannot be read here (a remote store without ``verify_path``) is
*unchecked*: its recipients count in the equation, but no copy is looked for.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mailqueue.mailbox.maildir import mailbox_path
from mailqueue.queue._auditscratch import CHUNK, AuditError, Interrupted, Scratch, blob
from mailqueue.queue.values import LedgerEntry, LedgerRecipient, RecipientState
from mailqueue.verify.scan import DeliveredCopy

__all__ = ["KINDS", "SAME_MESSAGE_ID", "Audit", "AuditError", "Auditor", "Finding", "audit"]

T = TypeVar("T")
_PENDING = (RecipientState.QUEUED, RecipientState.ACTIVE, RecipientState.HELD)
_DELIVERED = RecipientState.DELIVERED.value
_GIVEN_UP = (RecipientState.BOUNCED.value, RecipientState.DELETED.value)
KINDS = ("missing", "duplicated", "misplaced", "corrupted", "unexpected")
SAME_MESSAGE_ID = "same Message-ID"


@dataclasses.dataclass(frozen=True)
class Finding:
    """One exception: a message (and recipient) that is not where it should be, once."""

    kind: str
    queue_id: str | None
    recipient: str | None
    message_id: str | None
    detail: str
    paths: tuple[str, ...] = ()

    def describe(self) -> str:
        who = f"{self.queue_id or '?'} {self.message_id or '(no Message-ID)'}"
        to = f" -> {self.recipient}" if self.recipient else ""
        files = "".join(f"\n      {p}" for p in self.paths)
        return f"{who}{to}: {self.detail}{files}"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"paths": list(self.paths)}


@dataclasses.dataclass(frozen=True)
class Audit:
    """The outcome of comparing a ledger with the mailboxes."""

    accepted: int
    delivered: int
    bounced: int
    queued: int
    intact: int
    findings: tuple[Finding, ...]
    bounces: tuple[Finding, ...]  # recipients given up on, with the reason
    pending: tuple[Finding, ...]  # recipients not delivered yet
    foreign_files: tuple[str, ...]  # files without a mailqueue trace (existing content)
    by_store: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    deleted: int = 0  # recipients an operator deleted: accounted for, never delivered
    deletions: tuple[Finding, ...] = ()
    # One Message-ID accepted as several messages for one recipient: information only.
    same_message_id: tuple[Finding, ...] = ()
    unchecked: tuple[str, ...] = ()  # stores whose mailboxes could not be read

    def of_kind(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    @property
    def unaccounted(self) -> int:
        return self.accepted - self.delivered - self.bounced - self.deleted - self.queued

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing twice, nothing damaged, nothing unexplained."""
        return not self.findings and self.unaccounted == 0

    def passed(self, strict: bool = False) -> bool:
        """:attr:`ok`; with ``strict``, also no Message-ID accepted more than once for one
        recipient."""
        return self.ok and not (strict and self.same_message_id)

    def equation(self) -> str:
        sign = "=" if self.unaccounted == 0 else "!="
        text = (f"accepted {self.accepted} {sign} delivered {self.delivered} + bounced "
                f"{self.bounced} + deleted {self.deleted} + still queued {self.queued}  "
                "(recipients)")
        if self.unaccounted:
            text += f"; {self.unaccounted} unaccounted for"
        return text

    def report(self, kinds: Sequence[str] = KINDS, extra: Sequence[tuple[str,
               Sequence[Finding]]] = ()) -> str:
        """A readable account: the equation, then each non-empty list of exceptions."""
        lines = [self.equation()]
        lines += [f"  {store}: delivered {n['delivered']} + bounced {n['bounced']} + deleted "
                  f"{n['deleted']} + still queued {n['queued']}"
                  + ("  (mailboxes not checked: no verify_path)"
                     if store in self.unchecked else "")
                  for store, n in sorted(self.by_store.items())]
        expected = self.delivered - sum(n["delivered"] for store, n in self.by_store.items()
                                        if store in self.unchecked)
        lines.append(f"mailboxes: {expected} delivered copies expected, {self.intact} "
                     f"found intact")
        sections = [(kind, self.of_kind(kind)) for kind in kinds] + list(extra)
        for title, found in sections:
            if found:
                lines.append(f"{title.upper()} ({len(found)}):")
                lines.extend(f"  {f.describe()}" for f in found)
        return "\n".join(lines)

    def notes(self) -> str:
        """The informational groups (empty when there are none)."""
        if not self.same_message_id:
            return ""
        return "\n".join([f"{SAME_MESSAGE_ID.upper()} ({len(self.same_message_id)}, "
                          "information: separate accepted messages, each delivered on its "
                          "own; --strict fails on them):"] +
                         [f"  {f.message_id} -> {f.recipient}: {f.detail}"
                          for f in self.same_message_id])

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "accepted": self.accepted, "delivered": self.delivered,
                "bounced": self.bounced, "deleted": self.deleted, "queued": self.queued,
                "unaccounted": self.unaccounted, "intact": self.intact,
                "by_store": self.by_store,
                **{kind: [f.as_dict() for f in self.of_kind(kind)] for kind in KINDS},
                "bounces": [f.as_dict() for f in self.bounces],
                "deletions": [f.as_dict() for f in self.deletions],
                "foreign_files": list(self.foreign_files),
                "same_message_id": [f.as_dict() for f in self.same_message_id],
                "unchecked_stores": list(self.unchecked)}


def audit(ledger: Iterable[LedgerEntry], copies: Iterable[DeliveredCopy],
          roots: Mapping[str, Path] | None = None,
          unchecked: Collection[str] = ()) -> Audit:
    """Compare ``ledger`` with the ``copies`` found in the mailboxes (an :class:`Auditor`
    fed both at once; blocking).

    ``roots`` (store name to root, as the copies' paths were found under them) places each
    recipient's mailbox, so that a copy anywhere else is *misplaced*; without it, where a
    copy lies is not checked. The recipients of the ``unchecked`` stores, whose mailboxes
    could not be read, are counted but not looked for."""
    with Auditor(roots, unchecked) as auditor:
        auditor.add_entries(ledger)
        auditor.add_copies(copies)
        return auditor.result()


class Auditor:
    """:func:`audit` in parts and in bounded memory: feed it the ledger (in slices, in
    ledger order), then the copies found, and take the :meth:`result`.

    Only counters and findings stay in memory; the recipients and copies to match go to a
    scratch file in a temporary directory (``directory``, else the system's), removed by
    :meth:`close`. Blocking; one thread at a time, but :meth:`close` may come from another
    thread and stops the work in hand (:class:`AuditError`)."""

    def __init__(self, roots: Mapping[str, Path] | None = None,
                 unchecked: Collection[str] = (), directory: str | None = None) -> None:
        self._roots = roots
        self._unchecked = frozenset(unchecked)
        self._scratch = Scratch(directory)
        self._seq = 0
        self._accepted = 0
        self._by_store: dict[str, dict[str, int]] = {}
        self._unaccounted: list[Finding] = []
        self._listed: dict[RecipientState, list[Finding]] = {
            RecipientState.BOUNCED: [], RecipientState.DELETED: [], RecipientState.QUEUED: []}
        self._foreign: list[str] = []

    def __enter__(self) -> Auditor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the scratch file (from any thread; again is a no-op)."""
        self._scratch.close()

    def add_entries(self, entries: Iterable[LedgerEntry]) -> None:
        """Take the next ledger entries, in ledger order."""
        for batch in _batches(entries):
            rcpts = []
            for entry in batch:
                self._tally(entry)
                for rcpt in entry.recipients:
                    self._seq += 1
                    rcpts.append((self._seq, blob(entry.queue_id), blob(rcpt.address.lower()),
                                  rcpt.address, rcpt.store, rcpt.state.value,
                                  entry.message_id, entry.digest))
            self._scratch.add_recipients(rcpts)
            self._scratch.add_entries((blob(e.queue_id), e.message_id) for e in batch)

    def add_copies(self, copies: Iterable[DeliveredCopy]) -> None:
        """Take copies found in the mailboxes, in the order they were found."""
        rows: list[tuple[bytes, bytes, bytes, str | None]] = []
        for copy in copies:
            if copy.queue_id is None or copy.recipient is None:
                self._foreign.append(str(copy.path))
            else:
                rows.append((blob(copy.queue_id), blob(copy.recipient.lower()),
                             blob(str(copy.path)), copy.digest))
            if len(rows) >= CHUNK:
                self._scratch.add_copies(rows)
                rows = []
            elif self._scratch.closed:
                raise Interrupted("the audit was stopped")
        self._scratch.add_copies(rows)

    def result(self) -> Audit:
        """The audit of everything taken so far."""
        findings = list(self._unaccounted)
        intact = self._check_expected(findings)
        findings += self._unexpected()
        counts = {state: sum(n[state] for n in self._by_store.values())
                  for state in ("delivered", "bounced", "deleted", "queued")}
        return Audit(
            accepted=self._accepted, delivered=counts["delivered"],
            bounced=counts["bounced"], queued=counts["queued"], intact=intact,
            findings=tuple(findings), bounces=tuple(self._listed[RecipientState.BOUNCED]),
            pending=tuple(self._listed[RecipientState.QUEUED]),
            foreign_files=tuple(self._foreign),
            by_store={store: dict(n) for store, n in self._by_store.items()},
            deleted=counts["deleted"], deletions=tuple(self._listed[RecipientState.DELETED]),
            same_message_id=tuple(self._same_message_id()),
            unchecked=tuple(sorted(self._unchecked)))

    def _tally(self, entry: LedgerEntry) -> None:
        """The entry's counts, and the findings that follow from the ledger alone."""
        self._accepted += entry.rcpt_count
        if entry.rcpt_count != len(entry.recipients):
            self._unaccounted.append(Finding(
                "missing", entry.queue_id, None, entry.message_id,
                f"accepted for {entry.rcpt_count} recipients, the queue holds "
                f"{len(entry.recipients)}"))
        for rcpt in entry.recipients:
            counts = self._by_store.setdefault(rcpt.store, {"delivered": 0, "bounced": 0,
                                                            "deleted": 0, "queued": 0})
            pending = rcpt.state in _PENDING
            counts["queued" if pending else rcpt.state.value] += 1
            listed = self._listed.get(RecipientState.QUEUED if pending else rcpt.state)
            if listed is not None:
                listed.append(_listed(entry, rcpt, pending))

    def _check_expected(self, findings: list[Finding]) -> int:
        """Each delivered recipient: one intact copy, in its mailbox. Returns how many were
        intact."""
        intact = 0
        home_of = functools.lru_cache(maxsize=4096)(self._home)
        for _, queue_id, address, store, state, message_id, digest, found in \
                self._scratch.expected(_DELIVERED):
            delivered = state == _DELIVERED
            if not found and (store in self._unchecked or not delivered):
                continue
            who = (queue_id, address, message_id)
            if not found:
                findings.append(Finding("missing", *who, "marked delivered; no file in the "
                                        "mailbox holds it"))
                continue
            home = home_of(store, address)
            here = [c for c in found if self._roots is None or _inside(c[0], home)]
            away = [c for c in found if self._roots is not None and not _inside(c[0], home)]
            findings += [Finding("misplaced", *who, _where(path, address, store, home),
                                 (path,)) for path, _ in away]
            good = [c for c in here if c[1] == digest]
            findings += [Finding("corrupted", *who, "content differs from what was accepted "
                                 "(digest mismatch)", (path,))
                         for path, found_digest in found if found_digest != digest]
            if len(here) > 1:
                findings.append(Finding("duplicated", *who, f"{len(here)} copies in the "
                                        "mailbox", tuple(path for path, _ in here)))
            if state in _GIVEN_UP:
                findings.append(Finding("unexpected", *who, f"{state}, yet a copy is in the "
                                        "mailbox", tuple(path for path, _ in found)))
            elif delivered and good:
                intact += 1
        return intact

    def _home(self, store: str, address: str) -> str | None:
        """The recipient's mailbox; None if its store is not among the roots."""
        root = None if self._roots is None else self._roots.get(store)
        return None if root is None else str(mailbox_path(root, address))

    def _unexpected(self) -> list[Finding]:
        return [Finding("unexpected", queue_id, recipient, message_id,
                        "not a recipient of this message" if accepted else
                        "no such message was accepted", tuple(paths))
                for queue_id, recipient, accepted, message_id, paths
                in self._scratch.unexpected()]

    def _same_message_id(self) -> list[Finding]:
        """One Message-ID delivered to one recipient under several queue ids: several
        accepted messages, each with its own copy (information, not an exception)."""
        return [Finding(SAME_MESSAGE_ID, None, recipient, message_id,
                        f"accepted as {len(found)} messages "
                        f"({', '.join(sorted(q for q, _ in found))})",
                        tuple(path for _, path in found))
                for message_id, recipient, found in self._scratch.same_message_id()]


def _listed(entry: LedgerEntry, rcpt: LedgerRecipient, pending: bool) -> Finding:
    """A recipient still pending, bounced or deleted, as its list shows it."""
    if pending:
        kind, detail = "pending", f"still {rcpt.state.value}"
    elif rcpt.state is RecipientState.BOUNCED:
        kind, detail = "bounced", rcpt.last_error or "bounced"
    else:
        kind, detail = "deleted", "deleted by an operator"
    return Finding(kind, entry.queue_id, rcpt.address, entry.message_id, detail)


def _batches(items: Iterable[T]) -> Iterator[list[T]]:
    it = iter(items)
    while batch := list(itertools.islice(it, CHUNK)):
        yield batch


def _inside(path: str, home: str | None) -> bool:
    """Whether the file ``path`` (``.../new/NAME`` or ``.../cur/NAME``) is in the mailbox
    ``home``, in its own ``new/``/``cur/`` or in a folder of it (paths as the scan gives
    them, absolute and normal: compared as strings, a million of them)."""
    maildir = os.path.dirname(os.path.dirname(path))
    return home is not None and (maildir == home or maildir.startswith(home + os.sep))


def _where(path: str, address: str, store: str, home: str | None) -> str:
    belongs = f"the mailbox of {address} ({home})" if home is not None else \
        f"the mailbox of {address} (store {store!r} is not configured)"
    return f"in {Path(path).parent.parent}, not in {belongs}"
