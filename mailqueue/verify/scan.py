"""Read delivered Maildir files back into what the ledger can be compared with.

The worker writes each copy as a few trace headers followed by the message with LF line
ends (:func:`mailqueue.mailbox.maildir.render`). :func:`restore_message` undoes exactly
that: it strips the trace block (``Return-Path``, ``Delivered-To``, ``Received`` with its
continuation lines, ending at ``X-Mailqueue-Id``) and turns LF back into CRLF, so the
SHA-256 of the result equals the digest the front end recorded when it said 250.

A copy a remote server wrote (an ``lmtp`` or ``smtp`` store's ``verify_path``) starts with
the server's own trace fields, then mailqueue's ``Received`` and ``X-Mailqueue-Id``
(:func:`mailqueue.mailbox.remote.trace_header`); whatever header fields stand before
``X-Mailqueue-Id`` are the trace block. A server that delivers one message to several
mailboxes in one transaction writes no ``Delivered-To`` (Dovecot's LMTP does so): the
copy's recipient is then the mailbox it lies in, ``{root}/{domain}/{local}``.

Only the files are trusted here, never the queue's bookkeeping: every Maildir under a
store's root is found by walking it, whatever the layout (folders included), and a copy is
known by its trace, whatever a reader renamed it to. Each Maildir is listed as a repeated
delivery lists it (:func:`~mailqueue.mailbox.maildir.list_maildir`: ``new/`` before
``cur/``, both before any file is read), so a file a reader moves from ``new/`` to ``cur/``
during the scan is found in one listing or both, and read once. Each file is read once,
also where stores share a root or one store's root lies inside another's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import sys
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from mailqueue.errors import MailqueueError
from mailqueue.mailbox.maildir import list_maildir, unique_part

if TYPE_CHECKING:
    from mailqueue.config import Config


class ScanError(MailqueueError):
    """A mailbox directory or file cannot be read."""


T = TypeVar("T")

_FIELD = re.compile(rb"^[!-9;-~]+:")  # a header field's name and its colon
_MAX_TRACE_LINES = 64


@dataclasses.dataclass(frozen=True)
class Restored:
    """A delivered file taken apart: its queue id, recipient and the original message."""

    queue_id: str
    recipient: str | None  # the first Delivered-To; None when the copy has none
    message: bytes  # as received, CRLF line ends


@dataclasses.dataclass(frozen=True, slots=True)
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
    """Undo :func:`~mailqueue.mailbox.maildir.render` (or a remote server's delivery of
    what mailqueue sent it); None if ``data`` has no ``X-Mailqueue-Id`` in its trace."""
    queue_id = recipient = None
    offset = 0
    for count in range(_MAX_TRACE_LINES):
        end = data.find(b"\n", offset)
        if end < 0:
            return None
        line = data[offset:end]
        offset = end + 1
        if line[:1] in (b" ", b"\t") and count:
            continue  # a continuation line (of Received:)
        field = _FIELD.match(line)
        if field is None:
            return None
        name = field.group(0).lower()
        value = line[len(name):].strip().decode("utf-8", "surrogateescape")
        if name == b"delivered-to:" and recipient is None:
            recipient = value.strip("<>") or None
        elif name == b"x-mailqueue-id:":
            queue_id = value
            break
    else:
        return None
    if not queue_id:
        return None
    return Restored(queue_id, recipient, data[offset:].replace(b"\n", b"\r\n"))


def read_copy(store: str, path: Path) -> DeliveredCopy:
    """Read and take apart one mailbox file (blocking: call it from a thread)."""
    restored = restore_message(path.read_bytes())
    if restored is None:
        return DeliveredCopy(store, path, None, None, None)
    # Interned: a mailbox's copies share one recipient string (a million copies, a
    # thousand mailboxes).
    recipient = None if restored.recipient is None else sys.intern(restored.recipient)
    return DeliveredCopy(store, path, restored.queue_id, recipient,
                         hashlib.sha256(restored.message).hexdigest())


def placed(copy: DeliveredCopy, root: Path) -> DeliveredCopy:
    """``copy`` with, when it names no recipient, the mailbox it lies in under ``root``
    as its recipient (``{root}/{domain}/{local}/.../{new,cur}/NAME``)."""
    if copy.queue_id is None or copy.recipient is not None:
        return copy
    try:
        parts = copy.path.relative_to(root).parts
    except ValueError:
        return copy
    if len(parts) < 4:
        return copy
    return dataclasses.replace(copy, recipient=f"{parts[1]}@{parts[0]}")


def maildirs(root: Path, skip: Collection[Path] = ()) -> Iterator[Path]:
    """Every Maildir under ``root`` (``root`` too, and folders): each directory with a
    ``new/`` or ``cur/`` in it, in name order, not below the directories in ``skip``.
    Nothing if ``root`` does not exist; a directory that cannot be read raises
    :class:`ScanError` (its files would otherwise pass for lost)."""
    def fail(exc: OSError) -> None:
        if not isinstance(exc, FileNotFoundError):
            raise _scan_error(exc) from exc

    for dirpath, dirnames, _ in os.walk(root, onerror=fail):
        dirnames[:] = sorted(d for d in dirnames if Path(dirpath, d) not in skip)
        if "new" in dirnames or "cur" in dirnames:
            yield Path(dirpath)


def mailbox_files(root: Path, skip: Collection[Path] = ()) -> Iterator[Path]:
    """Every message file in the Maildirs under ``root`` (see :func:`maildirs`), each
    Maildir's ``new/`` before its ``cur/``."""
    for maildir in maildirs(root, skip):
        yield from (Path(entry.path) for entry in _list(maildir))


