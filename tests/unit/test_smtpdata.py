"""The block DATA reader against a line-by-line model of aiosmtpd's loop."""

from __future__ import annotations

import asyncio

from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailqueue.smtp._data import DataResult, DataState, read_data

LINE_LIMIT = 40


def reference(stream: bytes, size_limit: int | None, line_limit: int
              ) -> tuple[DataResult, bytes]:
    """aiosmtpd 1.4's rules, one CRLF-ended line at a time: (result, bytes left over)."""
    lines, size, state, pos = [], 0, DataState.NOMINAL, 0
    while True:
        end = stream.index(b"\r\n", pos) + 2
        line, pos = stream[pos:end], end
        if line == b".\r\n":
            break
        size += len(line)
        if state is DataState.NOMINAL and size_limit and size > size_limit:
            state = DataState.TOO_MUCH
        if state is DataState.NOMINAL and len(line) > line_limit:
            state = DataState.TOO_LONG
        lines.append(line[1:] if line.startswith(b".") else line)
    if state is not DataState.NOMINAL:
        return DataResult(state), stream[pos:]
    return DataResult(state, b"".join(lines)), stream[pos:]


async def run(stream: bytes, cuts: list[int], size_limit: int | None) -> tuple[DataResult, bytes]:
    reader = asyncio.StreamReader(limit=LINE_LIMIT)

    async def feed() -> None:
        start = 0
        for cut in [*sorted({c % (len(stream) + 1) for c in cuts}), len(stream)]:
            reader.feed_data(stream[start:cut])
            start = max(start, cut)
            await asyncio.sleep(0)
        reader.feed_eof()

    feeder = asyncio.ensure_future(feed())
    result = await read_data(reader, size_limit, LINE_LIMIT)
    await feeder
    return result, await reader.read()


lines = st.lists(st.one_of(
    st.sampled_from([b"", b".", b"..", b".x", b"x.", b"\r", b"\n", b"a\rb", b"a\nb"]),
    st.binary(max_size=50).map(lambda b: b.replace(b"\r\n", b"")),
), max_size=12)


@settings(max_examples=400, deadline=None)
# Exactly at the size limit, the data arriving first and the end-of-data line after it: the
# "." that starts that line was once counted as data, and the message refused with 552.
@example(body_lines=[b"..", b"..", b"\x00" * 9, b"\x00" * 9], cuts=[30], size_limit=30,
         after=b"")
@example(body_lines=[b"x" * 28], cuts=[30, 31], size_limit=30, after=b"")
@given(lines, st.lists(st.integers(0, 10_000), max_size=6), st.sampled_from([None, 0, 30, 120]),
       st.sampled_from([b"", b"QUIT\r\n", b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n"]))
def test_block_reader_agrees_with_the_line_reader(body_lines: list[bytes], cuts: list[int],
                                                  size_limit: int | None, after: bytes) -> None:
    stream = b"".join(line + b"\r\n" for line in body_lines) + b".\r\n" + after
    want = reference(stream, size_limit, LINE_LIMIT)
    got = asyncio.run(run(stream, cuts, size_limit))
    # Over both limits, aiosmtpd names whichever it met first; either refusal is fine.
    if want[0].state is not DataState.NOMINAL:
        assert got[0].state is not DataState.NOMINAL
        assert got[1] == want[1]
    else:
        assert got == want


def test_an_empty_message_and_pipelined_commands() -> None:
    result, left = asyncio.run(run(b".\r\nQUIT\r\n", [0, 1, 2], None))
    assert result == DataResult(DataState.NOMINAL, b"")
    assert left == b"QUIT\r\n"


def test_a_terminator_split_across_reads_is_found() -> None:
    stream = b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n"
    for cut in range(len(stream)):
        result, left = asyncio.run(run(stream, [cut], None))
        assert result.content == b"Subject: x\r\n\r\nbody\r\n"
        assert left == b"QUIT\r\n"


def test_the_stream_ending_before_the_terminator_raises() -> None:
    async def go() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(b"half a message\r\n")
        reader.feed_eof()
        await read_data(reader, None, 1001)

    try:
        asyncio.run(go())
    except asyncio.IncompleteReadError:
        return
    raise AssertionError("no IncompleteReadError")


@given(st.lists(st.integers(0, 60), max_size=8), st.booleans())
def test_the_line_length_check_finds_exactly_the_long_lines(lengths: list[int], open_end: bool
                                                            ) -> None:
    from mailqueue.smtp._data import _too_long

    data = bytearray(b"".join(b"x" * n + b"\r\n" for n in lengths))
    if open_end and lengths:
        del data[-2:]  # an unfinished last line
    assert _too_long(data, LINE_LIMIT) == any(n + 2 > LINE_LIMIT for n in lengths)
