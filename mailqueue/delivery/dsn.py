"""Delivery status notifications (RFC 3464): bounces and delay warnings.

A notice is a ``multipart/report; report-type=delivery-status`` message with a readable
part, a ``message/delivery-status`` part (one block per recipient) and the original
headers as ``text/rfc822-headers``. Where the original headers or a diagnostic are not
ASCII, the parts say so as RFC 6533 has them: ``message/global-headers`` and
``message/global-delivery-status`` (UTF-8, ``8bit``), and a UTF-8 readable part; original
headers that are not even UTF-8 are kept byte for byte in a base64 ``text/rfc822-headers``
part, so the notice never carries unlabelled 8-bit data. It is sent with a null sender
(``MAIL FROM:<>``), so a notice that cannot be delivered is never bounced in turn. A
notice only goes to a sender whose address is a local mailbox (the queue delivers it like
any message, durably); for other senders the bounce is only recorded.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
from collections.abc import Sequence
from email.utils import formatdate

from mailqueue.mailbox.router import Route, Router
from mailqueue.queue.values import BouncedRecipient, NewMessage, PendingRecipient, new_queue_id
from mailqueue.timeparse import format_duration

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_REPLY_STATUS = re.compile(r"^([245])\d\d(?:[ -]([245]\.\d{1,3}\.\d{1,3}))?(?:\s|$)")
# A reason of mailqueue's own that names its status last: "... needs SMTPUTF8 (5.6.7)".
_REASON_STATUS = re.compile(r"\((5\.\d{1,3}\.\d{1,3})\)$")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]+")


@dataclasses.dataclass(frozen=True)
class RecipientStatus:
    """One recipient's block in the report."""

    address: str
    action: str  # "failed" or "delayed"
    status: str  # RFC 3463 enhanced status code
    diagnostic: str
    last_attempt: float | None = None
    # A remote server's reply that decided it (``550 5.1.1 ...``) and the server's name:
    # reported as ``Diagnostic-Code: smtp; ...`` and ``Remote-MTA: dns; ...``.
    remote_reply: str | None = None
    remote_mta: str | None = None


def original_headers(body: bytes) -> bytes:
    """The header block of a raw message (CRLF line ends, no blank line)."""
    match = _HEADER_END.search(body)
    head = body[:match.start()] if match else body
    return head.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def status_for(reason: str, remote_reply: str | None = None) -> str:
    """The enhanced status code for a bounce: 5.4.7 when it expired, else the remote
    server's own (``550 5.1.1 ...`` gives 5.1.1; a 5xx without one 5.0.0), else the one a
    reason of mailqueue's own ends with (``(5.3.4)``: too large for the server), else
    5.0.0."""
    if reason.startswith("expired"):
        return "5.4.7"
    match = _REPLY_STATUS.match(remote_reply or "")
    if match is not None and match.group(1) == "5":
        status = match.group(2)
        return status if status and status.startswith("5.") else "5.0.0"
    own = _REASON_STATUS.search(reason)
    return own.group(1) if own is not None else "5.0.0"


def one_line(text: str, limit: int = 900) -> str:
    return _UNSAFE.sub(" ", text).strip()[:limit] or "unknown"


def build_report(*, hostname: str, queue_id: str, sender: str, received_at: float,
                 statuses: Sequence[RecipientStatus], original: bytes, now: float,
                 message_id: str, delayed: bool = False,
                 retry_until: float | None = None) -> bytes:
    """The whole notice as bytes (CRLF line ends), ready to enqueue."""
    boundary = f"=_mailqueue_{hashlib.sha256(f'{queue_id}{now}'.encode()).hexdigest()[:24]}"
    subject = ("Delayed Mail (still being retried)" if delayed
               else "Undelivered Mail Returned to Sender")
    human = _human_text(hostname, queue_id, statuses, delayed, retry_until)
    report = [f"Reporting-MTA: dns; {hostname}", f"X-Mailqueue-Queue-ID: {queue_id}",
              f"Arrival-Date: {formatdate(received_at)}"]
    for status in statuses:
        report += ["", *_recipient_block(status, retry_until)]
    headers_part, original = _original_part(original)
    status_head = _text_part_head("message/delivery-status", report)
    # RFC 6522: report-type names the subtype of the second part.
    report_type = status_head[0].removeprefix("Content-Type: message/")
    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{sender}>",
        f"Subject: {subject}",
        f"Date: {formatdate(now)}",
        f"Message-ID: {message_id}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type={report_type}; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        *_text_part_head("text/plain", human, charset=True),
        "Content-Description: Notification",
        "",
        *human,
        "",
        f"--{boundary}",
        *status_head,
        "Content-Description: Delivery report",
        "",
        *report,
        "",
        f"--{boundary}",
        *headers_part,
        "Content-Description: Undelivered Message Headers",
        "",
    ]
    tail = f"\r\n--{boundary}--\r\n".encode("ascii")
    return "\r\n".join(head).encode("utf-8") + b"\r\n" + original + tail


def _text_part_head(content_type: str, lines: Sequence[str],
                    charset: bool = False) -> list[str]:
    """A part's Content-Type (and transfer encoding) for ``lines``: as given when they are
    ASCII; else UTF-8 in ``8bit``, the delivery status as ``message/global-delivery-status``
    (RFC 6533)."""
    if all(line.isascii() for line in lines):
        return [f"Content-Type: {content_type}" + ("; charset=us-ascii" if charset else "")]
    if content_type == "message/delivery-status":
        content_type = "message/global-delivery-status"
    return [f"Content-Type: {content_type}" + ("; charset=utf-8" if charset else ""),
            "Content-Transfer-Encoding: 8bit"]


