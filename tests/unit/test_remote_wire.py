"""What a remote store puts on the wire and what it makes of the answer: the message as
DATA carries it, the trace it adds, the remote reply in a bounce notice."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from pathlib import Path

import flufl.bounce
import pytest

from mailqueue.config import StoreConfig
from mailqueue.delivery.dsn import Notifier, status_for
from mailqueue.errors import RemoteReply
from mailqueue.mailbox._session import wire_data
from mailqueue.mailbox.remote import trace_header
from mailqueue.mailbox.router import Router
from mailqueue.queue.values import BouncedRecipient, Claim
from mailqueue.verify.scan import restore_message

T0 = 1_700_000_000.0


@pytest.mark.parametrize(("message", "wire"), [
    (b"A: b\r\n\r\nbody\r\n", b"A: b\r\n\r\nbody\r\n.\r\n"),
    (b".lead\r\nmid\r\n.\r\n..x\r\n", b"..lead\r\nmid\r\n..\r\n...x\r\n.\r\n"),
    (b"no final line end", b"no final line end\r\n.\r\n"),
    (b"bare\nLF and\rCR\r\n", b"bare\r\nLF and\r\nCR\r\n.\r\n"),
    (b"", b".\r\n"),
])
def test_data_is_stuffed_and_ends_with_the_dot(message: bytes, wire: bytes) -> None:
    data, size = wire_data(message)
    assert data == wire
    unstuffed = wire[:-3].replace(b"\r\n..", b"\r\n.")
    assert size == len(unstuffed[1:] if unstuffed.startswith(b"..") else unstuffed)


def claim(address: str = "ann@basic.example") -> Claim:
    return Claim(recipient_id=1, queue_id="K05Q1", address=address, store="basic",
                 attempts=1, mail_from="carol@exchange.example", received_at=T0,
                 helo="client.test", peer="192.0.2.1", body=b"Subject: hi\r\n\r\nhello\r\n")


def test_a_copy_a_server_wrote_restores_to_what_was_accepted() -> None:
    """As Dovecot stores it: its own trace first, no Delivered-To for several recipients,
    LF line ends; the ledger still finds the queue id and the original message."""
    sent = trace_header(claim(), "mx.test", single=False) + claim().body
    stored = (b"Return-Path: <carol@exchange.example>\r\n"
              b"Received: from mx.test ([127.0.0.1])\r\n\tby vm with LMTP\r\n\tid abc\r\n"
              + sent).replace(b"\r\n", b"\n")
    restored = restore_message(stored)
    assert restored is not None
    assert restored.queue_id == "K05Q1" and restored.recipient is None
    assert restored.message == claim().body
    single = trace_header(claim(), "mx.test", single=True)
    assert b"for <ann@basic.example>;" in single and b"for <" not in sent


def test_the_status_comes_from_the_remote_reply() -> None:
    assert status_for("lmtp x said: ...", "550 5.1.1 <a@b> unknown") == "5.1.1"
    assert status_for("lmtp x said: ...", "554 no enhanced code") == "5.0.0"
    assert status_for("expired: in the queue for 5d", "451 4.3.0 busy") == "5.4.7"
    assert status_for("maildir: invalid argument") == "5.0.0"
    assert status_for("smtp mx:25 takes messages up to 10 bytes; this one has 99 (5.3.4)") \
        == "5.3.4"
    assert status_for("lmtp mx:24 does not offer SMTPUTF8, which an address of this "
                      "message needs (5.6.7)") == "5.6.7"


def test_a_reply_describes_itself() -> None:
    reply = RemoteReply(mta="lmtp.example", endpoint="lmtp.example:24", code=550,
                        text="5.1.1 <a@b> User unknown", command="RCPT TO")
    assert reply.line == "550 5.1.1 <a@b> User unknown" and reply.enhanced == "5.1.1"
    assert reply.describe("lmtp") == ("lmtp lmtp.example:24 said: 550 5.1.1 <a@b> User "
                                      "unknown (in reply to RCPT TO)")


def test_the_notice_names_the_remote_mta_and_quotes_its_reply() -> None:
    store = StoreConfig(name="hx", path=Path("/tmp/x"), domains=["exchange.example"])
    notifier = Notifier(Router([store]), "mx.test", 5 * 86400)
    [notice] = notifier([BouncedRecipient(
        recipient_id=1, queue_id="Q1", address="ann@basic.example", store="basic",
        attempts=1, mail_from="carol@exchange.example", received_at=T0,
        reason="lmtp 10.0.0.7:24 said: 550 5.1.1 <ann@basic.example> User unknown",
        body=b"Subject: hi\r\n\r\nhello\r\n", remote_mta="10.0.0.7",
        diagnostic="550 5.1.1 <ann@basic.example> User unknown")], T0 + 60)
    message = email.message_from_bytes(notice.body, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    _, status, _ = message.get_payload()  # type: ignore[misc]
    _, block = status.get_payload()
    assert block["Status"] == "5.1.1"
    assert block["Remote-MTA"] == "dns; 10.0.0.7"
    assert block["Diagnostic-Code"] == "smtp; 550 5.1.1 <ann@basic.example> User unknown"
    # A real bounce parser finds the failed address.
    assert flufl.bounce.scan_message(message) == {b"ann@basic.example"}
