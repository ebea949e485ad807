"""A real Postfix edge relaying into mailqueue with TLS required.

Each test runs a private Postfix (:mod:`mailqueue.testing.postfix`) whose ``relayhost`` is the front
end under test: with ``smtp_tls_security_level = encrypt`` the mail arrives over TLS and is
delivered; with ``secure`` Postfix verifies the self-signed certificate against the name it
was made for; a front end offering no TLS gets nothing (Postfix keeps the mail) until one
that does takes its place; and Postfix authenticates to a submission listener that
requires TLS and AUTH, holding its mail while its password is wrong.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from mailqueue.queue.values import QueueFilter
from mailqueue.testing.postfix import Postfix, require_postfix
from tests.helpers import all_files, make_config, running, wait_for
from tests.tlshelp import PASSWORD, tls_config

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(autouse=True)
def _postfix_available() -> None:
    require_postfix()


def _message(n: int) -> bytes:
    return (f"From: a@src.test\r\nTo: alice@basic.example\r\nSubject: via postfix {n}\r\n"
            f"Message-ID: <pf-{n}@src.test>\r\n\r\nrelayed {n}\r\n").encode()


def _inline(key: str, value: str) -> str:
    """A one-entry Postfix ``inline:`` table (braces keep the spaces of ``value``)."""
    return f"inline:{{ {{ {key} = {value} }} }}"


async def _queued(app: Any) -> list[Any]:
    return list(await app.queue.list_messages(QueueFilter(include_done=True)))


async def _relay(postfix: Postfix, count: int) -> None:
    for n in range(count):
        await asyncio.to_thread(postfix.send, "a@src.test", ["alice@basic.example"],
                                _message(n))


async def test_postfix_relays_in_with_tls_required(tmp_path: Path) -> None:
    async with running(tls_config(tmp_path, require_tls=True)) as app:
        postfix = Postfix(main={"relayhost": f"[127.0.0.1]:{app.port}",
                                "smtp_tls_security_level": "encrypt"})
        await asyncio.to_thread(postfix.start)
        try:
            await _relay(postfix, 3)
            sent = await asyncio.to_thread(postfix.wait_log, r"status=sent \(250 2\.0\.0 Ok: "
                                           r"queued as", 30, 3)
            assert all(f"relay=127.0.0.1[127.0.0.1]:{app.port}" in line for line in sent)
            log = postfix.log()
            assert f"TLS connection established to 127.0.0.1[127.0.0.1]:{app.port}" in log
            assert "status=deferred" not in log
        finally:
            await asyncio.to_thread(postfix.stop)
        queued = await _queued(app)
        assert len(queued) == 3
        assert all(m.tls and m.tls.startswith("TLSv1.") and m.helo == "pf.test"
                   for m in queued)
        await wait_for(lambda: len(all_files(tmp_path / "mail" / "basic")) == 3)


async def test_postfix_verifies_the_self_signed_certificate(tmp_path: Path) -> None:
    async with running(tls_config(tmp_path, require_tls=True)) as app:
        cert = tmp_path / "tls" / "cert.pem"
        postfix = Postfix(main={
            "relayhost": f"[127.0.0.1]:{app.port}", "smtp_tls_CAfile": str(cert),
            "smtp_tls_policy_maps": _inline(f"[127.0.0.1]:{app.port}",
                                            "secure match=mx.test")})
        await asyncio.to_thread(postfix.start)
        try:
            await _relay(postfix, 1)
            await asyncio.to_thread(postfix.wait_log, r"status=sent", 30)
            assert "Verified TLS connection established to 127.0.0.1" in postfix.log()
        finally:
            await asyncio.to_thread(postfix.stop)
        assert len(await _queued(app)) == 1


async def test_postfix_keeps_its_mail_until_the_front_end_offers_tls(tmp_path: Path) -> None:
    plain = make_config(tmp_path / "plain")
    async with running(plain) as app:
        port = app.port
        assert port is not None
        postfix = Postfix(main={"relayhost": f"[127.0.0.1]:{port}",
                                "smtp_tls_security_level": "encrypt"})
        await asyncio.to_thread(postfix.start)
        try:
            await _relay(postfix, 2)
            await asyncio.to_thread(postfix.wait_log, r"status=deferred \(TLS is required, "
                                    r"but was not offered by host", 30, 2)
            assert await _queued(app) == []
        except BaseException:
            await asyncio.to_thread(postfix.stop)
            raise
    try:
        # The same port, now with TLS: Postfix's next attempt gets through.
        secured = tls_config(tmp_path, require_tls=True)
        secured = secured.model_copy(update={"smtp": secured.smtp.model_copy(
            update={"port": port})})
        async with running(secured) as app:
            assert len(postfix.queue()) == 2
            await asyncio.to_thread(postfix.flush)
            await asyncio.to_thread(postfix.wait_log, r"status=sent", 30, 2)
            await asyncio.to_thread(postfix.wait_empty)
            assert len(await _queued(app)) == 2
    finally:
        await asyncio.to_thread(postfix.stop)


async def test_postfix_authenticates_to_a_submission_listener(tmp_path: Path) -> None:
    config = tls_config(tmp_path, users={"relay": PASSWORD}, auth_max_failures=100,
                        listeners=[{"name": "submission", "port": 0, "require_tls": True,
                                    "auth_required": True}])
    async with running(config) as app:
        port = app.ports["submission"]
        postfix = Postfix(main={
            "relayhost": f"[127.0.0.1]:{port}", "smtp_tls_security_level": "encrypt",
            "smtp_sasl_auth_enable": "yes", "smtp_sasl_security_options": "noanonymous",
            "smtp_sasl_tls_security_options": "noanonymous",
            "smtp_sasl_password_maps": _inline(f"[127.0.0.1]:{port}", "relay:wrong")})
        await asyncio.to_thread(postfix.start)
        try:
            await _relay(postfix, 2)
            await asyncio.to_thread(postfix.wait_log, r"SASL authentication failed; server "
                                    r"127\.0\.0\.1.* said: 535 5\.7\.8", 30)
            assert await _queued(app) == [] and len(postfix.queue()) == 2
            postfix.set(smtp_sasl_password_maps=_inline(f"[127.0.0.1]:{port}",
                                                        f"relay:{PASSWORD}"))
            await asyncio.to_thread(postfix.reload)
            await asyncio.to_thread(postfix.flush)
            await asyncio.to_thread(postfix.wait_log, r"status=sent", 30, 2)
        finally:
            await asyncio.to_thread(postfix.stop)
        queued = await _queued(app)
        assert [m.auth_user for m in queued] == ["relay", "relay"]
        assert all(m.tls for m in queued)
