"""aiosmtpd's hooks: who may send to whom, and when a message counts as accepted.

The reply to DATA is 250 only after the message is committed (see
:mod:`mailqueue.queue.committer`); temporary trouble answers 4xx, permanent 5xx, and no
exception text reaches a client.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session, TLSSetupException

from mailqueue.clock import Clock
from mailqueue.config import SmtpConfig
from mailqueue.control.windows import Inbound, WindowSet
from mailqueue.errors import QueueError, QueueFullError, QueueLostError
from mailqueue.mailbox.router import Route, RouteError, Router
from mailqueue.queue.committer import GroupCommitter
from mailqueue.queue.values import NewMessage, new_queue_id
from mailqueue.smtp.admission import Capacity

log = structlog.get_logger("mailqueue.smtp")

NULL_SENDER = "<>"
_MESSAGE_ID_RE = re.compile(rb"^message-id:[ \t]*(.*?)\r?$", re.IGNORECASE | re.MULTILINE)
_BAD_ADDRESS_CHARS = re.compile(r"[\x00-\x1f\x7f<>()\[\],;:\\\" ]")


class MailqueueHandler:
    """aiosmtpd hooks: who may send to whom, and when a message counts as accepted."""

    def __init__(self, config: SmtpConfig, router: Router, windows: Callable[[], WindowSet],
                 committer: GroupCommitter, capacity: Capacity, clock: Clock,
                 on_accepted: Callable[[NewMessage], None] | None = None,
                 queue_lost: Callable[[], str | None] | None = None) -> None:
        self.config = config
        self.router = router
        self.windows = windows
        self.committer = committer
        self.capacity = capacity
        self.clock = clock
        self.on_accepted = on_accepted
        # Why the queue's file is lost, if it is, as last seen (a read, never a look at the
        # file: see mailqueue.queue._queuefile).
        self.queue_lost = queue_lost
        self.on_reply: Callable[[str], None] | None = None  # every reply sent (metrics)

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        # "<>" is the null reverse-path of bounces (RFC 5321 4.5.5); aiosmtpd needs a
        # non-empty mail_from to allow RCPT, so it is kept as "<>" until DATA.
        if address != NULL_SENDER and not _plausible_address(address):
            return "553 5.1.7 Malformed sender address"
        # A lost queue file refuses every commit: say so before the message is sent.
        if self.queue_lost is not None and self.queue_lost() is not None:
            return "451 4.3.0 Temporary queue failure, try again later"
        if self.capacity.full(_declared_size(mail_options)):
            log.warning("queue_full", messages=self.capacity.messages, bytes=self.capacity.bytes)
            return "452 4.3.1 Queue full, try again later"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if rcpt_options:
            return "555 5.5.4 RCPT TO parameters not recognized or not implemented"
        if len(envelope.rcpt_tos) >= self.config.max_recipients:
            return "452 4.5.3 Too many recipients"
        if not _plausible_address(address):
            return "553 5.1.3 Malformed recipient address"
        route = self.router.route(address)
        if route is RouteError.UNKNOWN_DOMAIN:
            return "550 5.7.1 Relay access denied"
        if route is RouteError.UNKNOWN_MAILBOX:
            return "550 5.1.1 Recipient address rejected: user unknown"
        if not isinstance(route, Route):
            return "553 5.1.3 Malformed recipient address"
        window = self.windows().blocking(route.store)
        if window is not None and window.inbound is Inbound.TEMPFAIL:
            return f"451 4.3.2 Mailbox maintenance ({window.name}), try again later"
        if window is not None and window.inbound is Inbound.REJECT:
            return f"554 5.3.2 Mailbox maintenance ({window.name}), not accepting mail"
        if self.capacity.full():
            return "452 4.3.1 Queue full, try again later"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        body = envelope.original_content or b""
        routes = [self.router.route(a) for a in envelope.rcpt_tos]
        now = self.clock.now()
        message = NewMessage(
            queue_id=new_queue_id(now),
            mail_from="" if envelope.mail_from == NULL_SENDER else envelope.mail_from or "",
            recipients=tuple((r.address, r.store) for r in routes if isinstance(r, Route)),
            body=body,
            received_at=now,
            helo=(session.host_name or "")[:255],
            peer=str(session.peer[0]) if session.peer else "",
            message_id=_message_id(body),
            digest=hashlib.sha256(body).hexdigest(),
            auth_user=str(session.auth_data) if session.authenticated else None,
            tls=_tls_of(session),
        )
        try:
            await self.committer.submit(message)
        except QueueFullError as exc:
            log.error("message_not_queued", error=str(exc), recipients=len(message.recipients))
            self.capacity.storage_full()
            return "452 4.3.1 Insufficient system storage, try again later"
        except QueueLostError as exc:
            # The loss is the operator's news once (queue_file_lost), not once a message.
            log.debug("message_not_queued", error=str(exc),
                      recipients=len(message.recipients))
            return "451 4.3.0 Temporary queue failure, try again later"
        except QueueError as exc:
            log.error("message_not_queued", error=str(exc), recipients=len(message.recipients))
            return "451 4.3.0 Temporary queue failure, try again later"
        self.capacity.added(len(body))
        log.info("message_queued", queue_id=message.queue_id, size=len(body),
                 recipients=len(message.recipients))
        if self.on_accepted is not None:
            self.on_accepted(message)
        return f"250 2.0.0 Ok: queued as {message.queue_id}"

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            # The client's handshake failed (it dropped, spoke no TLS, or refused the
            # certificate): aiosmtpd closes the connection; no reply goes out.
            cause = error.__cause__
            log.info("tls_handshake_failed", error_type=type(cause).__name__,
                     reason=getattr(cause, "reason", None))
            return "454 4.7.0 TLS not available due to temporary reason"
        log.error("smtp_session_error", error_type=type(error).__name__)
        return "451 4.3.0 Internal error, try again later"


def _plausible_address(address: str) -> bool:
    return (0 < len(address) <= 254 and address.count("@") >= 1 and
            not _BAD_ADDRESS_CHARS.search(address.rpartition("@")[2]) and
            "\x00" not in address and "\r" not in address and "\n" not in address)


def _tls_of(session: Session) -> str | None:
    """The session's TLS protocol and cipher (``"TLSv1.3 TLS_AES_256_GCM_SHA384"``), as
    recorded with its messages; None without TLS."""
    ssl_object = session.ssl.get("ssl_object") if session.ssl else None
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    version = ssl_object.version() or "TLS"
    return f"{version} {cipher[0]}" if cipher else str(version)


def _declared_size(mail_options: list[str]) -> int:
    for option in mail_options:
        key, _, value = option.partition("=")
        if key.upper() == "SIZE" and value.isdigit():
            return int(value)
    return 0


def _message_id(body: bytes) -> str | None:
    header_end = body.find(b"\r\n\r\n")
    match = _MESSAGE_ID_RE.search(body[: header_end if header_end >= 0 else 65536])
    if match is None:
        return None
    return match.group(1).decode("ascii", "replace").strip()[:998] or None
