"""A lost queue file is told to the operator once, not once per message refused.

Sessions that were already sending their messages when the file went get ``451`` at the
end of DATA; the log has the one ``queue_file_lost`` error and no warning per message or
per batch beside it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.test_queue_file_lost import (  # noqa: F401
    WRITERS,
    Served,
    _delete,
    make_served,
)
from tests.smtpraw import RawSmtp

SESSIONS = 6


async def _up_to_data(port: int) -> RawSmtp:
    """A session that has been told to send its message (354)."""
    client = await RawSmtp.connect(port)
    assert (await client.reply()).startswith("220")
    assert (await client.cmd(b"EHLO client.test\r\n")).startswith("250")
    assert (await client.cmd(b"MAIL FROM:<a@src.test>\r\n")).startswith("250")
    assert (await client.cmd(b"RCPT TO:<alice@basic.example>\r\n")).startswith("250")
    assert (await client.cmd(b"DATA\r\n")).startswith("354")
    return client


@pytest.mark.parametrize("writer", WRITERS)
async def test_messages_refused_for_a_lost_file_are_not_each_a_warning(
        make_served: Callable[[str], Any], writer: str) -> None:  # noqa: F811
    served: Served = await make_served(writer)
    assert (await served.send("before")).startswith("250 2.0.0")
    clients = await asyncio.gather(*(_up_to_data(served.port) for _ in range(SESSIONS)))
    _delete(served.queue)
    try:
        replies = await asyncio.gather(*(
            c.cmd(f"Subject: s{i}\r\n\r\nhi\r\n.\r\n".encode()) for i, c in enumerate(clients)))
    finally:
        for client in clients:
            await client.close()
    assert all(r.startswith("451 4.3.0") for r in replies), replies
    assert await served.server.terminate() == 0
    told = [(e["event"], e["level"]) for e in served.events()
            if e.get("level") in ("warning", "error")]
    assert ("queue_file_lost", "error") in told
    per_message = [t for t in told if t[0] in ("message_not_queued", "queue_commit_refused")]
    assert per_message == [], told
