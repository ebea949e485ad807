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
import sys
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mailqueue.mailbox.maildir import mailbox_path
from mailqueue.queue.values import LedgerEntry, LedgerRecipient, RecipientState
from mailqueue.verify.scan import DeliveredCopy

_PENDING = (RecipientState.QUEUED, RecipientState.ACTIVE, RecipientState.HELD)
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


def audit(ledger: Sequence[LedgerEntry], copies: Iterable[DeliveredCopy],
          roots: Mapping[str, Path] | None = None,
          unchecked: Collection[str] = ()) -> Audit:
    """Compare ``ledger`` with the ``copies`` found in the mailboxes.

    ``roots`` (store name to root, as the copies' paths were found under them) places each
    recipient's mailbox, so that a copy anywhere else is *misplaced*; without it, where a
    copy lies is not checked. The recipients of the ``unchecked`` stores, whose mailboxes
    could not be read, are counted but not looked for."""
    entries = {e.queue_id: e for e in ledger}
    by_key: dict[tuple[str, str], list[_Found]] = defaultdict(list)
    foreign: list[str] = []
    for copy in copies:
        if copy.queue_id is None or copy.recipient is None:
            foreign.append(str(copy.path))
        else:
            # Kept as strings, not the copy with its Path: a million copies are a
            # million of these (the recipient's key shared by its mailbox's copies).
            by_key[(copy.queue_id, sys.intern(copy.recipient.lower()))].append(
                _Found(str(copy.path), copy.queue_id, copy.digest))
    findings: list[Finding] = []
    findings += _unaccounted(ledger)
    intact = _check_expected(ledger, by_key, findings, roots, frozenset(unchecked))
    findings += _unexpected(entries, by_key)
    rows = [(e, r) for e in ledger for r in e.recipients]
    return Audit(
        accepted=sum(e.rcpt_count for e in ledger),
        delivered=sum(1 for _, r in rows if r.state is RecipientState.DELIVERED),
        bounced=sum(1 for _, r in rows if r.state is RecipientState.BOUNCED),
        queued=sum(1 for _, r in rows if r.state in _PENDING),
        intact=intact, findings=tuple(findings),
        bounces=tuple(_finding("bounced", e, r, r.last_error or "bounced")
                      for e, r in rows if r.state is RecipientState.BOUNCED),
        pending=tuple(_finding("pending", e, r, f"still {r.state.value}")
                      for e, r in rows if r.state in _PENDING),
        foreign_files=tuple(foreign), by_store=_by_store(rows),
        deleted=sum(1 for _, r in rows if r.state is RecipientState.DELETED),
        deletions=tuple(_finding("deleted", e, r, "deleted by an operator")
                        for e, r in rows if r.state is RecipientState.DELETED),
        same_message_id=tuple(_same_message_id(entries, by_key)),
        unchecked=tuple(sorted(unchecked)))


@dataclasses.dataclass(frozen=True, slots=True)
class _Found:
    """What the audit keeps of a copy it found: where, whose, and its digest."""

    path: str
    queue_id: str
    digest: str | None


