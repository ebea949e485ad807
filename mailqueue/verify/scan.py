"""Read delivered Maildir files back into what the ledger can be compared with.

The worker writes each copy as a few trace headers followed by the message with LF line
ends (:func:`mailqueue.mailbox.maildir.render`). :func:`restore_message` undoes exactly
that: it strips the trace block (``Return-Path``, ``Delivered-To``, ``Received`` with its
continuation lines, ending at ``X-Mailqueue-Id``) and turns LF back into CRLF, so the
SHA-256 of the result equals the digest the front end recorded when it said 250.

Only the files are trusted here, never the queue's bookkeeping: the mailbox is found by
walking every ``new/`` and ``cur/`` directory under a store's root, whatever the layout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

_TRACE = (b"return-path:", b"delivered-to:", b"received:", b"x-mailqueue-id:")
_MAX_TRACE_LINES = 32


@dataclasses.dataclass(frozen=True)
class Restored:
    """A delivered file taken apart: its queue id, recipient and the original message."""

    queue_id: str
    recipient: str
    message: bytes  # as received, CRLF line ends


@dataclasses.dataclass(frozen=True)
class DeliveredCopy:
    """One file found in a mailbox."""

    store: str
    path: Path
    queue_id: str | None  # None: not written by mailqueue (or its trace is damaged)
    recipient: str | None
    digest: str | None  # SHA-256 of the restored message

    @property
    def key(self) -> tuple[str, str] | None:
        if self.queue_id is None or self.recipient is None:
            return None
        return self.queue_id, self.recipient.lower()


def restore_message(data: bytes) -> Restored | None:
    """Undo :func:`~mailqueue.mailbox.maildir.render`; None if ``data`` has no trace block."""
    fields: dict[bytes, str] = {}
    offset = 0
    for _ in range(_MAX_TRACE_LINES):
        end = data.find(b"\n", offset)
        if end < 0:
            return None
        line = data[offset:end]
        offset = end + 1
        if line[:1] in (b" ", b"\t") and fields:
            continue  # a continuation of Received:
        name = line.split(b":", 1)[0].lower() + b":"
        if name not in _TRACE:
            return None
        fields[name] = line[len(name):].strip().decode("utf-8", "surrogateescape")
        if name == b"x-mailqueue-id:":
            break
    else:
        return None
    queue_id, recipient = fields.get(b"x-mailqueue-id:"), fields.get(b"delivered-to:")
    if not queue_id or not recipient:
        return None
    return Restored(queue_id, recipient, data[offset:].replace(b"\n", b"\r\n"))


def read_copy(store: str, path: Path) -> DeliveredCopy:
    """Read and take apart one mailbox file (blocking: call it from a thread)."""
    restored = restore_message(path.read_bytes())
    if restored is None:
        return DeliveredCopy(store, path, None, None, None)
    return DeliveredCopy(store, path, restored.queue_id, restored.recipient,
                         hashlib.sha256(restored.message).hexdigest())


def mailbox_files(root: Path) -> Iterator[Path]:
    """Every message file under ``root``: regular files in any ``new/`` or ``cur/``."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if os.path.basename(dirpath) not in ("new", "cur"):
            continue
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_file() and not name.startswith("."):
                yield path


def scan_root(store: str, root: Path) -> list[DeliveredCopy]:
    """Every file in the Maildirs under ``root``, taken apart (blocking)."""
    return [read_copy(store, path) for path in mailbox_files(root)]
