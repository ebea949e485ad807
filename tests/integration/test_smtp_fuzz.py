"""Fuzz the SMTP front end over a real connection with Hypothesis.

Random sequences of commands, fragments and bytes are pipelined into a session, followed by
an end-of-data and QUIT. Whatever happens: the server does not crash, still answers a
well-formed transaction, leaks nothing, and stores exactly as many messages as it sent
``250 ... queued as`` replies. The default run tries a few dozen sequences; the ``drill``
marker runs thousands.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailqueue.app import MailqueueApp
from tests.helpers import make_config
from tests.smtpraw import LEAK

VOCAB = [
    b"EHLO fuzz.test", b"HELO fuzz.test", b"EHLO", b"MAIL FROM:<a@src.test>", b"MAIL FROM:<>",
    b"MAIL FROM:<a@src.test> SIZE=10", b"MAIL FROM:<a@src.test> SIZE=999999999",
    b"MAIL FROM:<a@src.test> BODY=8BITMIME", b"MAIL FROM:<a@src.test> SMTPUTF8",
    b"MAIL FROM:a@src.test", b"MAIL FROM:<a@@>", b"RCPT TO:<alice@basic.example>",
    b"RCPT TO:<carol@exchange.example>", b"RCPT TO:<zed@exchange.example>",
    b"RCPT TO:<x@foreign.example>", b"RCPT TO:<\"q u\"@basic.example>", b"RCPT TO:<>",
    b"DATA", b"DATA x", b"RSET", b"NOOP", b"VRFY alice", b"HELP", b"EXPN x", b"BDAT 10 LAST",
    b"STARTTLS", b"AUTH PLAIN", b"Subject: fuzz", b"", b".", b"..", b"\x00", b"\xff\xfe",
]
ENDINGS = [b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b""]

item = st.one_of(
    st.tuples(st.sampled_from(VOCAB), st.sampled_from(ENDINGS)).map(lambda t: t[0] + t[1]),
    st.binary(max_size=64),
    st.sampled_from([b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r\n.\r\n"]),
    st.integers(500, 1500).map(lambda n: b"X" * n + b"\r\n"),
)
sessions = st.lists(item, max_size=14)


class ServerThread:
    """A MailqueueApp on its own event loop in a thread; sync tests talk to it over TCP."""

    def __init__(self, tmp: Path) -> None:
        config = make_config(tmp, smtp={"timeout": 5, "max_connections_per_ip": 1000})
        self.loop = asyncio.new_event_loop()
        self.app = MailqueueApp(config, run_worker=False)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.acked = 0

    def _run(self) -> None:
        self.loop.run_until_complete(self.app.run())
        self.loop.close()

    def __enter__(self) -> ServerThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.app.ready.wait(), self.loop).result(15)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.loop.call_soon_threadsafe(self.app.stop)
        self.thread.join(20)

    @property
    def port(self) -> int:
        assert self.app.port
        return self.app.port

    def stored(self) -> int:
        future = asyncio.run_coroutine_threadsafe(self.app.queue.stats(), self.loop)
        return future.result(10).messages_total


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    with ServerThread(tmp_path_factory.mktemp("fuzz")) as running_server:
        yield running_server


def session(port: int, payload: bytes) -> list[str]:
    """Pipeline ``payload`` into one session and read every reply until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while data := sock.recv(65536):
                chunks.append(data)
    return b"".join(chunks).decode("ascii", "replace").splitlines()


WELL_FORMED = (b"EHLO ok.test\r\nMAIL FROM:<a@src.test>\r\nRCPT TO:<alice@basic.example>\r\n"
               b"DATA\r\nSubject: after fuzz\r\n\r\nstill here\r\n.\r\nQUIT\r\n")


def check_session(server: ServerThread, items: list[bytes]) -> None:
    lines = session(server.port, b"".join(items) + b"\r\n.\r\nQUIT\r\n")
    assert lines and lines[0].startswith("220"), lines[:3]
    for line in lines:
        assert not LEAK.search(line), line
        assert line[:1] in "2345", line  # every line is an SMTP reply
    server.acked += sum(1 for line in lines if line.startswith("250 2.0.0 Ok: queued as"))
    after = session(server.port, WELL_FORMED)
    assert any(line.startswith("250 2.0.0 Ok: queued as") for line in after), after
    server.acked += 1
    assert server.stored() == server.acked


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(items=sessions)
def test_fuzzed_sessions(server: ServerThread, items: list[bytes]) -> None:
    check_session(server, items)


@pytest.mark.drill
@settings(max_examples=500, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(items=sessions)
def test_fuzzed_sessions_long(server: ServerThread, items: list[bytes]) -> None:
    check_session(server, items)
