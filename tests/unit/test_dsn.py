"""Delivery status notifications: well-formed RFC 3464 reports, only for local senders."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from pathlib import Path

from mailqueue.config import StoreConfig
from mailqueue.dsn import Notifier, RecipientStatus, build_report, original_headers
from mailqueue.mailbox.router import Router
from mailqueue.queue.admin import BouncedRecipient

T0 = 1_700_000_000.0
BODY = b"From: carol@exchange.example\r\nSubject: hello\r\n\r\nbody text\r\n"


def notifier() -> Notifier:
    store = StoreConfig(name="hx", path=Path("/tmp/x"), domains=["exchange.example"],
                        mailboxes=["carol"])
    return Notifier(Router([store]), "mx.test", 5 * 86400)


def bounced(sender: str, address: str = "alice@basic.example") -> BouncedRecipient:
    return BouncedRecipient(recipient_id=1, queue_id="Q1", address=address, store="basic",
                            attempts=3, mail_from=sender, received_at=T0,
                            reason="expired: in the queue for 5d\r\nX-Injected: 1", body=BODY)


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def test_original_headers_stop_at_the_blank_line() -> None:
    assert original_headers(BODY) == b"From: carol@exchange.example\r\nSubject: hello"
    assert original_headers(b"A: b\n\nc") == b"A: b"


def test_report_structure() -> None:
    data = build_report(hostname="mx.test", queue_id="Q1", sender="carol@exchange.example",
                        received_at=T0, now=T0 + 10, message_id="<n@mx.test>",
                        statuses=[RecipientStatus("a@b.example", "failed", "5.0.0", "no")],
                        original=original_headers(BODY))
    msg = parse(data)
    assert msg.get_content_type() == "multipart/report"
    _text, status, headers = msg.get_payload()  # type: ignore[misc]
    per_message, per_recipient = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mx.test"
    assert per_recipient["Action"] == "failed" and per_recipient["Status"] == "5.0.0"
    assert "Subject: hello" in headers.get_payload()
    assert b"\r\n" in data and b"\n\n" not in data.replace(b"\r\n", b"")


def test_notice_for_local_sender_only_and_never_for_a_bounce() -> None:
    notify = notifier()
    [notice] = notify([bounced("Carol@exchange.example")], T0)
    assert notice.mail_from == "" and notice.recipients == (("carol@exchange.example", "hx"),)
    msg = parse(notice.body)
    status = msg.get_payload()[1].get_payload()[1]  # type: ignore[index]
    assert status["Status"] == "5.4.7"
    assert "X-Injected" not in msg  # the reason cannot inject header lines
    assert notify([bounced("")], T0) == []
    assert notify([bounced("x@far.test")], T0) == []


def test_one_notice_per_message() -> None:
    notices = notifier()([bounced("carol@exchange.example", "a@basic.example"),
                          bounced("carol@exchange.example", "b@basic.example")], T0)
    assert len(notices) == 1
    assert notices[0].body.count(b"Final-Recipient:") == 2
