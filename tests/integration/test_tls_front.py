"""STARTTLS and implicit TLS at the front end, over real TCP, with real TLS clients.

Mail sent over TLS is durable when it is acknowledged and records the session's protocol
and cipher; ``require_tls`` refuses mail commands before STARTTLS; what a client pipelines
before the handshake is dropped; and every broken, plaintext, abandoned or refused
handshake ends the connection cleanly — nothing stored, its slot given back, no error
logged, the next client served — on asyncio and on uvloop.
"""

from __future__ import annotations

import asyncio
import importlib.util
import smtplib
import socket
import ssl
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from mailqueue import loops
from mailqueue.app import MailqueueApp
from mailqueue.queue.values import QueueFilter
from tests.helpers import make_config, message, running, wait_for
from tests.smtpraw import LEAK, RawSmtp
from tests.tlshelp import insecure_context, make_cert, tls_config, trusting

LOOPS = [pytest.param("asyncio"), pytest.param("uvloop", marks=pytest.mark.skipif(
    importlib.util.find_spec("uvloop") is None, reason="uvloop (the 'fast' extra) missing"))]
MAIL = b"MAIL FROM:<a@src.test>\r\n"
RCPT = b"RCPT TO:<alice@basic.example>\r\n"
BODY = b"Subject: over tls\r\n\r\nhello\r\n.\r\n"


async def _stored(app: MailqueueApp) -> list[Any]:
    return list(await app.queue.list_messages(QueueFilter(include_done=True)))


def _errors_caught() -> list[dict[str, Any]]:
    """Record what reaches the running loop's exception handler (a leaked exception)."""
    caught: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: caught.append(ctx))
    return caught


async def _send_over_starttls(port: int, context: ssl.SSLContext | None = None) -> str:
    client = await RawSmtp.connect(port)
    try:
        assert (await client.reply()).startswith("220")
        assert "STARTTLS" in await client.cmd(b"EHLO client.test\r\n")
        await client.starttls(context)
        ehlo = await client.cmd(b"EHLO client.test\r\n")
        assert ehlo.startswith("250") and "STARTTLS" not in ehlo
        for line, code in ((MAIL, "250"), (RCPT, "250"), (b"DATA\r\n", "354")):
            assert (await client.cmd(line)).startswith(code), client.replies
        return await client.cmd(BODY)
    finally:
        await client.close()


# --- clients that do it right -----------------------------------------------------------

async def test_smtplib_starttls_message_is_committed_before_250_and_records_tls(
        tmp_path: Path) -> None:
    async with running(tls_config(tmp_path)) as app:
        def send() -> dict[str, tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", app.port) as client:
                client.starttls(context=insecure_context())
                return client.sendmail("a@src.test", ["alice@basic.example"],
                                       message("smtplib tls"))

        refused = await asyncio.to_thread(send)
        assert refused == {}
        # The 250 came after the commit: the message is in the queue the moment it is read.
        [stored] = await _stored(app)
        assert stored.tls is not None and stored.tls.startswith("TLSv1.")
        assert stored.auth_user is None


async def test_aiosmtplib_starttls_verifying_the_self_signed_certificate(
        tmp_path: Path) -> None:
    async with running(tls_config(tmp_path)) as app:
        cert = tmp_path / "tls" / "cert.pem"
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=app.port, start_tls=False)
        await client.connect()
        await client.starttls(server_hostname="mx.test", tls_context=trusting(cert))
        errors, reply = await client.sendmail("a@src.test", ["bob@basic.example"],
                                              message("aiosmtplib tls"))
        await client.quit()
        assert errors == {} and reply.startswith("2.0.0 Ok: queued as")
        [stored] = await _stored(app)
        assert stored.tls and "TLS" in stored.tls


