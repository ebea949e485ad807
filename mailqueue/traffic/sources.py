"""Log files: opened whatever their compression, a rotated set put oldest first, read line
by line in bounded memory.

Compression is told by a file's first bytes, not its name: gzip, bzip2 and xz are read
as they are; zstd is one clear error (decompress it first). Files are grouped by the
name they rotate from and ordered oldest first within a group: ``mail.log.3.gz``,
``mail.log.2.gz``, ``mail.log.1``, ``mail.log`` (numbered, highest first), or
``maillog-20240101.gz`` before ``maillog-20240108`` (dated), the unnumbered file last.
"""

from __future__ import annotations

import bz2
import collections
import dataclasses
import gzip
import io
import lzma
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from mailqueue.errors import MailLogError

_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"))
_ZSTD = b"\x28\xb5\x2f\xfd"
_COMPRESSED_NAMES = (".gz", ".bz2", ".xz", ".zst")
_NUMBERED = re.compile(r"(.+?)[.-](\d{1,3})")
_DATED = re.compile(r"(.+?)[.-](\d{8}(?:[-_T]?\d{2,6})?)")
TAIL_BYTES = 64 * 1024
HEAD_LINES = 500
MAX_LINE = 256 * 1024  # a longer line is cut there (and counted as cut)
_CHUNK = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class LogFile:
    """One log file: where, how big on disk, how compressed, when last modified."""

    path: Path
    size: int
    compression: str  # "", gzip, bzip2, xz
    mtime: float

    @property
    def name(self) -> str:
        return str(self.path)


def inspect(path: Path) -> LogFile:
    """A :class:`LogFile` for ``path``; MailLogError for a file that cannot be read."""
    try:
        with path.open("rb") as handle:
            magic = handle.read(6)
            stat = path.stat()
    except FileNotFoundError:
        raise MailLogError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise MailLogError(f"{path}: is a directory (give its log files: {path}/mail.log*)"
                           ) from None
    except OSError as exc:
        raise MailLogError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if magic.startswith(_ZSTD):
        raise MailLogError(f"{path}: compressed with zstd; decompress it first (zstd -d)")
    compression = next((kind for head, kind in _MAGIC if magic.startswith(head)), "")
    return LogFile(path=path, size=stat.st_size, compression=compression, mtime=stat.st_mtime)


def rotation_key(path: Path) -> tuple[str, tuple[int, int, str]]:
    """``(the name it rotates from, its place: older first)``."""
    name = path.name
    for suffix in _COMPRESSED_NAMES:
        name = name.removesuffix(suffix)
    numbered = _NUMBERED.fullmatch(name)
    if numbered:
        return str(path.parent / numbered.group(1)), (0, -int(numbered.group(2)), "")
    dated = _DATED.fullmatch(name)
    if dated:
        return str(path.parent / dated.group(1)), (0, 0, dated.group(2))
    return str(path.parent / name), (1, 0, "")


def order_logs(paths: Sequence[Path]) -> list[list[LogFile]]:
    """The files in groups (one per name they rotate from), each oldest first; a file
    given twice is read once."""
    groups: dict[str, list[tuple[tuple[int, int, str], LogFile]]] = {}
    seen: set[Path] = set()
    for path in paths:
        resolved = path.resolve()
        if resolved in seen:
            continue
        seen.add(resolved)
        base, place = rotation_key(path)
        groups.setdefault(base, []).append((place, inspect(path)))
    return [[log for _, log in sorted(files, key=lambda item: item[0])]
            for _, files in sorted(groups.items())]


def open_log(log: LogFile, raw: io.BufferedReader) -> io.BufferedIOBase:
    """The decompressed stream of an opened file."""
    if log.compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if log.compression == "bzip2":
        return bz2.BZ2File(raw, mode="rb")
    if log.compression == "xz":
        return lzma.LZMAFile(raw, mode="rb")
    return raw


class Truncated(Exception):
    """A compressed file ends before its end-of-stream marker (it is still being written,
    or was cut off)."""


def read_lines(log: LogFile, progress: Callable[[int], None] | None = None
               ) -> Iterator[bytes]:
    """The file's lines, each with its line end; a line without one was cut short (the
    file's last line as it was being written, or a line longer than :data:`MAX_LINE`, whose
    rest is skipped). ``progress`` is called now and then with the bytes of the file read
    since its last call. A compressed file cut off ends with :class:`Truncated`; damaged
    data is a MailLogError."""
    try:
        with log.path.open("rb") as raw, open_log(log, raw) as stream:
            reported = 0
            count = 0
            while line := stream.readline(MAX_LINE):
                if len(line) == MAX_LINE and not line.endswith(b"\n"):
                    _skip_rest(stream)
                yield line
                count += 1
                if progress is not None and not count & 0x3FFF:
                    position = raw.tell()
                    progress(position - reported)
                    reported = position
            if progress is not None:
                progress(log.size - reported)
    except EOFError:
        raise Truncated() from None
    except (OSError, zlib.error, lzma.LZMAError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise MailLogError(f"{log.name}: no such file (removed while being read)"
                               ) from None
        reason = getattr(exc, "strerror", None) or exc
        raise MailLogError(f"{log.name}: cannot read ({log.compression or 'plain'} file): "
                           f"{reason}") from None


def _skip_rest(stream: io.BufferedIOBase) -> None:
    while (rest := stream.readline(MAX_LINE)) and not rest.endswith(b"\n"):
        pass


def head_lines(log: LogFile, count: int = HEAD_LINES) -> list[bytes]:
    """The first ``count`` lines (the first 1 MiB at most)."""
    lines: list[bytes] = []
    read = 0
    try:
        for line in read_lines(log):
            lines.append(line)
            read += len(line)
            if len(lines) >= count or read >= _CHUNK:
                break
    except Truncated:
        pass
    return lines


def tail_lines(log: LogFile, progress: Callable[[int], None] | None = None) -> list[bytes]:
    """The last lines (about the last 64 KiB): a plain file is read from near its end, a
    compressed one through (``progress`` as :func:`read_lines`)."""
    if not log.compression:
        try:
            with log.path.open("rb") as handle:
                handle.seek(max(0, log.size - TAIL_BYTES))
                data = handle.read(TAIL_BYTES)
        except OSError as exc:
            raise MailLogError(f"{log.name}: cannot read: {exc.strerror or exc}") from None
        lines = data.splitlines(keepends=True)
        return lines[1:] if log.size > TAIL_BYTES else lines  # the first may be partial
    kept: collections.deque[bytes] = collections.deque()
    size = 0
    try:
        for line in read_lines(log, progress):
            kept.append(line)
            size += len(line)
            while size > TAIL_BYTES and len(kept) > 1:
                size -= len(kept.popleft())
    except Truncated:
        pass
    return list(kept)
