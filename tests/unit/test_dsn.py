"""Delivery status notifications: well-formed RFC 3464 reports, only for local senders."""

from __future__ import annotations

import base64
import email
import email.policy
from email.message import EmailMessage
from pathlib import Path

import flufl.bounce

from mailqueue.config import StoreConfig
from mailqueue.delivery.dsn import Notifier, RecipientStatus, build_report, original_headers
from mailqueue.mailbox.router import Router
from mailqueue.queue.values import BouncedRecipient

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


def _report(original: bytes, diagnostic: str = "expired: in the queue for 5d") -> bytes:
    return build_report(hostname="mx.test", queue_id="Q1", sender="carol@exchange.example",
                        received_at=T0, now=T0 + 10, message_id="<n@mx.test>",
                        statuses=[RecipientStatus("a@b.example", "failed", "5.4.7",
                                                  diagnostic)],
                        original=original_headers(original))


def _raw_part(data: bytes, index: int) -> tuple[bytes, bytes]:
    """The head and body of part ``index`` of a notice, as raw bytes."""
    boundary = parse(data).get_boundary()
    assert boundary is not None
    part = data.split(f"--{boundary}".encode())[index + 1].strip(b"\r\n")
    head, _, body = part.partition(b"\r\n\r\n")
    return head, body


UTF8_BODY = "From: jörg@basic.example\r\nSubject: Grüße aus Köln\r\n\r\nhallo\r\n".encode()


def test_utf8_original_headers_are_message_global_headers() -> None:
    data = _report(UTF8_BODY)
    head, body = _raw_part(data, 2)
    assert b"Content-Type: message/global-headers" in head
    assert b"Content-Transfer-Encoding: 8bit" in head
    assert body == original_headers(UTF8_BODY)  # byte for byte, UTF-8
    # The rest stays plain: ASCII diagnostics keep the RFC 3464 types.
    assert [p.get_content_type() for p in parse(data).iter_parts()] == \
        ["text/plain", "message/delivery-status", "message/global-headers"]
    assert b"7bit" not in data and b"charset=us-ascii" in data


def test_ascii_original_headers_stay_text_rfc822_headers() -> None:
    head, body = _raw_part(_report(BODY), 2)
    assert head.startswith(b"Content-Type: text/rfc822-headers\r\n")
    assert b"Transfer-Encoding" not in head and body == original_headers(BODY)


def test_non_utf8_original_headers_travel_in_base64() -> None:
    latin1 = "Subject: Grüße\r\nFrom: x@y.example\r\n\r\nbody\r\n".encode("latin-1")
    data = _report(latin1)
    head, body = _raw_part(data, 2)
    assert b"Content-Type: text/rfc822-headers" in head
    assert b"Content-Transfer-Encoding: base64" in head
    assert base64.b64decode(body) == original_headers(latin1)
    assert data.isascii()


def test_non_ascii_diagnostic_is_global_delivery_status() -> None:
    data = _report(BODY, "rejeté par l'opérateur")
    text_head, text = _raw_part(data, 0)
    status_head, status = _raw_part(data, 1)
    assert b"charset=utf-8" in text_head and "rejeté".encode() in text
    assert b"Content-Type: message/global-delivery-status" in status_head
    assert "Diagnostic-Code: X-Mailqueue; rejeté".encode() in status
    # RFC 6522: the report type names the second part's subtype.
    assert parse(data).get_param("report-type") == "global-delivery-status"
    assert parse(_report(BODY)).get_param("report-type") == "delivery-status"


def test_a_non_ascii_recipient_is_of_type_utf8() -> None:
    data = build_report(hostname="mx.test", queue_id="Q1", sender="carol@exchange.example",
                        received_at=T0, now=T0 + 10, message_id="<n@mx.test>",
                        statuses=[RecipientStatus("jörg@b.example", "failed", "5.0.0", "no")],
                        original=original_headers(BODY))
    assert "Final-Recipient: utf-8; jörg@b.example".encode() in data
    assert parse(data).get_param("report-type") == "global-delivery-status"


def test_a_bounce_parser_finds_the_recipient_in_every_form() -> None:
    for original, diagnostic in ((BODY, "expired"), (UTF8_BODY, "expired"),
                                 (UTF8_BODY, "rejeté par l'opérateur")):
        data = _report(original, diagnostic)
        assert flufl.bounce.scan_message(email.message_from_bytes(data)) == \
            {b"a@b.example"}
