"""Mailbox content that existed before a window must be intact after it.

:func:`write_snapshot` records every message file under the stores' roots with its SHA-256;
:func:`check_snapshot` reports files that are gone or whose content changed since. A
file is known by its store, its Maildir and the unique part of its name (up to the first
``,`` or ``:``), so a reader moving it from ``new/`` to ``cur/``, setting flags (``:2,S``)
or adding attributes (mailutils' ``,u=N``) is not a change. A file whose name is gone is
looked for by content in the rest of the same mailbox (its Maildir and its folders): a
reader that renamed it altogether, or filed it in a folder, *moved* it; only a file found
nowhere is *missing*.

Neither holds the files in memory: a snapshot is written as the files are read, as JSON
lines (:data:`LINES_FORMAT`: a header, one line per file, a last line with the count), and
the check streams the snapshot and the current files into a scratch SQLite file in the
temporary directory (:class:`Comparison`), removed however it ends. A snapshot written as
one JSON document (:data:`FORMAT`) is read too, a member at a time. :func:`take_snapshot`,
:class:`Manifest` and :func:`compare_snapshot` do the same with every record in memory, for
a few files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from mailqueue.errors import MailqueueError
from mailqueue.mailbox.maildir import unique_part
from mailqueue.queue._auditscratch import CHUNK, blob
from mailqueue.queue._snapshotscratch import SnapshotScratch
from mailqueue.verify._jsonobject import ObjectError, ObjectReader
from mailqueue.verify.scan import distinct_roots, read_maildirs, store_roots

LINES_FORMAT = "mailqueue-snapshot/2"  # written: JSON lines
FORMAT = "mailqueue-snapshot/1"  # one JSON document: read, not written
_FIELDS = {"path": str, "sha256": str, "size": int}
_HEADER_MAX = 64 * 1024


class SnapshotError(MailqueueError):
    """A snapshot file cannot be read or written or is not a mailqueue snapshot, or the
    check's scratch file cannot be made or written."""


@dataclasses.dataclass(frozen=True)
class FileRecord:
    path: str
    sha256: str
    size: int


@dataclasses.dataclass(frozen=True)
class Manifest:
    """Every message file of some stores, by stable key, in memory."""

    created_at: str
    files: dict[str, FileRecord]

    def dump(self, target: Path) -> None:
        """Write it as :func:`write_snapshot` does."""
        _write(target, self.created_at, sorted(self.files.items()))

    @classmethod
    def load(cls, source: Path) -> Manifest:
        """Read a snapshot file (either format) into memory."""
        created_at, records = read_snapshot(source)
        return cls(created_at, dict(records))


@dataclasses.dataclass(frozen=True)
class SnapshotDiff:
    """What changed since a snapshot: ``missing`` and ``changed`` fail; ``moved`` (the same
    content under another name in the same mailbox) and ``added`` do not."""

    missing: tuple[FileRecord, ...]
    changed: tuple[tuple[FileRecord, FileRecord], ...]  # (before, now)
    added: int
    checked: int
    moved: tuple[tuple[FileRecord, FileRecord], ...] = ()  # (before, now)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.changed

    def report(self, since: str) -> str:
        moved = f", {len(self.moved)} moved by a reader" if self.moved else ""
        lines = [f"snapshot of {since}: {self.checked} files checked, {len(self.missing)} "
                 f"missing, {len(self.changed)} changed, {self.added} new since{moved}"]
        if self.missing:
            lines.append(f"MISSING ({len(self.missing)}):")
            lines += [f"  {r.path}" for r in self.missing]
        if self.changed:
            lines.append(f"CHANGED ({len(self.changed)}):")
            lines += [f"  {before.path} (sha256 {before.sha256[:12]} -> {now.sha256[:12]}, "
                      f"{before.size} -> {now.size} bytes)" for before, now in self.changed]
        if self.moved:
            lines.append(f"MOVED ({len(self.moved)}, renamed or filed by a reader, content "
                         "unchanged):")
            lines += [f"  {before.path} -> {now.path}" for before, now in self.moved]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked, "added": self.added,
                "missing": [dataclasses.asdict(r) for r in self.missing],
                "changed": [{"before": dataclasses.asdict(b), "now": dataclasses.asdict(n)}
                            for b, n in self.changed],
                "moved": [{"before": dataclasses.asdict(b), "now": dataclasses.asdict(n)}
                          for b, n in self.moved]}


