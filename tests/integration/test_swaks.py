"""swaks, the SMTP test tool an operator reaches for, against the front end: STARTTLS
(verifying the self-signed certificate), implicit TLS, AUTH PLAIN and LOGIN, and the
refusals it meets without TLS or with a wrong password."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mailqueue.queue.values import QueueFilter
from tests.helpers import running
from tests.tlshelp import PASSWORD, require_program, tls_config

LISTENERS = [{"name": "submission", "port": 0, "require_tls": True, "auth_required": True},
             {"name": "smtps", "port": 0, "implicit_tls": True, "auth_required": True}]


@pytest.fixture
def swaks() -> str:
    return require_program("swaks", "swaks libnet-ssleay-perl")


async def _swaks(swaks: str, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    command = [swaks, "--server", f"127.0.0.1:{port}", "--from", "a@src.test",
               "--to", "alice@basic.example", "--helo", "swaks.test", "--timeout", "20",
               *args]
    return await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True,
                                   timeout=60)


async def _senders(app: Any) -> list[tuple[str | None, bool]]:
    found = await app.queue.list_messages(QueueFilter(include_done=True))
    return sorted(((m.auth_user, m.tls is not None) for m in found), key=str)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_swaks_starttls_and_auth(tmp_path: Path, swaks: str, mechanism: str) -> None:
    config = tls_config(tmp_path, users={"alice": PASSWORD}, listeners=LISTENERS)
    async with running(config) as app:
        cert = tmp_path / "tls" / "cert.pem"
        result = await _swaks(swaks, app.ports["submission"], "--tls", "--tls-verify",
                              "--tls-ca-path", str(cert), "--auth", mechanism,
                              "--auth-user", "alice", "--auth-password", PASSWORD)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "=== TLS started with cipher TLSv1." in result.stdout
        assert "<~  235 2.7.0 Authentication successful" in result.stdout
        assert "<~  250 2.0.0 Ok: queued as" in result.stdout
        assert await _senders(app) == [("alice", True)]


async def test_swaks_implicit_tls(tmp_path: Path, swaks: str) -> None:
    config = tls_config(tmp_path, users={"alice": PASSWORD}, listeners=LISTENERS)
    async with running(config) as app:
        result = await _swaks(swaks, app.ports["smtps"], "--tls-on-connect", "--auth",
                              "PLAIN", "--auth-user", "alice", "--auth-password", PASSWORD)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "250-AUTH LOGIN PLAIN" in result.stdout and "STARTTLS" not in result.stdout
        assert await _senders(app) == [("alice", True)]


async def test_swaks_refused_without_tls_or_with_a_wrong_password(tmp_path: Path,
                                                                 swaks: str) -> None:
    config = tls_config(tmp_path, users={"alice": PASSWORD}, listeners=LISTENERS)
    async with running(config) as app:
        plain = await _swaks(swaks, app.ports["submission"])
        assert plain.returncode != 0
        assert "<** 530 5.7.0 Must issue a STARTTLS command first" in plain.stdout
        # Where TLS is not required, AUTH is still not offered in the clear.
        no_tls = await _swaks(swaks, app.port, "--auth", "PLAIN", "--auth-user", "alice",
                              "--auth-password", PASSWORD)
        assert no_tls.returncode != 0
        assert "Host did not advertise authentication" in no_tls.stdout + no_tls.stderr
        wrong = await _swaks(swaks, app.ports["submission"], "--tls", "--auth", "LOGIN",
                             "--auth-user", "alice", "--auth-password", "wrong")
        assert wrong.returncode != 0
        assert "<~* 535 5.7.8 Authentication credentials invalid" in wrong.stdout
        assert await _senders(app) == []
