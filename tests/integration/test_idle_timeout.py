"""``[smtp] timeout`` is an idle timeout: it runs from the last byte the client sent.

A client on a slow line that keeps sending (a command line or a message a few bytes at a
time) is never cut off, however long it takes; one that stops sending hears
``421 4.4.2`` after ``timeout`` seconds, in the middle of a command or of DATA. Over real
TCP, on both DATA paths: the block reader (:mod:`mailqueue.smtp._data`) and aiosmtpd's own
line loop, which the server falls back to when the block reader cannot read the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailqueue.app import MailqueueApp
from mailqueue.smtp import _data as smtpdata
from tests.helpers import make_config, running
from tests.smtpraw import RawSmtp

TIMEOUT = 1.0
GAP = 0.2  # between two pieces of a trickle: well inside TIMEOUT
BODY = b"Subject: slow\r\n\r\n" + b"".join(b"line %d of a slow message\r\n" % i
                                            for i in range(20))


@pytest.fixture(params=["block reader", "aiosmtpd's reader"])
def data_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "aiosmtpd's reader":
        monkeypatch.setattr(smtpdata, "supported", lambda reader: False)
    return str(request.param)


async def _trickle(client: RawSmtp, data: bytes, seconds: float) -> None:
    """Send ``data`` in pieces, one every GAP, over about ``seconds`` (returns as the last
    piece is sent)."""
    pieces = max(1, int(seconds / GAP))
    size = -(-len(data) // pieces)
    for start in range(0, len(data), size):
        if start:
            await asyncio.sleep(GAP)
        await client.send(data[start:start + size])


@contextlib.asynccontextmanager
async def _session(app: MailqueueApp, in_data: bool = False) -> AsyncIterator[RawSmtp]:
    """A client that has had its greeting (and with ``in_data``, is past DATA's 354);
    closed on the way out, whatever happened."""
    assert app.port is not None
    client = await RawSmtp.connect(app.port)
    try:
        assert (await client.reply()).startswith("220")
        if in_data:
            for command, code in ((b"EHLO slow.test", "250"), (b"MAIL FROM:<a@src.test>", "250"),
                                  (b"RCPT TO:<alice@basic.example>", "250"), (b"DATA", "354")):
                assert (await client.cmd(command + b"\r\n")).startswith(code)
        yield client
    finally:
        await client.close()


async def _stored(app: MailqueueApp) -> int:
    return (await app.queue.stats()).messages_total


async def test_a_message_trickled_for_three_timeouts_is_accepted(tmp_path: Path,
                                                                 data_path: str) -> None:
    async with running(make_config(tmp_path, smtp={"timeout": TIMEOUT})) as app, \
            _session(app, in_data=True) as client:
        started = time.monotonic()
        await _trickle(client, BODY + b".\r\n", 3 * TIMEOUT)
        assert time.monotonic() - started > 2 * TIMEOUT
        assert (await client.reply()).startswith("250 2.0.0")
        assert (await client.cmd(b"QUIT\r\n")).startswith("221")
        assert await _stored(app) == 1


async def test_a_command_line_trickled_for_three_timeouts_is_answered(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, smtp={"timeout": TIMEOUT})) as app, \
            _session(app) as client:
        assert (await client.cmd(b"EHLO slow.test\r\n")).startswith("250")
        assert (await client.cmd(b"MAIL FROM:<a@src.test>\r\n")).startswith("250")
        await _trickle(client, b"RCPT TO:<alice@basic.example>\r\n", 3 * TIMEOUT)
        assert (await client.reply()).startswith("250 2.1.5")


async def test_a_client_that_stops_inside_data_is_timed_out(tmp_path: Path,
                                                            data_path: str) -> None:
    async with running(make_config(tmp_path, smtp={"timeout": TIMEOUT})) as app, \
            _session(app, in_data=True) as client:
        await _trickle(client, BODY[:40], 2 * TIMEOUT)
        stopped = time.monotonic()
        reply = await client.reply(timeout=10 * TIMEOUT)
        waited = time.monotonic() - stopped
        assert reply.startswith("421 4.4.2"), reply
        assert 0.9 * TIMEOUT <= waited < 5 * TIMEOUT, waited
        assert await client.closed()
        assert await _stored(app) == 0


async def test_a_client_that_stops_mid_command_is_timed_out(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, smtp={"timeout": TIMEOUT})) as app, \
            _session(app) as client:
        await client.send(b"EHLO half")
        reply = await client.reply(timeout=10 * TIMEOUT)
        assert reply.startswith("421 4.4.2"), reply
        assert await client.closed()