async def test_require_tls_refuses_mail_commands_before_starttls(tmp_path: Path) -> None:
    async with running(tls_config(tmp_path, require_tls=True)) as app:
        client = await RawSmtp.connect(app.port)
        try:
            assert (await client.reply()).startswith("220")
            assert "250-STARTTLS" in await client.cmd(b"EHLO client.test\r\n")
            for line in (MAIL, RCPT, b"DATA\r\n", b"HELO client.test\r\n", b"RSET\r\n",
                         b"VRFY alice@basic.example\r\n", b"AUTH PLAIN\r\n"):
                assert await client.cmd(line) == \
                    "530 5.7.0 Must issue a STARTTLS command first", line
            assert (await client.cmd(b"NOOP\r\n")).startswith("250")
            await client.starttls()
            assert (await client.cmd(b"EHLO client.test\r\n")).startswith("250")
            for line, code in ((MAIL, "250"), (RCPT, "250"), (b"DATA\r\n", "354"),
                               (BODY, "250")):
                assert (await client.cmd(line)).startswith(code), client.replies
        finally:
            await client.close()
        assert len(await _stored(app)) == 1


async def test_what_is_pipelined_before_the_handshake_is_dropped(tmp_path: Path) -> None:
    """RFC 3207 4.2 (the STARTTLS command injection of CVE-2011-0411): plaintext after
    STARTTLS is not read as commands of the TLS session, which starts afresh."""
    async with running(tls_config(tmp_path)) as app:
        client = await RawSmtp.connect(app.port)
        try:
            assert (await client.reply()).startswith("220")
            await client.cmd(b"EHLO client.test\r\n")
            await client.send(b"STARTTLS\r\nEHLO injected.test\r\n" + MAIL)
            assert (await client.reply()).startswith("220")
            await asyncio.wait_for(client.writer.start_tls(insecure_context()), 10)
            # Had the injected EHLO and MAIL run, this would be "503 nested MAIL".
            assert await client.cmd(MAIL) == "503 5.5.1 Send HELO/EHLO first"
            assert (await client.cmd(b"EHLO client.test\r\n")).startswith("250")
            assert (await client.cmd(MAIL)).startswith("250")
        finally:
            await client.close()


async def test_starttls_replies_where_it_cannot_start(tmp_path: Path) -> None:
    async with running(tls_config(tmp_path)) as app:
        client = await RawSmtp.connect(app.port)
        try:
            await client.reply()
            await client.cmd(b"EHLO client.test\r\n")
            assert (await client.cmd(b"STARTTLS now\r\n")).startswith("501")
            await client.starttls()
            await client.cmd(b"EHLO client.test\r\n")
            assert await client.cmd(b"STARTTLS\r\n") == "503 5.5.1 TLS already active"
        finally:
            await client.close()
    async with running(make_config(tmp_path / "plain")) as app:
        client = await RawSmtp.connect(app.port)
        try:
            await client.reply()
            assert "STARTTLS" not in await client.cmd(b"EHLO client.test\r\n")
            assert await client.cmd(b"STARTTLS\r\n") == "454 4.7.0 TLS not available"
            assert (await client.cmd(b"NOOP\r\n")).startswith("250")
        finally:
            await client.close()


# --- handshakes that fail ---------------------------------------------------------------

def _after_220(port: int, reset: bool = False) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.recv(1000)
    sock.sendall(b"EHLO probe.test\r\n")
    sock.recv(1000)
    sock.sendall(b"STARTTLS\r\n")
    assert sock.recv(1000).startswith(b"220")
    return sock


def _plaintext_instead(port: int) -> None:
    with _after_220(port) as sock:
        sock.sendall(b"MAIL FROM:<a@src.test>\r\nRCPT TO:<alice@basic.example>\r\n")
        sock.settimeout(10)
        while sock.recv(4096):
            pass


def _http_instead(port: int) -> None:
    with _after_220(port) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        sock.settimeout(10)
        while sock.recv(4096):
            pass


def _half_a_client_hello(port: int) -> None:
    with _after_220(port) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")