def _original_part(original: bytes) -> tuple[list[str], bytes]:
    """The original headers' part head and body: ``text/rfc822-headers`` for ASCII,
    ``message/global-headers`` for UTF-8 (RFC 6533), and for other 8-bit bytes
    ``text/rfc822-headers`` in base64, so they arrive unchanged and correctly labelled."""
    if original.isascii():
        return ["Content-Type: text/rfc822-headers"], original
    try:
        original.decode("utf-8")
    except UnicodeDecodeError:
        encoded = base64.encodebytes(original).replace(b"\n", b"\r\n").rstrip(b"\r\n")
        return ["Content-Type: text/rfc822-headers", "Content-Transfer-Encoding: base64"], \
            encoded
    return ["Content-Type: message/global-headers", "Content-Transfer-Encoding: 8bit"], \
        original


def _human_text(hostname: str, queue_id: str, statuses: Sequence[RecipientStatus],
                delayed: bool, retry_until: float | None) -> list[str]:
    if delayed:
        lines = [f"This is the mail system at host {hostname}.", "",
                 "Your message could not be delivered yet. It is still in the queue and",
                 "delivery will be retried"
                 + (f" until {formatdate(retry_until)}." if retry_until else "."),
                 "You do not need to resend it.", ""]
    else:
        lines = [f"This is the mail system at host {hostname}.", "",
                 "Your message could not be delivered to one or more recipients.",
                 "It has been given up on; the reasons are below.", ""]
    lines += [f"<{s.address}>: {one_line(s.diagnostic, 200)}" for s in statuses]
    lines += ["", f"Queue id: {queue_id}"]
    return lines


def _recipient_block(status: RecipientStatus, retry_until: float | None) -> list[str]:
    # RFC 6533: an address that is not ASCII is of type utf-8.
    kind = "rfc822" if status.address.isascii() else "utf-8"
    block = [f"Final-Recipient: {kind}; {status.address}",
             f"Action: {status.action}",
             f"Status: {status.status}"]
    if status.remote_reply is not None:
        block += [f"Remote-MTA: dns; {one_line(status.remote_mta or 'localhost', 255)}",
                  f"Diagnostic-Code: smtp; {one_line(status.remote_reply)}"]
    else:
        block.append(f"Diagnostic-Code: X-Mailqueue; {one_line(status.diagnostic)}")
    if status.last_attempt is not None:
        block.append(f"Last-Attempt-Date: {formatdate(status.last_attempt)}")
    if status.action == "delayed" and retry_until is not None:
        block.append(f"Will-Retry-Until: {formatdate(retry_until)}")
    return block


class Notifier:
    """Builds notices for local senders; implements :data:`mailqueue.queue.values.Notify`."""

    def __init__(self, router: Router, hostname: str, max_lifetime: float) -> None:
        self._router = router
        self._hostname = hostname
        self._max_lifetime = max_lifetime

    def local_route(self, sender: str) -> Route | None:
        """The mailbox of ``sender`` if it is local; None for the null sender or remote ones."""
        if not sender:
            return None  # never bounce a bounce
        route = self._router.route(sender)
        return route if isinstance(route, Route) else None

    def __call__(self, bounced: Sequence[BouncedRecipient], now: float) -> list[NewMessage]:
        """One bounce per message whose sender is local."""
        by_message: dict[str, list[BouncedRecipient]] = {}
        for item in bounced:
            by_message.setdefault(item.queue_id, []).append(item)
        notices = []
        for group in by_message.values():
            first = group[0]
            statuses = [RecipientStatus(b.address, "failed",
                                        status_for(b.reason, b.diagnostic), b.reason, now,
                                        remote_reply=b.diagnostic, remote_mta=b.remote_mta)
                        for b in group]
            notice = self._notice(first.queue_id, first.mail_from, first.received_at,
                                  first.body, statuses, now)
            if notice is not None:
                notices.append(notice)
        return notices

    def delay_warnings(self, pending: Sequence[PendingRecipient],
                       now: float) -> list[NewMessage]:
        """One "still trying" notice per message whose sender is local."""
        by_message: dict[str, list[PendingRecipient]] = {}
        for item in pending:
            by_message.setdefault(item.queue_id, []).append(item)
        notices = []
        for group in by_message.values():
            first = group[0]
            age = format_duration(now - first.received_at)
            statuses = [RecipientStatus(p.address, "delayed", "4.4.7",
                                        p.last_error or f"not yet delivered after {age}")
                        for p in group]
            notice = self._notice(first.queue_id, first.mail_from, first.received_at,
                                  first.body, statuses, now, delayed=True,
                                  retry_until=first.received_at + self._max_lifetime)
            if notice is not None:
                notices.append(notice)
        return notices

    def _notice(self, queue_id: str, sender: str, received_at: float, body: bytes,
                statuses: Sequence[RecipientStatus], now: float, delayed: bool = False,
                retry_until: float | None = None) -> NewMessage | None:
        route = self.local_route(sender)
        if route is None:
            return None
        notice_id = new_queue_id(now)
        message_id = f"<{notice_id}.{queue_id}@{self._hostname}>"
        report = build_report(hostname=self._hostname, queue_id=queue_id, sender=sender,
                              received_at=received_at, statuses=statuses,
                              original=original_headers(body), now=now,
                              message_id=message_id, delayed=delayed,
                              retry_until=retry_until)
        return NewMessage(queue_id=notice_id, mail_from="",
                          recipients=((route.address, route.store),), body=report,
                          received_at=now, helo=self._hostname, peer="",
                          message_id=message_id, digest=hashlib.sha256(report).hexdigest())
