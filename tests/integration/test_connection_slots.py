"""Connections that end early give their slot back, on asyncio and on uvloop.

A load balancer's TCP health check or a port scan connects and closes at once; other
clients close during the greeting, in the middle of a command or of DATA, or reset the
connection. Each must give back its per-address slot (so the address is not refused
``421 4.7.0`` once ``max_connections_per_ip`` probes have come and gone), and a stop must
not wait for sessions that are gone.

The servers run on the loop named by the test (``loops.run``), with real TCP clients on
blocking sockets in threads, so that a probe can close before the server has run any of
the session.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mailqueue import loops
from mailqueue.app import MailqueueApp
from mailqueue.testing.drills import Server, write_config
from tests.helpers import make_config, running, wait_for
from tests.served import free_port
from tests.smtpraw import RawSmtp

LOOPS = [pytest.param("asyncio"), pytest.param("uvloop", marks=pytest.mark.skipif(
    importlib.util.find_spec("uvloop") is None, reason="uvloop (the 'fast' extra) missing"))]
PER_IP = 20
BODY = b"Subject: t\r\n\r\n" + b"x" * 60 + b"\r\n"


def _connect(port: int, reset: bool) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if reset:  # close() sends RST instead of FIN
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return sock


def _expect(sock: socket.socket, code: bytes) -> None:
    """Read one whole reply; it must start with ``code``."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        assert chunk, f"closed while waiting for {code!r}"
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) > 1 and lines[-2][3:4] != b"-":
            break
    assert data.startswith(code), data


def _in_transaction(sock: socket.socket) -> None:
    _expect(sock, b"220")
    for line, code in ((b"EHLO probe.test", b"250"), (b"MAIL FROM:<a@src.test>", b"250"),
                       (b"RCPT TO:<alice@basic.example>", b"250"), (b"DATA", b"354")):
        sock.sendall(line + b"\r\n")
        _expect(sock, code)


def at_once(sock: socket.socket) -> None:
    """A TCP health check: connect, close."""


def after_greeting(sock: socket.socket) -> None:
    _expect(sock, b"220")


def mid_command(sock: socket.socket) -> None:
    _expect(sock, b"220")
    sock.sendall(b"EHLO half-a-li")


def during_data(sock: socket.socket) -> None:
    _in_transaction(sock)
    sock.sendall(BODY)


def at_end_of_data(sock: socket.socket) -> None:
    """The whole message, then gone before the reply."""
    _in_transaction(sock)
    sock.sendall(BODY + b".\r\n")


CLOSERS: dict[str, Callable[[socket.socket], None]] = {
    "at once": at_once, "after the greeting": after_greeting, "mid-command": mid_command,
    "during DATA": during_data, "at the end of DATA": at_end_of_data}


def _probes(port: int, closer: Callable[[socket.socket], None], reset: bool,
            count: int) -> None:
    for _ in range(count):
        sock = _connect(port, reset)
        try:
            closer(sock)
        finally:
            sock.close()


async def _after_the_probes(port: int) -> None:
    """Return once the server has taken every connection made so far: it accepts them in
    order, so once this one is answered (220, or 421 if slots are short) the earlier ones
    have had their turn."""
    client = await RawSmtp.connect(port)
    try:
        assert (await client.reply())[:3] in ("220", "421")
    finally:
        await client.close()


async def _usable(port: int) -> None:
    """A real client from the same address is served, not refused 421."""
    client = await RawSmtp.connect(port)
    try:
        assert (await client.reply()).startswith("220"), client.replies
        assert (await client.cmd(b"EHLO real.test\r\n")).startswith("250")
        assert (await client.cmd(b"QUIT\r\n")).startswith("221")
    finally:
        await client.close()


async def _scenario(tmp_path: Path, closer: str, reset: bool) -> None:
    config = make_config(tmp_path, smtp={"max_connections_per_ip": PER_IP,
                                         "shutdown_grace": 60, "timeout": 300})
    app: MailqueueApp
    async with running(config) as app:
        assert app.port is not None
        try:
            # More probes than the address has slots: a leaked slot shows as a 421.
            await asyncio.to_thread(_probes, app.port, CLOSERS[closer], reset, PER_IP + 5)
            await _after_the_probes(app.port)
            await wait_for(lambda: app.gate.open_connections == 0, timeout=5)
            assert not app.gate.transports
            await _usable(app.port)
            await wait_for(lambda: app.gate.open_connections == 0, timeout=5)
        except BaseException:
            # Sessions left open would hold the stop for its grace (and uvloop's close).
            app.gate.close_all()
            raise
        stopping = time.monotonic()
    # Nothing is left for the stop to wait for (shutdown_grace is 60 s).
    assert time.monotonic() - stopping < 5


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("reset", [False, True], ids=["FIN", "RST"])
@pytest.mark.parametrize("closer", list(CLOSERS))
def test_a_connection_that_ends_early_gives_its_slot_back(tmp_path: Path, loop: str,
                                                          closer: str, reset: bool) -> None:
    loops.run(_scenario(tmp_path, closer, reset), loop)


@pytest.mark.parametrize("loop", LOOPS)
async def test_sigterm_after_health_checks_exits_promptly(tmp_path: Path, loop: str) -> None:
    port = free_port()
    server = Server(write_config(tmp_path, port, grace=60), port, loop=loop)
    try:
        server.start()
        await server.listening()
        await asyncio.to_thread(_probes, port, at_once, False, 50)
        await asyncio.to_thread(_probes, port, at_once, True, 50)
        await _after_the_probes(port)
        started = time.monotonic()
        assert await server.terminate(timeout=20) == 0
        assert time.monotonic() - started < 5
    finally:
        server.cleanup()
