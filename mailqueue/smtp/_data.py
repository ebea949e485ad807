"""Reading a DATA section in blocks instead of line by line.

aiosmtpd reads message data with one ``readuntil(b"\\r\\n")`` per line: for a 4 KiB message
that is some sixty coroutine resumptions, list appends and joins, the largest
single cost of the front end. :func:`read_data` takes whatever the stream has buffered, up to
and including the ``CRLF.CRLF`` that ends the data, in one step, and then applies the same
rules to the whole block: the size limit, the line-length limit, and dot-unstuffing
(RFC 5321 4.5.2). Bytes after the terminator (a pipelining client's next command) stay in
the stream for the command loop.

It looks at the stream's buffer without consuming it (``StreamReader`` has no public peek);
:func:`supported` says whether this reader has the buffer it expects, and the caller falls
back to aiosmtpd's own loop when not.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

END = b"\r\n.\r\n"
_LINE_END = b"\r\n"


class DataState(enum.Enum):
    NOMINAL = "nominal"
    TOO_LONG = "too long"    # a line longer than the line-length limit: 500
    TOO_MUCH = "too much"    # more data than the size limit: 552


@dataclass(frozen=True)
class DataResult:
    state: DataState
    content: bytes = b""     # unstuffed message, every line ending CRLF (NOMINAL only)


def supported(reader: asyncio.StreamReader) -> bool:
    return isinstance(getattr(reader, "_buffer", None), bytearray)


async def read_data(reader: asyncio.StreamReader, size_limit: int | None,
                    line_limit: int) -> DataResult:
    """Read up to the end-of-data line; the content, or why it is refused.

    ``line_limit`` counts a line with its CRLF (aiosmtpd's ``line_length_limit``);
    ``size_limit`` counts the data before unstuffing, as aiosmtpd does. Data past either
    limit is read and dropped, so the session can go on with the next command.
    Raises :class:`asyncio.IncompleteReadError` if the stream ends first.
    """
    buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
    kept = bytearray()
    state = DataState.NOMINAL
    total = 0
    last = _LINE_END  # the data starts at a line start: a virtual CRLF before it
    while True:
        done = False
        if not buffer:
            chunk = await reader.readexactly(1)  # wait for more data
            done = (last + chunk).endswith(END)
        else:
            joint = last + bytes(buffer[:4])
            found = joint.find(END)
            if found >= 0:
                take, done = found + len(END) - len(last), True
            else:
                found = buffer.find(END)
                take, done = (found + len(END), True) if found >= 0 else (len(buffer), False)
            chunk = await reader.readexactly(take)  # buffered already: returns at once
        total += len(chunk)
        last = (last + chunk)[-4:]
        if state is DataState.NOMINAL:
            kept += chunk
            # The end-of-data line is not data; nor, until the next byte shows, is what
            # could be its start (a "." or ".\r" after a line end).
            pending = 3 if done else 2 if last.endswith(b"\r\n.\r") else \
                1 if last.endswith(b"\r\n.") else 0
            if size_limit and total - pending > size_limit:
                state = DataState.TOO_LONG if _too_long(kept, line_limit) \
                    else DataState.TOO_MUCH
                kept = bytearray()
        if done:
            break
    if state is not DataState.NOMINAL:
        return DataResult(state)
    del kept[-3:]  # the ".\r\n" line
    if len(kept) > line_limit - 2 and _too_long(kept, line_limit):
        return DataResult(DataState.TOO_LONG)
    if kept[:1] == b".":
        del kept[0]
    return DataResult(DataState.NOMINAL, bytes(kept).replace(b"\r\n.", b"\r\n"))


def _too_long(data: bytearray, line_limit: int) -> bool:
    """Whether a line of ``data`` (with its CRLF) is longer than ``line_limit`` bytes.

    Each step jumps to the last line end within ``line_limit`` bytes, so a message of short
    lines costs a few searches, not one per line; a step that finds none has found a line
    that is too long (or, at the end of the data, an unfinished one longer than allowed).
    """
    pos, size, longest = 0, len(data), line_limit - len(_LINE_END)
    while size - pos > longest:
        found = data.rfind(_LINE_END, pos, pos + line_limit)
        if found < 0:
            return True
        pos = found + len(_LINE_END)
    return False