def _reset_mid_handshake(port: int) -> None:
    with _after_220(port, reset=True) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01")


def _refuses_the_certificate(port: int) -> None:
    """A client that verifies the self-signed certificate against the system's CAs."""
    with _after_220(port) as sock, pytest.raises(ssl.SSLCertVerificationError):
        ssl.create_default_context().wrap_socket(sock, server_hostname="mx.test")


def _plaintext_on_implicit_tls(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"EHLO probe.test\r\nMAIL FROM:<a@src.test>\r\n")
        sock.settimeout(10)
        while sock.recv(4096):
            pass


BROKEN: dict[str, Callable[[int], None]] = {
    "plaintext after 220": _plaintext_instead, "HTTP after 220": _http_instead,
    "drops mid-handshake": _half_a_client_hello, "resets mid-handshake": _reset_mid_handshake,
    "refuses the certificate": _refuses_the_certificate}


async def _broken_handshakes(tmp_path: Path, kind: str) -> None:
    caught = _errors_caught()
    config = tls_config(tmp_path, listeners=[{"name": "smtps", "port": 0,
                                              "implicit_tls": True}])
    async with running(config) as app:
        for _ in range(3):
            await asyncio.to_thread(BROKEN[kind], app.port)
        await asyncio.to_thread(_plaintext_on_implicit_tls, app.ports["smtps"])
        await wait_for(lambda: app.gate.open_connections == 0, timeout=10)
        assert (await _send_over_starttls(app.port)).startswith("250 2.0.0")
        assert len(await _stored(app)) == 1  # only the good client's
        await wait_for(lambda: app.gate.open_connections == 0, timeout=10)
        assert not app.gate.transports  # no connection, plain or TLS, is still held
    assert caught == []


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("kind", list(BROKEN))
def test_a_broken_handshake_ends_cleanly_and_stores_nothing(
        tmp_path: Path, loop: str, kind: str, capfd: pytest.CaptureFixture[str]) -> None:
    loops.run(_broken_handshakes(tmp_path, kind), loop)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "smtp_session_error" not in err, err


@pytest.mark.parametrize("problem", ["expired", "another name"])
async def test_a_verifying_client_refuses_a_bad_certificate_and_the_server_carries_on(
        tmp_path: Path, problem: str) -> None:
    expired = problem == "expired"
    cert, key = make_cert(tmp_path / "pki", hostname="mx.test" if expired else "other.test",
                          expired=expired)
    caught = _errors_caught()
    config = make_config(tmp_path, smtp={"tls_cert": str(cert), "tls_key": str(key)})
    async with running(config) as app:
        assert app.tls is not None
        client = await RawSmtp.connect(app.port)
        try:
            await client.reply()
            await client.cmd(b"EHLO client.test\r\n")
            with pytest.raises(ssl.SSLCertVerificationError):
                await client.starttls(trusting(cert), server_hostname="mx.test")
        finally:
            await client.close()
        # A client that does not verify (as Postfix's "encrypt") is served.
        assert (await _send_over_starttls(app.port)).startswith("250 2.0.0")
        assert len(await _stored(app)) == 1
        await wait_for(lambda: app.gate.open_connections == 0, timeout=10)
    assert caught == []


# --- implicit TLS ---------------------------------------------------------------------------

async def _implicit(tmp_path: Path) -> None:
    config = tls_config(tmp_path, listeners=[{"name": "smtps", "port": 0,
                                              "implicit_tls": True}])
    async with running(config) as app:
        port = app.ports["smtps"]
        assert port != app.port

        def send() -> tuple[int, bytes]:
            with smtplib.SMTP_SSL("127.0.0.1", port, context=insecure_context()) as client:
                code, ehlo = client.ehlo()
                client.sendmail("a@src.test", ["alice@basic.example"], message("smtps"))
                return code, ehlo

        code, ehlo = await asyncio.to_thread(send)
        assert code == 250 and b"STARTTLS" not in ehlo  # TLS already
        [stored] = await _stored(app)
        assert stored.tls and stored.tls.startswith("TLSv1.")


