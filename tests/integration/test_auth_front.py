"""AUTH PLAIN and LOGIN at the front end, over real TLS on TCP.

AUTH is offered only over TLS (``538 5.7.11`` before); good credentials earn ``235`` and
the user is recorded with every message of the session; bad ones ``535 5.7.8``; malformed
exchanges a ``501``/``500`` and a session that goes on; ``auth_required`` refuses mail
until AUTH; one address's failures are capped (then ``421`` without a password being
checked), also for parallel connections; the passwords are checked on threads, not on the
event loop; and the users file is reread when it changes.
"""

from __future__ import annotations

import asyncio
import smtplib
import threading
import time
from base64 import b64encode
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from mailqueue.queue.values import QueueFilter
from mailqueue.smtp.auth import Authenticator
from mailqueue.smtp.users import editing
from tests.helpers import message, running, wait_for
from tests.smtpraw import LEAK, RawSmtp
from tests.tlshelp import PASSWORD, insecure_context, tls_config, write_users

USERS = {"alice": PASSWORD, "bob@basic.example": "another secret"}
MAIL = b"MAIL FROM:<a@src.test>\r\n"
RCPT = b"RCPT TO:<carol@exchange.example>\r\n"


def b64(data: bytes) -> bytes:
    return b64encode(data)


def plain(user: str, password: str, authzid: str = "") -> bytes:
    return b64(f"{authzid}\0{user}\0{password}".encode())


async def _tls_session(port: int, ehlo: bool = True) -> RawSmtp:
    client = await RawSmtp.connect(port)
    assert (await client.reply()).startswith("220")
    await client.cmd(b"EHLO client.test\r\n")
    await client.starttls()
    if ehlo:
        assert "250-AUTH LOGIN PLAIN" in await client.cmd(b"EHLO client.test\r\n")
    return client


async def _send(client: RawSmtp) -> str:
    for line, code in ((MAIL, "250"), (RCPT, "250"), (b"DATA\r\n", "354")):
        assert (await client.cmd(line)).startswith(code), client.replies
    return await client.cmd(b"Subject: auth\r\n\r\nhi\r\n.\r\n")


async def _users_of(app: Any) -> list[str | None]:
    found = await app.queue.list_messages(QueueFilter(include_done=True))
    return sorted((m.auth_user for m in found), key=str)


async def test_auth_is_offered_only_over_tls(tmp_path: Path) -> None:
    async with running(tls_config(tmp_path, users=USERS)) as app:
        client = await RawSmtp.connect(app.port)
        try:
            await client.reply()
            ehlo = await client.cmd(b"EHLO client.test\r\n")
            assert "AUTH" not in ehlo and "STARTTLS" in ehlo
            assert await client.cmd(b"AUTH PLAIN " + plain("alice", PASSWORD) + b"\r\n") == \
                "538 5.7.11 Encryption required for requested authentication mechanism"
            assert await client.cmd(b"AUTH LOGIN\r\n") == \
                "538 5.7.11 Encryption required for requested authentication mechanism"
            # Plain, anonymous mail still works where auth is not required.
            assert (await _send(client)).startswith("250 2.0.0")
        finally:
            await client.close()
        assert await _users_of(app) == [None]


async def test_no_users_file_no_auth(tmp_path: Path) -> None:
    async with running(tls_config(tmp_path)) as app:
        client = await _tls_session(app.port, ehlo=False)
        try:
            assert "AUTH" not in await client.cmd(b"EHLO client.test\r\n")
            assert await client.cmd(b"AUTH PLAIN " + plain("alice", PASSWORD) + b"\r\n") == \
                "503 5.5.1 Authentication not enabled"
        finally:
            await client.close()


EXCHANGES: dict[str, list[bytes]] = {
    "PLAIN, initial response": [b"AUTH PLAIN " + plain("alice", PASSWORD) + b"\r\n"],
    "PLAIN, after a challenge": [b"AUTH PLAIN\r\n", plain("alice", PASSWORD) + b"\r\n"],
    "PLAIN, authzid = user": [b"AUTH plain " + plain("alice", PASSWORD, "alice") + b"\r\n"],
    "LOGIN, challenges": [b"AUTH LOGIN\r\n", b64(b"alice") + b"\r\n",
                          b64(PASSWORD.encode()) + b"\r\n"],
    "LOGIN, initial user": [b"AUTH LOGIN " + b64(b"alice") + b"\r\n",
                            b64(PASSWORD.encode()) + b"\r\n"],
}


@pytest.mark.parametrize("exchange", list(EXCHANGES))
async def test_good_credentials_and_the_user_recorded(tmp_path: Path, exchange: str) -> None:
    async with running(tls_config(tmp_path, users=USERS)) as app:
        client = await _tls_session(app.port)
        try:
            *challenged, last = EXCHANGES[exchange]
            for line in challenged:
                assert (await client.cmd(line)).startswith("334 ")
            assert await client.cmd(last) == "235 2.7.0 Authentication successful"
            assert (await _send(client)).startswith("250 2.0.0")
            assert (await _send(client)).startswith("250 2.0.0")
        finally:
            await client.close()
        assert await _users_of(app) == ["alice", "alice"]