def _by_store(rows: Sequence[tuple[LedgerEntry, LedgerRecipient]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for _, rcpt in rows:
        counts = out.setdefault(rcpt.store, {"delivered": 0, "bounced": 0, "deleted": 0,
                                             "queued": 0})
        key = "queued" if rcpt.state in _PENDING else rcpt.state.value
        counts[key] += 1
    return out


def _finding(kind: str, entry: LedgerEntry, rcpt: LedgerRecipient | None, detail: str,
             copies: Sequence[_Found] = ()) -> Finding:
    return Finding(kind, entry.queue_id, rcpt.address if rcpt else None, entry.message_id,
                   detail, tuple(c.path for c in copies))


def _unaccounted(ledger: Sequence[LedgerEntry]) -> list[Finding]:
    return [_finding("missing", e, None, f"accepted for {e.rcpt_count} recipients, the queue "
                     f"holds {len(e.recipients)}")
            for e in ledger if e.rcpt_count != len(e.recipients)]


def _check_expected(ledger: Sequence[LedgerEntry],
                    by_key: dict[tuple[str, str], list[_Found]],
                    findings: list[Finding], roots: Mapping[str, Path] | None,
                    unchecked: frozenset[str]) -> int:
    """Each delivered recipient: one intact copy, in its mailbox. Returns how many were
    intact."""
    intact = 0
    for entry in ledger:
        for rcpt in entry.recipients:
            found = by_key.get((entry.queue_id, rcpt.address.lower()), [])
            if rcpt.store in unchecked and not found:
                continue
            if rcpt.state is not RecipientState.DELIVERED and not found:
                continue
            if rcpt.state is RecipientState.DELIVERED and not found:
                findings.append(_finding("missing", entry, rcpt, "marked delivered; no file "
                                         "in the mailbox holds it"))
                continue
            home = _home(roots, rcpt)
            here = [c for c in found if roots is None or _inside(Path(c.path), home)]
            for away in (c for c in found if c not in here):
                findings.append(_finding("misplaced", entry, rcpt, _where(away, rcpt, home),
                                         [away]))
            good = [c for c in here if c.digest == entry.digest]
            for bad in (c for c in found if c.digest != entry.digest):
                findings.append(_finding("corrupted", entry, rcpt, "content differs from "
                                         "what was accepted (digest mismatch)", [bad]))
            if len(here) > 1:
                findings.append(_finding("duplicated", entry, rcpt,
                                         f"{len(here)} copies in the mailbox", here))
            if rcpt.state in (RecipientState.BOUNCED, RecipientState.DELETED):
                findings.append(_finding("unexpected", entry, rcpt, f"{rcpt.state.value}, yet "
                                         "a copy is in the mailbox", found))
            elif rcpt.state is RecipientState.DELIVERED and good:
                intact += 1
    return intact


def _home(roots: Mapping[str, Path] | None, rcpt: LedgerRecipient) -> Path | None:
    """The recipient's mailbox; None if its store is not among ``roots``."""
    root = None if roots is None else roots.get(rcpt.store)
    return None if root is None else mailbox_path(root, rcpt.address)


def _inside(path: Path, home: Path | None) -> bool:
    """Whether the file ``path`` (``.../new/NAME`` or ``.../cur/NAME``) is in the mailbox
    ``home``, in its own ``new/``/``cur/`` or in a folder of it."""
    maildir = path.parent.parent
    return home is not None and (maildir == home or home in maildir.parents)


def _where(copy: _Found, rcpt: LedgerRecipient, home: Path | None) -> str:
    belongs = f"the mailbox of {rcpt.address} ({home})" if home is not None else \
        f"the mailbox of {rcpt.address} (store {rcpt.store!r} is not configured)"
    return f"in {Path(copy.path).parent.parent}, not in {belongs}"


def _unexpected(entries: dict[str, LedgerEntry],
                by_key: dict[tuple[str, str], list[_Found]]) -> list[Finding]:
    out = []
    for (queue_id, recipient), found in sorted(by_key.items()):
        entry = entries.get(queue_id)
        paths = tuple(c.path for c in found)
        if entry is None:
            out.append(Finding("unexpected", queue_id, recipient, None,
                               "no such message was accepted", paths))
        elif recipient not in {r.address.lower() for r in entry.recipients}:
            out.append(Finding("unexpected", queue_id, recipient, entry.message_id,
                               "not a recipient of this message", paths))
    return out


def _same_message_id(entries: dict[str, LedgerEntry],
                     by_key: dict[tuple[str, str], list[_Found]]) -> list[Finding]:
    """One Message-ID delivered to one recipient under several queue ids: several accepted
    messages, each with its own copy (information, not an exception)."""
    groups: dict[tuple[str, str], list[_Found]] = defaultdict(list)
    for (queue_id, recipient), found in by_key.items():
        entry = entries.get(queue_id)
        if entry is not None and entry.message_id:
            groups[(entry.message_id, recipient)].extend(found[:1])
    out = []
    for (message_id, recipient), found in sorted(groups.items()):
        if len(found) > 1:
            ids = ", ".join(sorted(c.queue_id for c in found))
            out.append(Finding(SAME_MESSAGE_ID, None, recipient, message_id,
                               f"accepted as {len(found)} messages ({ids})",
                               tuple(c.path for c in found)))
    return out
