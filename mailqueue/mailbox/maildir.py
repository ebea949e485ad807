"""Maildir delivery, following the maildir protocol so that a repeat is harmless.

A message for ``local@domain`` lands in ``{root}/{domain}/{local}/new/`` (the layout of
Postfix virtual delivery and Dovecot). The file name is derived from the queue id and the
recipient, and its content from the queued message alone, so a delivery repeated after a
crash writes the same file under the same name, never a second copy: write ``tmp/NAME``,
fsync it, ``rename`` it to ``new/NAME``, and fsync each ``new/`` directory once per batch
before reporting success. (A rename is one directory change where a link and an unlink are
two; on a repeat it replaces the earlier, identical copy.)

A repeated attempt first looks for a copy already in the recipient's Maildir, by name only:
readers move files from ``new/`` to ``cur/`` and add to their names (``:2,S`` flags, GNU
mailutils' ``,u=N``) but keep the unique part, the part before the first ``,`` or ``:``, as
the Maildir specification requires; so a copy is known by the (queue id, recipient) in the
unique part of its name, whichever form of the name wrote it, in ``new/`` or ``cur/``
(:func:`list_maildir`). A copy a reader renamed altogether or filed in a folder before the
repeat is not known, and a second copy is written; ``mailqueue verify`` knows copies by
their trace headers and reports it as duplicated. The check reads no file and stats none:
a repeated batch (the drain after an outage) costs one listing of ``new/`` and ``cur/`` per
mailbox.

A batch is written by a small pool of threads (``writers``): each copy costs an fsync of its
own, and fsyncs of different files proceed in parallel on the disk, so the pool, not the
Python code, sets the drain rate. Each thread takes a share of the batch, not one file at a
time, so a batch costs a handful of hand-offs between threads rather than one per file.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import re
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from pathlib import Path
from typing import Any

from mailqueue import faults
from mailqueue.errors import PermanentDeliveryError, TemporaryDeliveryError
from mailqueue.mailbox.base import DeliveryOutcome
from mailqueue.queue.values import Claim

_PERMANENT_ERRNOS = {errno.ENAMETOOLONG, errno.EINVAL}

# A copy's (queue id, recipient hash): what its file name is derived from.
CopyKey = tuple[str, str]

# The unique part of a name mailqueue wrote: ``time.q<queue id>_r<recipient hash>.host``,
# or ``time.Q<QUEUE ID>_R<hash>.host`` as earlier versions wrote it.
_NAME_RE = re.compile(r"\d+\.[qQ]([0-9A-Za-z]+)_[rR]([0-9a-f]{12})\.")
_HOST_MAX = 64


def maildir_name(claim: Claim, hostname: str) -> str:
    """The stable file name of ``claim``'s copy: ``time.q<queue id>_r<hash>.host``.

    A Maildir unique name (``time.id.host``) in lower case after the time: readers that
    parse names (GNU mailutils orders and tells apart messages of one second by upper-case
    ``M`` and ``Q`` markers) find none to misread, and lower-casing is one-to-one on the
    queue id's alphabet (digits and upper-case consonants).
    """
    return (f"{int(claim.received_at)}.q{claim.queue_id.lower()}_r{_rcpt_hash(claim.address)}"
            f".{name_host(hostname)}")


@functools.lru_cache(maxsize=16)
def name_host(hostname: str) -> str:
    """``hostname`` as the last part of a file name: lower case, letters, digits, ``.``,
    ``-`` and ``_`` only (never ``/``, ``:`` or ``,``, which end or split a Maildir name),
    at most 64 characters so that a long one cannot make every name too long."""
    safe = "".join(c if c.isascii() and (c.isalnum() or c in ".-_") else "_"
                   for c in hostname.lower()[:_HOST_MAX])
    return safe or "localhost"


def unique_part(name: str) -> str:
    """A Maildir file name without what readers append: up to the first ``,`` or ``:``."""
    return name.partition(":")[0].partition(",")[0]


def copy_key(name: str) -> CopyKey | None:
    """The (queue id, recipient hash) of a file name mailqueue wrote, in either form and
    whatever a reader appended; None for any other name."""
    # What the pattern matches holds no ',' or ':', so it matches a name exactly when it
    # matches the name's unique part.
    match = _NAME_RE.match(name)
    return None if match is None else (match.group(1).upper(), match.group(2))


def claim_key(claim: Claim) -> CopyKey:
    """The (queue id, recipient hash) ``claim``'s copy is named by."""
    return claim.queue_id.upper(), _rcpt_hash(claim.address)