def read_files(root: Path, read: Callable[[Path], T],
               skip: Collection[Path] = ()) -> Iterator[tuple[Path, T]]:
    """``read(path)`` for every message file under ``root`` (see :func:`maildirs`).

    Each Maildir is listed in full (``new/``, then ``cur/``) before its files are read. A
    file a reader moves on after the listing (flags added, ``new/`` to ``cur/``) is looked
    for again under its unique part in a second listing of its Maildir, so it is neither
    skipped nor read twice. An unreadable file raises :class:`ScanError`. One Maildir at a
    time: a million files are never all in memory at once here."""
    for _, done in read_maildirs(root, read, skip):
        yield from done


def read_maildirs(root: Path, read: Callable[[Path], T], skip: Collection[Path] = ()
                  ) -> Iterator[tuple[Path, list[tuple[Path, T]]]]:
    """:func:`read_files`, a Maildir at a time: (Maildir, its files read)."""
    for maildir in maildirs(root, skip):
        yield maildir, _read_maildir(maildir, read)


def _read_maildir(maildir: Path, read: Callable[[Path], T]) -> list[tuple[Path, T]]:
    done: list[tuple[Path, T]] = []
    vanished: set[str] = set()  # unique parts of files gone between listing and reading
    for entry in _list(maildir):
        try:
            done.append((Path(entry.path), _read(read, Path(entry.path))))
        except FileNotFoundError:
            vanished.add(unique_part(entry.name))
    if not vanished:
        return done
    seen = {path for path, _ in done}
    for entry in _list(maildir):
        moved = Path(entry.path)
        if unique_part(entry.name) in vanished and moved not in seen:
            with contextlib.suppress(FileNotFoundError):
                done.append((moved, _read(read, moved)))
    return done


def _list(maildir: Path) -> list[os.DirEntry[str]]:
    try:
        return list_maildir(maildir)
    except OSError as exc:
        raise _scan_error(exc) from exc


def _scan_error(exc: OSError) -> ScanError:
    return ScanError(f"cannot read {exc.filename}: {exc.strerror or exc}")


def _read(read: Callable[[Path], T], path: Path) -> T:
    try:
        return read(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ScanError(f"cannot read {path}: {exc.strerror or exc}") from exc


def scan_root(store: str, root: Path, skip: Collection[Path] = ()) -> list[DeliveredCopy]:
    """Every file in the Maildirs under ``root``, taken apart (blocking)."""
    return list(iter_root(store, root, skip))


def iter_root(store: str, root: Path, skip: Collection[Path] = ()) -> Iterator[DeliveredCopy]:
    """:func:`scan_root`, one file at a time."""
    for _, copy in read_files(root, lambda path: read_copy(store, path), skip):
        yield placed(copy, root)


def store_roots(stores: Mapping[str, Path]) -> dict[str, Path]:
    """Each store's root, absolute with links resolved (blocking): the form in which copies
    are found and compared with where they belong."""
    return {name: Path(os.path.realpath(root)) for name, root in stores.items()}


def distinct_roots(roots: Mapping[str, Path]) -> list[tuple[str, Path, set[Path]]]:
    """(store, root, roots inside it) to walk so that each file is read once: stores that
    share a root (``roots`` resolved, from :func:`store_roots`) are walked once, under the
    first of their names in sorted order, and a root inside another's is left out of the
    outer walk (it is walked as its own store's)."""
    out: list[tuple[str, Path, set[Path]]] = []
    done: set[Path] = set()
    for store, root in sorted(roots.items()):
        if root not in done:
            done.add(root)
            out.append((store, root, {r for r in roots.values() if root in r.parents}))
    return out


def scan_stores(roots: Mapping[str, Path]) -> list[DeliveredCopy]:
    """Every file in the stores' Maildirs (``roots`` from :func:`store_roots`), each once
    (blocking)."""
    return list(iter_stores(roots))


def iter_stores(roots: Mapping[str, Path]) -> Iterator[DeliveredCopy]:
    """:func:`scan_stores`, one file at a time."""
    for store, root, inner in distinct_roots(roots):
        yield from iter_root(store, root, inner)


def unchecked_stores(config: Config) -> list[str]:
    """The stores whose mailboxes cannot be read here: remote stores without a
    ``verify_path``."""
    return [s.name for s in config.stores if s.mailbox_root is None]


def scan_config(config: Config) -> tuple[list[DeliveredCopy], dict[str, Path]]:
    """Every file in every configured store's Maildirs, each once, and the store roots they
    were found under (blocking)."""
    copies, roots = iter_config(config)
    return list(copies), roots


def iter_config(config: Config) -> tuple[Iterator[DeliveredCopy], dict[str, Path]]:
    """:func:`scan_config`, the files read one at a time as the iterator is taken."""
    roots = store_roots({s.name: root for s in config.stores
                         if (root := s.mailbox_root) is not None})
    return iter_stores(roots), roots
