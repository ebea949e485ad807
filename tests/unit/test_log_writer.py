"""The server's log lines written by a thread of their own (mailqueue.logs.LineWriter)."""

from __future__ import annotations

import io
import threading
import time

from mailqueue.logs import LINGER, LineWriter


class Recording(io.StringIO):
    """A stream that counts its writes and the threads they come from."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.threads: set[str] = set()

    def write(self, text: str) -> int:
        self.writes += 1
        self.threads.add(threading.current_thread().name)
        return super().write(text)


def test_lines_keep_their_order_and_gather_into_few_writes() -> None:
    stream = Recording()
    writer = LineWriter(stream)
    for i in range(1000):
        writer.info(f"line {i}")
    deadline = time.monotonic() + 5
    while stream.getvalue().count("\n") < 1000 and time.monotonic() < deadline:
        time.sleep(LINGER / 5)
    assert stream.getvalue().splitlines() == [f"line {i}" for i in range(1000)]
    assert stream.writes <= 3  # gathered, not a write per line
    assert stream.threads == {"log-writer"}  # never on the caller's thread
    writer.close()


def test_close_writes_what_is_left_and_later_lines_at_once() -> None:
    stream = Recording()
    writer = LineWriter(stream)
    writer.warning("before close")
    writer.close()
    assert stream.getvalue() == "before close\n"
    writer.error("after close")  # e.g. at interpreter exit, after the thread stopped
    assert stream.getvalue() == "before close\nafter close\n"


def test_a_closed_stream_loses_the_lines_not_the_caller() -> None:
    stream = Recording()
    writer = LineWriter(stream)
    stream.close()
    writer.info("nowhere to go")
    writer.close()  # no exception reaches the server