@pytest.mark.parametrize("loop", LOOPS)
def test_implicit_tls_listener(tmp_path: Path, loop: str) -> None:
    loops.run(_implicit(tmp_path), loop)


# --- the self-signed certificate ------------------------------------------------------------

async def test_the_self_signed_certificate_is_made_once_and_reused(tmp_path: Path) -> None:
    config = tls_config(tmp_path)
    tls_dir = tmp_path / "tls"  # beside the SQLite queue file
    async with running(config):
        pass
    cert, key = tls_dir / "cert.pem", tls_dir / "key.pem"
    first = cert.read_bytes()
    assert key.stat().st_mode & 0o777 == 0o600
    assert tls_dir.stat().st_mode & 0o777 == 0o700
    async with running(config) as app:
        assert (await _send_over_starttls(app.port, trusting(cert))).startswith("250")
    assert cert.read_bytes() == first
    # Another hostname: a certificate that names it.
    renamed = config.model_copy(update={"smtp": config.smtp.model_copy(
        update={"hostname": "mx2.test"})})
    async with running(renamed) as app:
        assert (await _send_over_starttls(app.port, trusting(cert))).startswith("250")
    assert cert.read_bytes() != first


@pytest.mark.parametrize("damage", ["expired", "garbage", "key of another"])
async def test_a_self_signed_certificate_that_cannot_serve_is_made_anew(
        tmp_path: Path, damage: str) -> None:
    tls_dir = tmp_path / "tls"
    if damage == "expired":
        make_cert(tls_dir, expired=True, name="cert")
        (tls_dir / "cert.crt").rename(tls_dir / "cert.pem")
        (tls_dir / "cert.key").rename(tls_dir / "key.pem")
    else:
        make_cert(tls_dir, name="a")
        make_cert(tls_dir, name="b")
        (tls_dir / "a.crt").rename(tls_dir / "cert.pem")
        (tls_dir / "b.key").rename(tls_dir / "key.pem")
        if damage == "garbage":
            (tls_dir / "cert.pem").write_text("not a certificate\n")
    before = (tls_dir / "cert.pem").read_bytes()
    async with running(tls_config(tmp_path)) as app:
        cert = tls_dir / "cert.pem"
        assert cert.read_bytes() != before
        assert (await _send_over_starttls(app.port, trusting(cert))).startswith("250")


async def test_replies_over_tls_leak_nothing(tmp_path: Path) -> None:
    async with running(tls_config(tmp_path, require_tls=True)) as app:
        client = await RawSmtp.connect(app.port)
        try:
            await client.reply()
            await client.cmd(b"EHLO client.test\r\n")
            await client.cmd(MAIL)
            await client.starttls()
            for line in (b"EHLO client.test\r\n", b"STARTTLS\r\n", b"AUTH PLAIN\r\n", MAIL,
                         b"RCPT TO:<x@foreign.example>\r\n", b"BDAT 10\r\n"):
                await client.cmd(line)
        finally:
            await client.close()
        for reply in client.replies:
            assert not LEAK.search(reply), reply


async def test_a_stop_says_421_to_a_tls_session_over_tls(tmp_path: Path) -> None:
    config = tls_config(tmp_path, shutdown_grace=0.2)
    client: RawSmtp | None = None
    async with running(config) as app:
        client = await RawSmtp.connect(app.port)
        await client.reply()
        await client.cmd(b"EHLO client.test\r\n")
        await client.starttls()
        assert (await client.cmd(b"EHLO client.test\r\n")).startswith("250")
        assert len(app.gate.transports) == 1
    assert client is not None
    try:
        assert (await client.reply()).startswith("421 4.3.2 Service shutting down")
    finally:
        await client.close()