BAD: dict[str, tuple[list[bytes], str]] = {
    "wrong password": ([b"AUTH PLAIN " + plain("alice", "wrong") + b"\r\n"],
                       "535 5.7.8 Authentication credentials invalid"),
    "unknown user": ([b"AUTH LOGIN " + b64(b"mallory") + b"\r\n", b64(b"x") + b"\r\n"],
                     "535 5.7.8 Authentication credentials invalid"),
    "another's authzid": ([b"AUTH PLAIN " + plain("alice", PASSWORD, "bob") + b"\r\n"],
                          "535 5.7.8 Authorization identity must be the user"),
    "not base64": ([b"AUTH PLAIN !!!notbase64\r\n"], "501 5.5.2 Cannot decode base64"),
    "not base64 after a challenge": ([b"AUTH LOGIN\r\n", b"@@@\r\n"],
                                     "501 5.5.2 Cannot decode base64"),
    "no NULs": ([b"AUTH PLAIN " + b64(b"alice" + PASSWORD.encode()) + b"\r\n"],
                "501 5.5.2 Malformed PLAIN response"),
    "empty response": ([b"AUTH PLAIN =\r\n"], "501 5.5.2 Malformed PLAIN response"),
    "cancelled": ([b"AUTH LOGIN\r\n", b"*\r\n"], "501 5.7.0 Authentication cancelled"),
    "unknown mechanism": ([b"AUTH CRAM-MD5\r\n"], "504 5.5.4 Unrecognized authentication type"),
    "no mechanism": ([b"AUTH\r\n"], "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
    "too many words": ([b"AUTH PLAIN a b\r\n"],
                       "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
    "huge AUTH line": ([b"AUTH PLAIN " + b"QUFB" * 600 + b"\r\n"],
                       "500 5.5.2 Command line too long"),
    "huge response": ([b"AUTH PLAIN\r\n", b"QUFB" * 5000 + b"\r\n"],
                      "500 5.5.6 Authentication exchange line is too long"),
    "during a transaction": ([MAIL, b"AUTH PLAIN " + plain("alice", PASSWORD) + b"\r\n"],
                             "503 5.5.1 AUTH not permitted during a mail transaction"),
}


@pytest.mark.parametrize("case", list(BAD))
async def test_bad_auth_gets_its_reply_and_the_session_goes_on(tmp_path: Path,
                                                               case: str) -> None:
    async with running(tls_config(tmp_path, users=USERS)) as app:
        client = await _tls_session(app.port)
        try:
            *lines, last = BAD[case][0]
            for line in lines:
                assert (await client.cmd(line))[:3] in ("334", "250"), client.replies
            assert await client.cmd(last) == BAD[case][1]
            assert await client.cmd(b"NOOP\r\n") == "250 OK"
            assert await client.cmd(b"RSET\r\n") == "250 OK"
        finally:
            await client.close()
        assert await _users_of(app) == []
        for reply in client.replies:
            assert not LEAK.search(reply), reply


async def test_auth_twice_is_refused(tmp_path: Path) -> None:
    async with running(tls_config(tmp_path, users=USERS)) as app:
        client = await _tls_session(app.port)
        try:
            line = b"AUTH PLAIN " + plain("alice", PASSWORD) + b"\r\n"
            assert (await client.cmd(line)).startswith("235")
            assert await client.cmd(line) == "503 5.5.1 Already authenticated"
        finally:
            await client.close()


async def test_auth_required_refuses_mail_until_auth(tmp_path: Path) -> None:
    config = tls_config(tmp_path, users=USERS, listeners=[
        {"name": "submission", "port": 0, "require_tls": True, "auth_required": True}])
    async with running(config) as app:
        client = await _tls_session(app.ports["submission"])
        try:
            for line in (MAIL, RCPT, b"DATA\r\n"):
                assert await client.cmd(line) == "530 5.7.0 Authentication required"
            login = b"AUTH PLAIN " + plain("bob@basic.example", "another secret") + b"\r\n"
            assert (await client.cmd(login)).startswith("235")
            assert (await _send(client)).startswith("250 2.0.0")
        finally:
            await client.close()
        # The main listener still takes anonymous mail.
        anonymous = await _tls_session(app.port)
        try:
            assert (await _send(anonymous)).startswith("250 2.0.0")
        finally:
            await anonymous.close()
        assert await _users_of(app) == [None, "bob@basic.example"]


async def _fail(port: int, password: str = "wrong") -> str:
    client = await _tls_session(port)
    try:
        return await client.cmd(b"AUTH PLAIN " + plain("alice", password) + b"\r\n")
    finally:
        await client.close()


async def test_failures_are_capped_per_address(tmp_path: Path) -> None:
    config = tls_config(tmp_path, users=USERS, auth_max_failures=3, auth_lockout="2s")
    async with running(config) as app:
        client = await _tls_session(app.port)
        try:
            for _ in range(3):
                assert (await client.cmd(b"AUTH PLAIN " + plain("alice", "no") + b"\r\n")
                        ).startswith("535")
            assert await client.cmd(b"AUTH PLAIN " + plain("alice", PASSWORD) + b"\r\n") == \
                "421 4.7.0 Too many failed authentication attempts, try again later"
            assert await client.closed()
        finally:
            await client.close()
        # A new connection, with the right password even, is refused at once: no hash.
        started = time.monotonic()
        assert (await _fail(app.port, PASSWORD)).startswith("421 4.7.0")
        assert time.monotonic() - started < 2
        await asyncio.sleep(2.1)  # the failures age out
        assert (await _fail(app.port, PASSWORD)).startswith("235")


async def test_parallel_attempts_cannot_pass_the_cap(tmp_path: Path) -> None:
    config = tls_config(tmp_path, users=USERS, auth_max_failures=3, auth_lockout="1m")
    async with running(config) as app:
        replies = await asyncio.gather(*(_fail(app.port) for _ in range(8)))
        assert sorted(r[:3] for r in replies) == ["421"] * 5 + ["535"] * 3, replies


async def test_passwords_are_checked_off_the_event_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    check = Authenticator._check

    def spying(self: Authenticator, login: bytes, password: bytes) -> bool:
        threads.append(threading.get_ident())
        return check(self, login, password)

    monkeypatch.setattr(Authenticator, "_check", spying)
    async with running(tls_config(tmp_path, users=USERS)) as app:
        assert (await _fail(app.port, PASSWORD)).startswith("235")
        assert (await _fail(app.port)).startswith("535")
    assert len(threads) == 2 and threading.get_ident() not in threads


async def test_the_users_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    async with running(tls_config(tmp_path, users=USERS)) as app:
        users_file = tmp_path / "users"
        assert (await _fail(app.port, "new secret")).startswith("535")
        with editing(users_file) as users:
            del users["alice"]
        write_users(users_file, alice="new secret")
        assert (await _fail(app.port, "new secret")).startswith("235")
        assert (await _fail(app.port, PASSWORD)).startswith("535")


async def test_real_clients_smtplib_and_aiosmtplib_log_in(tmp_path: Path) -> None:
    async with running(tls_config(tmp_path, users=USERS)) as app:
        def with_smtplib() -> None:
            with smtplib.SMTP("127.0.0.1", app.port) as client:
                client.starttls(context=insecure_context())
                client.login("alice", PASSWORD)  # PLAIN, then LOGIN if that failed
                client.sendmail("a@src.test", ["carol@exchange.example"], message("one"))
            with smtplib.SMTP("127.0.0.1", app.port) as client:
                client.starttls(context=insecure_context())
                client.ehlo()
                client.user, client.password = "alice", PASSWORD
                code, _ = client.auth("LOGIN", client.auth_login)
                assert code == 235
                client.sendmail("a@src.test", ["carol@exchange.example"], message("two"))
            with smtplib.SMTP("127.0.0.1", app.port) as client:
                client.starttls(context=insecure_context())
                with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                    client.login("alice", "wrong")
                assert refused.value.smtp_code == 535

        await asyncio.to_thread(with_smtplib)
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=app.port, start_tls=True,
                                 tls_context=insecure_context(), username="bob@basic.example",
                                 password="another secret")
        await client.connect()
        await client.sendmail("a@src.test", ["carol@exchange.example"], message("three"))
        await client.quit()
        assert await _users_of(app) == ["alice", "alice", "bob@basic.example"]


async def test_a_client_that_drops_mid_auth_leaves_nothing_behind(tmp_path: Path) -> None:
    async with running(tls_config(tmp_path, users=USERS)) as app:
        client = await _tls_session(app.port)
        assert (await client.cmd(b"AUTH LOGIN\r\n")).startswith("334")
        await client.close()  # gone at the user name challenge
        client = await _tls_session(app.port)
        await client.send(b"AUTH PLAIN\r\n")
        await client.close()  # gone before the challenge is even read
        await wait_for(lambda: app.gate.open_connections == 0, timeout=10)
        assert not app.gate.transports
        assert (await _fail(app.port, PASSWORD)).startswith("235")  # and the server serves


async def test_hanging_up_while_the_password_is_checked_counts_as_a_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check = Authenticator._check

    def slow(self: Authenticator, login: bytes, password: bytes) -> bool:
        time.sleep(0.5)  # a long hash: the client is gone before it is done
        return check(self, login, password)

    monkeypatch.setattr(Authenticator, "_check", slow)
    config = tls_config(tmp_path, users=USERS, auth_max_failures=1)
    async with running(config) as app:
        client = await _tls_session(app.port)
        await client.send(b"AUTH PLAIN " + plain("alice", PASSWORD) + b"\r\n")
        await asyncio.sleep(0.2)
        await client.close()
        assert app.authenticator is not None
        await wait_for(lambda: app.authenticator is not None and
                       app.authenticator.locked_out("127.0.0.1"), timeout=5)
        assert (await _fail(app.port, PASSWORD)).startswith("421 4.7.0")
