"""Remote stores from the command line: a mistake in ``hosts`` is one line, a socket that
is not there defers the mail with a reason that says so, and ``verify`` tells apart a
store it cannot read."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

import pytest

from mailqueue.config import load_config
from mailqueue.queue.values import RecipientState
from mailqueue.testing.harness import AsyncMailqueue
from tests.backends import Backend
from tests.cli_run import Mq, cli_runner, one_line_error, write_config
from tests.helpers import running, wait_for


@pytest.fixture
def mq(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Mq:
    return cli_runner(capsys, monkeypatch)


def remote(hosts: str, extra: str = "") -> str:
    return f"""
[[stores]]
name = "basic"
kind = "lmtp"
hosts = {hosts}
domains = ["basic.example"]
{extra}
"""


@pytest.mark.parametrize(("hosts", "fragment"), [
    ('["127.0.0.1:0"]', "stores[0]: hosts[0]: '127.0.0.1:0': the port must be a number"),
    ('["lmtp.example:24:25"]', "write an IPv6 address in brackets"),
    ('["run/dovecot/lmtp"]', "is neither a host name nor an IP address"),
    ('["unix:run/dovecot/lmtp"]', "a unix socket path must be absolute"),
])
def test_a_bad_host_is_one_line_for_every_command(tmp_path: Path, mq: Mq, hosts: str,
                                                  fragment: str) -> None:
    config = write_config(tmp_path, stores=remote(hosts))
    for argv in (["serve"], ["window", "list"], ["verify"]):
        one_line_error(mq(*argv, "-c", config), str(config), fragment)


async def test_a_socket_that_is_not_there_defers_with_the_reason(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "lmtp.sock"
    config = load_config(write_config(tmp_path, f'[queue]\nurl = "sqlite+aiosqlite:///'
                                                f'{tmp_path / "q.db"}"\n[smtp]\nport = 0\n',
                                      remote(f'["{missing}"]')), environ={})
    async with AsyncMailqueue(config) as mailqueue:
        await asyncio.to_thread(_send, mailqueue.port, "ann@basic.example")

        async def deferred() -> bool:
            entries = await mailqueue.app.queue.ledger()
            return bool(entries) and entries[0].recipients[0].last_error is not None
        await wait_for(deferred)
        [entry] = await mailqueue.app.queue.ledger()
    [rcpt] = entry.recipients
    assert rcpt.state is RecipientState.QUEUED
    assert rcpt.last_error == f"connect to {missing}: No such file or directory"


async def test_verify_counts_a_store_it_cannot_read_and_checks_the_rest(
        tmp_path: Path, mq: Mq) -> None:
    with Backend("lmtp") as backend:  # writes no Maildirs: nothing to verify_path to
        path = write_config(tmp_path, f'[queue]\nurl = "sqlite+aiosqlite:///'
                                      f'{tmp_path / "q.db"}"\n[smtp]\nport = 0\n'
                                      '[delivery]\npoll_interval = 0.1\n',
                            remote(f'["{backend.host}"]') + """
[[stores]]
name = "files"
path = "mail"
domains = ["files.example"]
""")
        async with running(load_config(path, environ={})) as app:
            assert app.port is not None
            await asyncio.to_thread(_send, app.port, "ann@basic.example")
            await asyncio.to_thread(_send, app.port, "bob@files.example")

            async def drained() -> bool:
                return (await app.queue.stats()).recipients["delivered"] == 2
            await wait_for(drained)
    result = await asyncio.to_thread(mq, "verify", "-c", path)
    assert result.code == 0, result.out + result.err
    assert "basic: delivered 1 + bounced 0 + deleted 0 + still queued 0  (mailboxes not " \
           "checked: no verify_path)" in result.out
    assert "mailboxes: 1 delivered copies expected, 1 found intact" in result.out
    assert "OK: nothing lost, nothing delivered twice" in result.out


def _send(port: int, rcpt: str) -> None:
    with smtplib.SMTP("127.0.0.1", port) as client:
        client.sendmail("a@src.test", [rcpt], b"Subject: hi\r\n\r\nhello\r\n")
