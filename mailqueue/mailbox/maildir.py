"""Maildir delivery, following the maildir protocol so that a repeat is harmless.

A message for ``local@domain`` lands in ``{root}/{domain}/{local}/new/`` (the layout of
Postfix virtual delivery and Dovecot). The file name is derived from the queue id and the
recipient, and its content from the queued message alone, so a delivery repeated after a
crash writes the same file under the same name, never a second copy: write ``tmp/NAME``,
fsync it, ``rename`` it to ``new/NAME``, and fsync each ``new/`` directory once per batch
before reporting success. (A rename is one directory change where a link and an unlink are
two; on a repeat it replaces the earlier, identical copy. A copy a reader already moved to
``cur/`` is looked for before a repeated attempt writes anything.)

A batch is written by a small pool of threads (``writers``): each copy costs an fsync of its
own, and fsyncs of different files proceed in parallel on the disk, so the pool, not the
Python code, sets the drain rate. Each thread takes a share of the batch, not one file at a
time, so a batch costs a handful of hand-offs between threads rather than one per file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from pathlib import Path
from typing import Any

from mailqueue import faults
from mailqueue.errors import PermanentDeliveryError, TemporaryDeliveryError
from mailqueue.mailbox.base import DeliveryOutcome
from mailqueue.queue.models import Claim

_PERMANENT_ERRNOS = {errno.ENAMETOOLONG, errno.EINVAL}


def maildir_name(claim: Claim, hostname: str) -> str:
    """The stable file name of ``claim``'s copy: ``time.Qqueueid_R<hash>.host``."""
    rcpt = hashlib.sha256(claim.address.lower().encode("utf-8", "surrogateescape"))
    return f"{int(claim.received_at)}.Q{claim.queue_id}_R{rcpt.hexdigest()[:12]}.{hostname}"


def mailbox_path(root: Path, address: str) -> Path:
    local, _, domain = address.rpartition("@")
    return root / domain.lower() / local.lower()


def render(claim: Claim, hostname: str) -> bytes:
    """The delivered file: trace headers a delivery agent adds, then the message (LF ends)."""
    stamp = formatdate(claim.received_at, localtime=False)
    peer = claim.peer or "unknown"
    trace = (
        f"Return-Path: <{claim.mail_from}>\n"
        f"Delivered-To: {claim.address}\n"
        f"Received: from {claim.helo or 'unknown'} ({peer})\n"
        f"\tby {hostname} (mailqueue) with ESMTP id {claim.queue_id}\n"
        f"\tfor <{claim.address}>; {stamp}\n"
        f"X-Mailqueue-Id: {claim.queue_id}\n"
    ).encode("utf-8", "surrogateescape")
    return trace + claim.body.replace(b"\r\n", b"\n")


def ensure_maildir(path: Path) -> None:
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True)


DEFAULT_WRITERS = 16


class MaildirStore:
    """Maildirs under ``root``, written by up to ``writers`` threads at once."""

    def __init__(self, name: str, root: Path, hostname: str,
                 writers: int = DEFAULT_WRITERS) -> None:
        self.name = name
        self.root = root
        self.hostname = hostname.replace("/", "_").replace(":", "_")
        self.writers = max(1, writers)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._known: set[Path] = set()  # mailboxes whose tmp/new/cur exist

    def check_writable(self) -> str | None:
        """Why no Maildir can be written under ``root`` now (None: they can): create it,
        then write and remove a probe file there."""
        probe = self.root / f".mailqueue-probe-{os.getpid()}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.close(fd)
            probe.unlink()
        except OSError as exc:
            return str(exc.strerror or exc)
        return None

    def deliver(self, claims: Sequence[Claim]) -> list[DeliveryOutcome]:
        tried = self._map(self._try_one, claims)
        outcomes: list[DeliveryOutcome] = [outcome for outcome, _ in tried]
        written: dict[Path, list[int]] = {}
        for index, (_, new_dir) in enumerate(tried):
            if new_dir is not None:
                written.setdefault(new_dir, []).append(index)
        # One fsync per new/ directory per batch, after every file in it is linked.
        for (_, indexes), error in zip(written.items(), self._map(_try_fsync_dir, written),
                                       strict=True):
            if error is not None:
                for index in indexes:
                    outcomes[index] = error
        return outcomes

    def close(self) -> None:
        """Stop the writer threads (a later delivery starts them again)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _map(self, func: Any, items: Iterable[Any]) -> list[Any]:
        """``[func(item) for item in items]``, the items shared out among the threads."""
        items = list(items)
        if len(items) <= 1 or self.writers == 1:
            return [func(item) for item in items]
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.writers,
                                                thread_name_prefix=f"maildir-{self.name}")
            pool = self._pool
        shares = min(self.writers, len(items))
        done = list(pool.map(lambda share: [func(item) for item in items[share::shares]],
                             range(shares)))
        results: list[Any] = [None] * len(items)
        for share, outcomes in enumerate(done):
            results[share::shares] = outcomes
        return results

    def _try_one(self, claim: Claim) -> tuple[DeliveryOutcome, Path | None]:
        try:
            return None, self._deliver_one(claim)
        except OSError as exc:
            return _os_error(exc), None

    def _deliver_one(self, claim: Claim) -> Path | None:
        """Write one copy; the ``new/`` dir to fsync, or None if it was already there."""
        box = mailbox_path(self.root, claim.address)
        name = maildir_name(claim, self.hostname)
        if claim.attempts > 1 and _already_delivered(box, name):
            return None
        if box not in self._known:
            ensure_maildir(box)
            self._known.add(box)
        tmp = box / "tmp" / name
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except FileNotFoundError:
            self._known.discard(box)  # removed behind our back: recreate it next time
            raise
        try:
            try:
                data = render(claim, self.hostname)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, box / "new" / name)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a half-written or unplaced copy
            raise
        faults.hit("deliver.linked")
        return box / "new"


def _already_delivered(box: Path, name: str) -> bool:
    """A copy in new/, or in cur/ with any flags after a reader moved it."""
    if (box / "new" / name).exists():
        return True
    try:
        return any(entry.split(":", 1)[0] == name for entry in os.listdir(box / "cur"))
    except FileNotFoundError:
        return False


def _try_fsync_dir(path: Path) -> DeliveryOutcome:
    try:
        _fsync_dir(path)
    except OSError as exc:
        return _os_error(exc)
    return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _os_error(exc: OSError) -> DeliveryOutcome:
    reason = f"maildir: {exc.strerror or exc}"
    if exc.errno in _PERMANENT_ERRNOS:
        return PermanentDeliveryError(reason)
    return TemporaryDeliveryError(reason)
