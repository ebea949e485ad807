"""MAIL reads whether the queue's file is lost from what the server last saw, and never
waits on the file system for it.

The server looks at the queue's path on its own (the control plane's refresh, every
commit). A burst of sessions must not each start a look of their own, nor wait for one: on
a slow file system (a network mount) every MAIL would wait for a ``stat``, and each
session would hold a thread of the default pool while it waits.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import make_config, running
from tests.smtpraw import RawSmtp

SLOW_STAT = 0.2  # a network file system on a bad day
SESSIONS = 20
ROUNDS = 40


class StatWatch:
    """``os.stat`` as before, slowed down for the queue's path, counting the looks at it
    and how many were under way at once."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.real = os.stat
        self.count = 0
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    def __call__(self, path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if os.fspath(path) != self.path:
            return self.real(path, *args, **kwargs)
        with self._lock:
            self.count += 1
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(SLOW_STAT)
            return self.real(path, *args, **kwargs)
        finally:
            with self._lock:
                self.running -= 1


async def _session(port: int, latencies: list[float]) -> None:
    client = await RawSmtp.connect(port)
    try:
        assert (await client.reply()).startswith("220")
        assert (await client.cmd(b"EHLO client.test\r\n")).startswith("250")
        for _ in range(ROUNDS):
            started = time.monotonic()
            reply = await client.cmd(b"MAIL FROM:<a@src.test>\r\n")
            latencies.append(time.monotonic() - started)
            assert reply.startswith("250"), reply
            assert (await client.cmd(b"RSET\r\n")).startswith("250")
            await asyncio.sleep(0.02)
        await client.send(b"QUIT\r\n")
    finally:
        await client.close()


async def test_a_burst_of_mail_commands_does_not_look_at_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(make_config(tmp_path)) as app:
        assert app.port is not None
        watch = StatWatch(tmp_path / "queue.db")
        monkeypatch.setattr(os, "stat", watch)
        latencies: list[float] = []
        started = time.monotonic()
        await asyncio.gather(*(_session(app.port, latencies) for _ in range(SESSIONS)))
        elapsed = time.monotonic() - started
        monkeypatch.undo()
    assert len(latencies) == SESSIONS * ROUNDS
    # The server's own looks only: one at a time, about one per refresh of its state.
    assert watch.most == 1, (watch.most, watch.count)
    assert watch.count <= elapsed / 0.5 + 2, (watch.count, elapsed)