def _rcpt_hash(address: str) -> str:
    return hashlib.sha256(address.lower().encode("utf-8", "surrogateescape")).hexdigest()[:12]


def mailbox_path(root: Path, address: str) -> Path:
    local, _, domain = address.rpartition("@")
    return root / domain.lower() / local.lower()


@functools.lru_cache(maxsize=64)
def _date(second: int) -> str:
    """``Received:``'s date for a time in whole seconds (a batch's messages share few)."""
    return formatdate(second, localtime=False)


def render(claim: Claim, hostname: str) -> bytes:
    """The delivered file: trace headers a delivery agent adds, then the message (LF ends)."""
    stamp = _date(int(claim.received_at))
    peer = claim.peer or "unknown"
    trace = (
        f"Return-Path: <{claim.mail_from}>\n"
        f"Delivered-To: {claim.address}\n"
        f"Received: from {claim.helo or 'unknown'} ({peer})\n"
        f"\tby {hostname} (mailqueue) with {claim.protocol} id {claim.queue_id}\n"
        f"\tfor <{claim.address}>; {stamp}\n"
        f"X-Mailqueue-Id: {claim.queue_id}\n"
    ).encode("utf-8", "surrogateescape")
    return trace + claim.body.replace(b"\r\n", b"\n")


def list_maildir(maildir: Path | str) -> list[os.DirEntry[str]]:
    """The message files in ``maildir``'s ``new/`` and ``cur/`` (not its folders'), each
    once: ``new/``'s first, each directory's in name order (blocking).

    ``new/`` is listed before ``cur/``: readers move files from ``new/`` to ``cur/`` and
    never back, so a file that is in the Maildir throughout is in one listing or in both,
    whenever a reader moves it. A file in both (one unique part, one inode: the same file,
    renamed or linked by the reader) is given once, under its ``cur/`` name; two files
    under one unique part are two. Callers list before they read anything. Names
    beginning with ``.`` and entries that are not regular files are left out. A ``new/``
    or ``cur/`` that is missing or not a directory lists as empty; any other error is
    raised (without the listing, a copy cannot be ruled out nor a file be counted)."""
    found: dict[tuple[str, int], os.DirEntry[str]] = {}
    for sub in ("new", "cur"):
        for entry in _message_entries(os.path.join(maildir, sub)):
            key = unique_part(entry.name), entry.inode()
            found.pop(key, None)  # listed before under its earlier name: keep this one
            found[key] = entry
    return list(found.values())


