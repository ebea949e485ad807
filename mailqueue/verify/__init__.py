"""Proving that nothing was lost or delivered twice.

The queue's ledger (every accepted message with its Message-ID, recipients and body digest)
is compared with what the Maildirs actually hold, found by scanning the files:

- :mod:`mailqueue.verify.scan` reads delivered files back into (queue id, recipient, digest);
- :mod:`mailqueue.verify.audit` compares them with the ledger and states the conservation
  equation (accepted = delivered + bounced + deleted + still queued, per recipient), in
  bounded memory (the matching is done in a scratch file, :mod:`mailqueue.queue._auditscratch`);
- :mod:`mailqueue.verify.snapshot` records existing mailbox content and reports changes,
  also in bounded memory (a file written as it is read, a scratch file to compare in,
  :mod:`mailqueue.queue._snapshotscratch`);
- :mod:`mailqueue.verify.instance` audits a configured instance: its queue's ledger
  against its stores' files.
"""

from mailqueue.verify.audit import Audit, Auditor, audit
from mailqueue.verify.scan import DeliveredCopy, restore_message, scan_root
from mailqueue.verify.snapshot import (
    Manifest,
    SnapshotDiff,
    check_snapshot,
    compare_snapshot,
    take_snapshot,
    write_snapshot,
)

__all__ = ["Audit", "Auditor", "DeliveredCopy", "Manifest", "SnapshotDiff", "audit",
           "check_snapshot", "compare_snapshot", "restore_message", "scan_root",
           "take_snapshot", "write_snapshot"]
