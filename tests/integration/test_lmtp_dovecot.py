"""Delivery into a real Dovecot over LMTP: the mailbox tier is Dovecot's, not mailqueue's.

Each test starts its own Dovecot (:mod:`mailqueue.testing.dovecot`) and reads the result
back from the Maildirs Dovecot wrote and through ``doveadm``. The queue is driven by a
manual clock, so windows and retries move only when the test says.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import smtplib
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from mailqueue.config import Config
from mailqueue.control.nodes import node_index
from mailqueue.queue.values import RecipientState
from mailqueue.testing.dovecot import Dovecot
from mailqueue.testing.harness import AsyncMailqueue
from tests.helpers import all_files, maildir_files, make_config, message, wait_for

pytestmark = pytest.mark.usefixtures("dovecot_installed")

BASIC = "basic.example"
CAROL = "carol@exchange.example"  # a local sender: bounces come back to her Maildir


def lmtp_config(tmp_path: Path, hosts: list[str], verify_path: Path | None,
                **basic: Any) -> Config:
    """Store ``basic`` on LMTP ``hosts``; ``hosted-exchange`` a Maildir store."""
    store: dict[str, Any] = {"name": "basic", "kind": "lmtp", "hosts": hosts,
                             "domains": [BASIC], **basic}
    if verify_path is not None:
        store["verify_path"] = str(verify_path)
    return make_config(tmp_path, stores=[
        store,
        {"name": "hosted-exchange", "path": str(tmp_path / "mail" / "hosted-exchange"),
         "domains": ["exchange.example"], "mailboxes": ["carol", "dave"]}],
        delivery={"poll_interval": 0.1, "batch_size": 50})


async def send(port: int, rcpts: list[str], subject: str, sender: str = CAROL,
               body: str = "hello") -> None:
    def post() -> None:
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail(sender, rcpts, message(subject, body).encode())
    await asyncio.to_thread(post)


def parsed(path: Path) -> EmailMessage:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


async def test_a_window_drains_into_dovecot_each_message_once(tmp_path: Path,
                                                               dovecot: Dovecot) -> None:
    config = lmtp_config(tmp_path, [dovecot.lmtp_host], dovecot.mail_root)
    people = [f"user{i}@{BASIC}" for i in range(6)]
    async with AsyncMailqueue(config) as mq:
        await mq.start_window("basic")
        for n in range(10):
            # Several recipients per message: one LMTP transaction carries them all.
            await send(mq.port, [*people[n % 3:n % 3 + 3], "dave@exchange.example"],
                       f"note {n}", body=f"line\r\n.leading dot {n}\r\n")
        # Dave's copies go now (his store is not in the window); Dovecot gets nothing yet.
        await wait_for(lambda: len(maildir_files(tmp_path / "mail" / "hosted-exchange",
                                                 "dave@exchange.example")) == 10)
        assert not any(dovecot.mail_root.iterdir())
        await mq.end_window()
        await mq.drained(timeout=20)
        ledger = await mq.ledger()
        ledger.assert_ok()
        messages = await mq.mailbox(people[0]).messages()
    for person in people:
        expected = sum(1 for n in range(10) if person in people[n % 3: n % 3 + 3])
        assert len(dovecot.files(person)) == expected
        assert dovecot.count(person) == expected
        assert len(set(dovecot.queue_ids(person))) == expected
    assert sorted(m["Subject"] for m in messages) == ["note 0", "note 3", "note 6", "note 9"]
    [first] = [m for m in messages if m["Subject"] == "note 0"]
    assert "by mx.test (mailqueue) with ESMTP id" in str(first.get_all("Received")[1])
    assert "with LMTP" in str(first.get_all("Received")[0])  # Dovecot's own trace
    assert ".leading dot 0" in first.get_content()


async def test_delivery_over_dovecots_unix_socket(tmp_path: Path, dovecot: Dovecot) -> None:
    config = lmtp_config(tmp_path, [str(dovecot.lmtp_socket)], dovecot.mail_root)
    async with AsyncMailqueue(config) as mq:
        await send(mq.port, [f"ann@{BASIC}", f"bob@{BASIC}"], "over the socket")
        await mq.drained(timeout=10)
        (await mq.ledger()).assert_ok()
    assert dovecot.count(f"ann@{BASIC}") == dovecot.count(f"bob@{BASIC}") == 1


async def test_an_unknown_mailbox_bounces_with_dovecots_reply(tmp_path: Path) -> None:
    with Dovecot(users=[f"ann@{BASIC}"]) as dovecot:
        config = lmtp_config(tmp_path, [dovecot.lmtp_host], dovecot.mail_root)
        async with AsyncMailqueue(config) as mq:
            await send(mq.port, [f"ann@{BASIC}", f"ghost@{BASIC}"], "to a ghost")
            await mq.drained(timeout=10)
            (await mq.ledger()).assert_ok(allow_bounced=True)
            entries = await mq.app.queue.ledger()
        assert dovecot.count(f"ann@{BASIC}") == 1
    states = {r.address: r for e in entries if e.rcpt_count == 2 for r in e.recipients}
    assert states[f"ann@{BASIC}"].state is RecipientState.DELIVERED
    ghost = states[f"ghost@{BASIC}"]
    assert ghost.state is RecipientState.BOUNCED
    assert "550 5.1.1" in (ghost.last_error or "") and "RCPT TO" in (ghost.last_error or "")
    [notice] = all_files(tmp_path / "mail" / "hosted-exchange")
    report = parsed(notice)
    [_, status, _] = report.get_payload()  # type: ignore[misc]
    [_, block] = [dict(b.items()) for b in status.get_payload()]  # per message, per recipient
    assert block["Final-Recipient"] == f"rfc822; ghost@{BASIC}"
    assert block["Status"] == "5.1.1"
    assert block["Remote-MTA"] == "dns; 127.0.0.1"
    assert block["Diagnostic-Code"].startswith("smtp; 550 5.1.1 <ghost@basic.example>")


async def test_a_node_set_down_defers_its_host_whatever_the_host_says(
        tmp_path: Path) -> None:
    with Dovecot() as first, Dovecot() as second:
        config = lmtp_config(tmp_path, [first.lmtp_host, second.lmtp_host], None)
        on = {i: next(f"user{n}@{BASIC}" for n in range(100) if node_index(f"user{n}@{BASIC}",
                                                                           2) == i)
              for i in (0, 1)}
        async with AsyncMailqueue(config) as mq:
            assert mq.nodes["basic"] == 2  # one node per host
            await mq.node_down("basic", 2)
            await send(mq.port, [on[0], on[1]], "two hosts")
            await asyncio.sleep(0.5)
            assert first.count(on[0]) == 1 and not second.files(on[1])
            await mq.node_up("basic", 2)
            await mq.drained(timeout=10)
        assert second.count(on[1]) == 1 and not first.files(on[1])


async def test_a_stopped_dovecot_defers_and_the_retry_delivers(tmp_path: Path,
                                                                dovecot: Dovecot) -> None:
    config = lmtp_config(tmp_path, [dovecot.lmtp_host], dovecot.mail_root)
    dovecot.stop_process()
    async with AsyncMailqueue(config) as mq:
        await send(mq.port, [f"ann@{BASIC}"], "while it is down")
        [entry] = [e for e in await _wait_deferred(mq)]
        [rcpt] = entry.recipients
        assert rcpt.state is RecipientState.QUEUED
        assert "Connection refused" in (rcpt.last_error or "")
        dovecot.start()
        mq.advance(61)
        await mq.drained(timeout=10)
        (await mq.ledger()).assert_ok()
    assert dovecot.count(f"ann@{BASIC}") == 1


async def _wait_deferred(mq: AsyncMailqueue) -> list[Any]:
    for _ in range(200):
        entries = await mq.app.queue.ledger()
        if entries and all(r.last_error for e in entries for r in e.recipients):
            return entries
        await asyncio.sleep(0.05)
    raise AssertionError("the delivery was not deferred")