def _message_entries(directory: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as listing:
            entries = [e for e in listing if not e.name.startswith(".") and e.is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    entries.sort(key=lambda entry: entry.name)
    return entries


def ensure_maildir(path: Path, owner: tuple[int, int] | None = None) -> None:
    """Make ``path``'s ``tmp/``, ``new/`` and ``cur/``; with ``owner`` (uid, gid), give
    them, the mailbox and its domain directory to that user."""
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    if owner is not None:
        for directory in (path.parent, path, path / "tmp", path / "new", path / "cur"):
            os.chown(directory, *owner)


def resolve_owner(spec: str) -> tuple[int, int]:
    """(uid, gid) of a store's ``owner``: ``user``, ``user:group``, ``uid`` or ``uid:gid``
    (a user alone brings its own group). ConfigError naming what is unknown."""
    import grp
    import pwd

    from mailqueue.errors import ConfigError

    user, _, group = spec.partition(":")
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        uid, gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        if not user.isdigit():
            raise ConfigError(f"owner {spec!r}: there is no user {user!r} on this "
                              "machine") from None
        uid = gid = int(user)  # a bare uid needs no passwd entry
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(f"owner {spec!r}: there is no group {group!r} on this "
                              "machine") from None
    return uid, gid


DEFAULT_WRITERS = 16
# Mailboxes a store keeps the paths of (beyond it, it starts over): a few MiB at most.
_BOXES_KEPT = 50_000


class MaildirStore:
    """Maildirs under ``root``, written by up to ``writers`` threads at once."""

    def __init__(self, name: str, root: Path, hostname: str,
                 writers: int = DEFAULT_WRITERS, owner: tuple[int, int] | None = None,
                 ) -> None:
        self.name = name
        self.root = root
        self.owner = owner  # (uid, gid) the Maildirs and their files are given to
        self.hostname = hostname  # as given in Received:; name_host makes file names of it
        self.writers = max(1, writers)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._known: set[Path] = set()  # mailboxes whose tmp/new/cur exist
        # address -> (its mailbox, the mailbox as a string): each copy's paths are built
        # from it as strings, which costs a fraction of joining Paths.
        self._boxes: dict[str, tuple[Path, str]] = {}

    def check_writable(self) -> str | None:
        """Why no Maildir can be written under ``root`` now (None: they can): create it,
        then write and remove a probe file there."""
        probe = self.root / f".mailqueue-probe-{os.getpid()}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if self.owner is not None:  # a reader makes the Maildirs of new mailboxes
                os.chown(self.root, *self.owner)
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                if self.owner is not None:
                    os.fchown(fd, *self.owner)
            finally:
                os.close(fd)
                probe.unlink()
        except PermissionError as exc:
            if self.owner is not None:
                return (f"its files cannot be given to owner uid {self.owner[0]} gid "
                        f"{self.owner[1]} ({exc.strerror}): run mailqueue as root or as "
                        "that user")
            return str(exc.strerror or exc)
        except OSError as exc:
            return str(exc.strerror or exc)
        return None

    def deliver(self, claims: Sequence[Claim]) -> list[DeliveryOutcome]:
        # Repeated claims may have a copy already: list each of their mailboxes once.
        present = {box: _Present(box) for box in {mailbox_path(self.root, c.address)
                                                  for c in claims if c.attempts > 1}}
        tried = self._map(lambda claim: self._try_one(claim, present), claims)
        outcomes: list[DeliveryOutcome] = [outcome for outcome, _ in tried]
        written: dict[str, list[int]] = {}
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

    def _try_one(self, claim: Claim, present: dict[Path, _Present],
                 ) -> tuple[DeliveryOutcome, str | None]:
        try:
            return None, self._deliver_one(claim, present)
        except OSError as exc:
            return _os_error(exc), None

    def _mailbox(self, address: str) -> tuple[Path, str]:
        found = self._boxes.get(address)
        if found is None:
            if len(self._boxes) >= _BOXES_KEPT:
                self._boxes.clear()
            box = mailbox_path(self.root, address)
            found = self._boxes[address] = (box, os.fspath(box))
        return found

    def _deliver_one(self, claim: Claim, present: dict[Path, _Present]) -> str | None:
        """Write one copy; the ``new/`` dir to fsync, or None if it was already there."""
        box, where = self._mailbox(claim.address)
        if claim.attempts > 1 and present[box].holds(claim_key(claim)):
            return None
        name = maildir_name(claim, self.hostname)
        data = render(claim, self.hostname)
        if box not in self._known:
            ensure_maildir(box, self.owner)
            self._known.add(box)
        tmp = f"{where}/tmp/{name}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except FileNotFoundError:
            self._known.discard(box)  # removed behind our back: recreate it next time
            raise
        try:
            try:
                if self.owner is not None:
                    os.fchown(fd, *self.owner)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, f"{where}/new/{name}")
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)  # a half-written or unplaced copy
            raise
        faults.hit("deliver.linked")
        return f"{where}/new"


class _Present:
    """The copies mailqueue wrote that one mailbox's ``new/`` and ``cur/`` held when a
    batch began, by the (queue id, recipient) in their names: for the batch's repeated
    claims."""

    def __init__(self, box: Path) -> None:
        self.keys: set[CopyKey] = set()
        self.error: OSError | None = None
        try:
            for found in list_maildir(box):
                key = copy_key(found.name)
                if key is not None:
                    self.keys.add(key)
        except OSError as exc:
            self.error = exc

    def holds(self, key: CopyKey) -> bool:
        """Whether a copy named by ``key`` is here. Raises the error that kept the mailbox
        from being listed: without the listing a second copy cannot be ruled out, so the
        attempt fails (and is retried)."""
        if self.error is not None:
            raise OSError(self.error.errno, self.error.strerror, self.error.filename)
        return key in self.keys


def _try_fsync_dir(path: str) -> DeliveryOutcome:
    try:
        _fsync_dir(path)
    except OSError as exc:
        return _os_error(exc)
    return None


def _fsync_dir(path: str | Path) -> None:
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