class Comparison:
    """:func:`compare_snapshot` in parts and in bounded memory: feed it the snapshot's
    records and the current ones, and take the :meth:`result`.

    Only the findings stay in memory; the records go to a scratch file in a temporary
    directory (``directory``, else the system's), removed by :meth:`close`. Blocking."""

    def __init__(self, directory: str | None = None) -> None:
        self._scratch = SnapshotScratch(directory, SnapshotError)

    def __enter__(self) -> Comparison:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the scratch file (again is a no-op)."""
        self._scratch.close()

    def add_before(self, records: Iterable[tuple[str, FileRecord]]) -> None:
        """Records of the snapshot, by key (of one key given twice, the last counts)."""
        for rows in _rows(records):
            self._scratch.add_before(rows)

    def add_now(self, records: Iterable[tuple[str, FileRecord]]) -> None:
        """Records of the files there are now, by key."""
        for rows in _rows(records):
            self._scratch.add_now(rows)

    def result(self) -> SnapshotDiff:
        """What of the snapshot is missing, changed or moved now."""
        checked, fresh = self._scratch.counts()
        missing, moved = [], []
        for before, now in self._scratch.gone():
            if now is None:
                missing.append(FileRecord(*before))
            else:
                moved.append((FileRecord(*before), FileRecord(*now)))
        changed = tuple((FileRecord(*before), FileRecord(*now))
                        for before, now in self._scratch.changed())
        return SnapshotDiff(tuple(missing), changed, fresh - len(moved), checked, tuple(moved))


def _rows(records: Iterable[tuple[str, FileRecord]]
          ) -> Iterator[list[tuple[bytes, bytes, bytes, bytes, int]]]:
    """The records as the scratch file takes them, a chunk at a time."""
    rows = []
    for key, r in records:
        rows.append((blob(key), blob(_mailbox(key)), blob(r.path), blob(r.sha256), r.size))
        if len(rows) >= CHUNK:
            yield rows
            rows = []
    if rows:
        yield rows


def _mailbox(key: str) -> str:
    """``store:domain/local`` of a key: the mailbox its Maildir (or folder) belongs to."""
    store, _, rest = key.partition(":")
    maildir = rest.rpartition("/")[0]
    return f"{store}:{'/'.join(maildir.split('/')[:2])}"


def _rekey(key: str) -> str:
    """A key as :func:`iter_snapshot` makes it, from one a snapshot of :data:`FORMAT` wrote
    (which may have kept the name up to ``:`` only)."""
    prefix, _, name = key.rpartition("/")
    return f"{prefix}/{unique_part(name)}"


def _digest(path: Path) -> tuple[str, int]:
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), len(data)


def iter_snapshot(stores: Mapping[str, Path]) -> Iterator[tuple[str, FileRecord]]:
    """Every message file under each store's root, each file once, by key, as they are
    read (blocking). Two files of one Maildir with one unique part are both kept, the
    second by its whole name."""
    for store, root, inner in distinct_roots(store_roots(stores)):
        for maildir, found in read_maildirs(root, _digest, inner):
            # Keys never repeat across Maildirs, so one Maildir's are all there is to
            # tell apart (the scan holds a Maildir's listing anyway).
            prefix = f"{store}:{maildir.relative_to(root).as_posix()}/"
            files: dict[str, FileRecord] = {}
            for path, (digest, size) in found:
                key = prefix + unique_part(path.name)
                if key in files:
                    key = prefix + path.name
                files[key] = FileRecord(str(path), digest, size)
            yield from files.items()


def take_snapshot(stores: Mapping[str, Path]) -> Manifest:
    """:func:`iter_snapshot` in memory, as a :class:`Manifest` (blocking)."""
    created_at = _now()
    return Manifest(created_at, dict(iter_snapshot(stores)))


def write_snapshot(stores: Mapping[str, Path], target: Path) -> int:
    """Write the snapshot of every message file under each store's root to ``target`` as
    the files are read (into ``target.tmp``, renamed into place once complete); returns
    how many files it records (blocking)."""
    return _write(target, _now(), iter_snapshot(stores))


def compare_snapshot(before: Manifest, now: Manifest) -> SnapshotDiff:
    """What of ``before`` is missing, changed or moved in ``now`` (through a
    :class:`Comparison`; blocking)."""
    with Comparison() as comparison:
        comparison.add_before(before.files.items())
        comparison.add_now(now.files.items())
        return comparison.result()


def check_snapshot(source: Path, stores: Mapping[str, Path],
                   directory: str | None = None) -> tuple[str, SnapshotDiff]:
    """The snapshot in ``source`` against the files under each store's root now, in
    bounded memory: (when the snapshot was taken, what changed since). Blocking."""
    created_at, records = read_snapshot(source)
    with Comparison(directory) as comparison:
        comparison.add_before(records)
        comparison.add_now(iter_snapshot(stores))
        return created_at, comparison.result()


def read_snapshot(source: Path) -> tuple[str, Iterator[tuple[str, FileRecord]]]:
    """(When the snapshot in ``source`` was taken, its records by key). The file is known
    to be a snapshot on return; a damaged record raises :class:`SnapshotError` when the
    records are read to it. A snapshot of :data:`LINES_FORMAT` is read a line at a time,
    one of :data:`FORMAT` a member at a time."""
    try:
        with open(source, "rb") as stream:
            first = stream.readline(_HEADER_MAX)
            offset = stream.tell()
    except FileNotFoundError:
        raise SnapshotError(f"{source}: no such snapshot file") from None
    except OSError as exc:
        raise SnapshotError(f"{source}: cannot read snapshot: {exc}") from None
    header = _header(source, first)
    if header is None:
        return _read_document(source)
    return str(header.get("created_at", "")), _read_lines(source, offset)


def _header(source: Path, first: bytes) -> dict[str, Any] | None:
    """The first line of a snapshot of :data:`LINES_FORMAT`; None if it may be the start
    of a snapshot of :data:`FORMAT` (or of no snapshot)."""
    try:
        header = json.loads(first.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    if not isinstance(header, dict) or header.get("format", FORMAT) == FORMAT:
        return None
    if header["format"] != LINES_FORMAT:
        raise _not_a_snapshot(source)
    return header


def _read_lines(source: Path, offset: int) -> Iterator[tuple[str, FileRecord]]:
    """The records of a snapshot of :data:`LINES_FORMAT` from ``offset`` (after its
    header), checked against its last line (a snapshot cut short is damaged, not
    smaller)."""
    count, end, number = 0, None, 1
    try:
        with open(source, "rb") as stream:
            stream.seek(offset)
            for number, line in enumerate(stream, start=2):
                if end is not None:
                    raise _damaged(source, f"line {number}: a line after the last")
                data = _line(source, number, line)
                if "key" in data:
                    count += 1
                    yield _record(source, number, data)
                else:
                    end = _end(source, number, data)
    except OSError as exc:
        raise SnapshotError(f"{source}: cannot read snapshot: {exc}") from None
    if end is None:
        raise _damaged(source, f"it ends at line {number}, before its last line: cut "
                       "short?")
    if end != count:
        raise _damaged(source, f"it records {count} files, its last line says {end}")


def _line(source: Path, number: int, line: bytes) -> dict[str, Any]:
    try:
        data = json.loads(line.decode("utf-8"))
    except ValueError as exc:
        raise _damaged(source, f"line {number}: {exc}") from None
    if not isinstance(data, dict):
        raise _damaged(source, f"line {number}: not a JSON object")
    return data


def _record(source: Path, number: int, data: dict[str, Any]) -> tuple[str, FileRecord]:
    key = data.pop("key")
    if not isinstance(key, str):
        raise _damaged(source, f"line {number}: the key is not a string")
    try:
        return key, _file_record(data)
    except ValueError as exc:
        raise _damaged(source, f"line {number}: {exc}") from None


def _end(source: Path, number: int, data: dict[str, Any]) -> int:
    count = data.get("files")
    if set(data) != {"files"} or not isinstance(count, int) or isinstance(count, bool):
        raise _damaged(source, f"line {number}: neither a file nor the last line")
    return count


def _file_record(data: Any) -> FileRecord:
    """A record's fields as :class:`FileRecord`; ValueError if they are not exactly those,
    of their types."""
    if not isinstance(data, dict) or set(data) != set(_FIELDS):
        raise ValueError(f"a file record has the fields {', '.join(_FIELDS)}")
    for name, kind in _FIELDS.items():
        value = data[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{name} is not a{'n integer' if kind is int else ' string'}")
    if not 0 <= data["size"] < 2**63:
        raise ValueError("size is out of range")
    return FileRecord(data["path"], data["sha256"], data["size"])


def _read_document(source: Path) -> tuple[str, Iterator[tuple[str, FileRecord]]]:
    """A snapshot of :data:`FORMAT`: one JSON document. Read a member at a time where its
    format and time come before its files (as every snapshot of that format was written),
    else whole."""
    head = _document_head(source)
    if head is not None:
        return head, _stream_document(source)
    try:
        data: Any = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SnapshotError(f"{source}: no such snapshot file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"{source}: cannot read snapshot: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _not_a_snapshot(source)
    files = data.get("files")
    if not isinstance(files, dict):
        raise _damaged(source, "'files' is not an object")
    return str(data.get("created_at", "")), _document_records(source, files.items())


def _document_head(source: Path) -> str | None:
    """The time of a snapshot of :data:`FORMAT` whose format and time come before its
    files; None for any other file (and any that cannot be read so far)."""
    head: dict[str, Any] = {}
    try:
        with open(source, encoding="utf-8") as stream:
            reader = ObjectReader(stream)
            for name in reader.members():
                if name == "files":
                    break
                head[name] = reader.value()
            else:
                return None
    except (OSError, ValueError):  # UnicodeDecodeError and ObjectError are ValueErrors
        return None
    if head.get("format") != FORMAT or "created_at" not in head:
        return None
    return str(head["created_at"])


def _stream_document(source: Path) -> Iterator[tuple[str, FileRecord]]:
    """The records of a snapshot :func:`_document_head` took, a member at a time; the
    rest of the document is read to its end (a document cut short is damaged)."""
    try:
        with open(source, encoding="utf-8") as stream:
            reader = ObjectReader(stream)
            members = reader.members()
            for name in members:
                if name == "files":
                    break
                reader.value()
            yield from _document_records(source, _members(reader))
            for name in members:
                if name in ("format", "created_at", "files"):
                    raise _damaged(source, f"{name!r} is given twice")
                reader.value()
            reader.end()
    except (OSError, UnicodeDecodeError, ObjectError) as exc:
        raise SnapshotError(f"{source}: cannot read snapshot: {exc}") from None


def _members(reader: ObjectReader) -> Iterator[tuple[str, Any]]:
    """(name, value) of each member of the object ``reader`` is at."""
    for name in reader.members():
        yield name, reader.value()


def _document_records(source: Path, files: Iterable[tuple[str, Any]]
                      ) -> Iterator[tuple[str, FileRecord]]:
    for key, value in files:
        try:
            record = _file_record(value)
        except ValueError as exc:
            raise _damaged(source, f"{key}: {exc}") from None
        yield _rekey(key), record


def _not_a_snapshot(source: Path) -> SnapshotError:
    return SnapshotError(f"{source}: not a mailqueue snapshot (expected format "
                         f"{LINES_FORMAT!r} or {FORMAT!r}; write one with --snapshot)")


def _damaged(source: Path, why: str) -> SnapshotError:
    return SnapshotError(f"{source}: damaged snapshot ({why})")


def _write(target: Path, created_at: str, records: Iterable[tuple[str, FileRecord]]) -> int:
    """Write a snapshot of :data:`LINES_FORMAT` into ``target.tmp`` as ``records`` come,
    then rename it to ``target``; the temporary file is removed however it fails."""
    tmp = target.with_name(target.name + ".tmp")
    count = 0
    try:
        with _Out(target, tmp) as out:
            out.line({"format": LINES_FORMAT, "created_at": created_at})
            for key, record in records:
                out.line({"key": key, **dataclasses.asdict(record)})
                count += 1
            out.line({"files": count})
        try:
            tmp.replace(target)
        except OSError as exc:
            raise _unwritable(target, exc) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    return count


class _Out:
    """The temporary file a snapshot is written to, a line at a time; its write errors are
    :class:`SnapshotError` naming the target."""

    def __init__(self, target: Path, tmp: Path) -> None:
        self._target = target
        self._tmp = tmp
        self._file: IO[str] | None = None

    def __enter__(self) -> _Out:
        try:
            self._file = open(self._tmp, "w", encoding="utf-8")
        except OSError as exc:
            raise _unwritable(self._target, exc) from None
        return self

    def line(self, data: dict[str, Any]) -> None:
        assert self._file is not None
        try:
            self._file.write(json.dumps(data) + "\n")
        except OSError as exc:
            raise _unwritable(self._target, exc) from None

    def __exit__(self, *exc: object) -> None:
        assert self._file is not None
        try:
            self._file.close()
        except OSError as error:
            if exc[0] is None:
                raise _unwritable(self._target, error) from None


def _unwritable(target: Path, exc: OSError) -> SnapshotError:
    return SnapshotError(f"{target}: cannot write the snapshot: {exc.strerror or exc}")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


__all__ = ["FORMAT", "LINES_FORMAT", "Comparison", "FileRecord", "Manifest", "SnapshotDiff",
           "SnapshotError", "check_snapshot", "compare_snapshot", "iter_snapshot",
           "read_snapshot", "take_snapshot", "write_snapshot"]
