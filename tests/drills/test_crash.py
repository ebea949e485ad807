"""Crash drills (CI-sized; ``scripts/drill.py --kills K`` runs them long).

Kill -9 the server while 20 clients send, at random moments and at hooked points; kill -9
the worker mid-drain; SIGTERM under load. Afterwards every message that got a 250 is in
its mailboxes exactly once, intact, and nothing is there that was never sent.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from mailqueue.testing.drills import (
    Server,
    crash_drill,
    free_port,
    sigterm_drill,
    worker_kill_drill,
    write_config,
    writer_kill_drill,
)
from tests.smtpraw import RawSmtp

pytestmark = [pytest.mark.drill, pytest.mark.timeout(600)]


def _assert_clean(report) -> None:  # type: ignore[no-untyped-def]
    print(report.line())
    assert report.kills > 0 and report.acknowledged > 0
    assert report.checked >= report.acknowledged
    assert (report.lost, report.duplicates, report.phantoms, report.corrupted) == (0, 0, 0, 0), \
        report.line()


async def test_kill9_server_under_load(tmp_path: Path) -> None:
    report = await crash_drill(tmp_path, kills=12, seed=7)
    _assert_clean(report)
    hooked = sum(n for k, n in report.notes.items() if k.startswith("hooked "))
    assert hooked >= 4, report.notes  # the hooked points were really reached


async def test_kill9_server_with_a_writer_process(tmp_path: Path) -> None:
    report = await crash_drill(tmp_path, kills=8, seed=11, writer="process")
    _assert_clean(report)
    hooked = sum(n for k, n in report.notes.items() if k.startswith("hooked "))
    assert hooked >= 3, report.notes


async def test_kill9_writer_process_under_load(tmp_path: Path) -> None:
    report = await writer_kill_drill(tmp_path, kills=6)
    _assert_clean(report)
    assert report.notes.get("acknowledged again after a kill") == 6, report.notes


async def test_kill9_worker_mid_drain(tmp_path: Path) -> None:
    report = await worker_kill_drill(tmp_path, kills=4, messages=300)
    _assert_clean(report)


async def test_sigterm_under_load(tmp_path: Path) -> None:
    report = await sigterm_drill(tmp_path, rounds=3)
    _assert_clean(report)
    assert report.notes.get("exit 0") == 3, report.notes
    # A session that had its greeting either finished or was told 421: nothing else.
    in_session = {k for k in report.notes if k.startswith("client ")
                  and not k.startswith("client connect: ")}
    assert in_session <= {"client reply 421"}, report.notes


LOOPS = [pytest.param("asyncio"), pytest.param("uvloop", marks=pytest.mark.skipif(
    importlib.util.find_spec("uvloop") is None, reason="uvloop (the 'fast' extra) missing"))]


@pytest.mark.parametrize("loop", LOOPS)
async def test_sigterm_tells_a_session_still_open_at_the_deadline_421(tmp_path: Path,
                                                                      loop: str) -> None:
    port = free_port()
    server = Server(write_config(tmp_path, port, grace=1.0), port, loop=loop)
    try:
        server.start()
        await server.listening()
        client = await RawSmtp.connect(port)
        assert (await client.reply()).startswith("220")
        assert (await client.cmd(b"EHLO slow.test\r\n")).startswith("250")
        assert (await client.cmd(b"MAIL FROM:<a@src.test>\r\n")).startswith("250")
        assert await server.terminate() == 0
        assert (await client.reply()).startswith("421 4.3.2")
        await client.close()
    finally:
        server.cleanup()


@pytest.mark.parametrize("loop", LOOPS)
async def test_an_idle_session_is_told_421_before_it_is_closed(tmp_path: Path,
                                                              loop: str) -> None:
    port = free_port()
    server = Server(write_config(tmp_path, port, timeout=0.5), port, loop=loop)
    try:
        server.start()
        await server.listening()
        client = await RawSmtp.connect(port)
        assert (await client.reply()).startswith("220")
        assert (await client.cmd(b"EHLO idle.test\r\n")).startswith("250")
        assert (await client.reply(timeout=5)).startswith("421 4.4.2")
        await client.close()
        assert await server.terminate() == 0
    finally:
        server.cleanup()
