"""The SMTP protocol: aiosmtpd's session with admission control, enhanced status codes,
DATA read in blocks, a junk-command limit and an idle timeout that counts bytes.

Replies are the error model at the edge: temporary trouble answers 4xx, permanent 5xx,
and no exception text ever reaches a client.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, AnyStr

import structlog
from aiosmtpd.smtp import MISSING, SMTP, syntax

from mailqueue.config import SmtpConfig
from mailqueue.smtp import _data
from mailqueue.smtp.admission import Gate, say
from mailqueue.smtp.handler import MailqueueHandler

log = structlog.get_logger("mailqueue.smtp")

IDENT = "ESMTP mailqueue"
# <dot-atom@domain>: the common form, whose parse by the email package is the same string.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_PATH = re.compile(rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>")

# aiosmtpd's own replies, given enhanced status codes (RFC 3463) and no library detail.
_REPLY_REWRITES: dict[str, str] = {
    "552 Error: message size exceeds fixed maximum message size":
        "552 5.3.4 Message size exceeds fixed maximum message size",
    "552 Error: Too much mail data": "552 5.3.4 Message size exceeds fixed maximum message size",
    "500 Line too long (see RFC5321 4.5.3.1.6)": "500 5.5.2 Line too long",
    "500 Command line too long": "500 5.5.2 Command line too long",
    "500 Error: bad syntax": "500 5.5.2 Syntax error",
    "500 Error: strict ASCII mode": "500 5.6.7 Non-ASCII data without SMTPUTF8",
    "501 Error: SMTPUTF8 disabled": "555 5.5.4 SMTPUTF8 not supported",
    "503 Error: need MAIL command": "503 5.5.1 Need MAIL command",
    "503 Error: need RCPT command": "503 5.5.1 Need RCPT command",
    "503 Error: nested MAIL command": "503 5.5.1 Nested MAIL command",
    "503 Error: send HELO first": "503 5.5.1 Send HELO/EHLO first",
    "555 MAIL FROM parameters not recognized or not implemented":
        "555 5.5.4 MAIL FROM parameters not recognized or not implemented",
    "555 RCPT TO parameters not recognized or not implemented":
        "555 5.5.4 RCPT TO parameters not recognized or not implemented",
}


# Commands that move no mail. Like Postfix's smtpd_junk_command_limit: a session may send
# this many of them between accepted messages, then it is closed with 421.
JUNK_LIMIT = 100
_QUEUED = "250 2.0.0 Ok: queued as "
# aiosmtpd's other "NNN [x.y.z] Error: text" replies: the "Error:" goes, a code is added.
_LIBRARY_ERROR = re.compile(r"^(\d)(\d\d) (?:(\d\.\d{1,3}\.\d{1,3}) )?Error: (.*)$")
_UNKNOWN_COMMAND = re.compile(r'^500 Error: command ".*" not recognized$')


def rewrite_reply(status: str) -> str:
    """aiosmtpd's reply ``status`` as mailqueue answers it: enhanced code, no library text."""
    if status in _REPLY_REWRITES:
        return _REPLY_REWRITES[status]
    if _UNKNOWN_COMMAND.match(status):
        return "500 5.5.1 Command not recognized"
    match = _LIBRARY_ERROR.match(status)
    if match is None:
        return status
    klass, rest, enhanced, text = match.groups()
    code = f"{klass}{rest}"
    enhanced = enhanced or f"{klass}.5.{'4' if code in ('501', '555') else '1'}"
    return f"{code} {enhanced} {text[:1].upper()}{text[1:]}"


_VERBS: dict[type, list[str]] = {}


def _verbs(cls: type) -> list[str]:
    names = _VERBS.get(cls)
    if names is None:
        names = _VERBS[cls] = [name for name in dir(cls) if name.startswith(("smtp_", "auth_"))]
    return names


class MailqueueSMTP(SMTP):
    """aiosmtpd's protocol with admission control, enhanced codes and polite timeouts."""

    def __init__(self, handler: MailqueueHandler, gate: Gate, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._gate = gate
        self._admitted_ip: str | None = None
        self._junk = 0
        self._idle_deadline = 0.0

    def __dir__(self) -> list[str]:
        """The SMTP verbs and AUTH mechanisms only: what aiosmtpd's ``__init__`` looks for.

        It finds them with ``inspect.getmembers(self)`` and ``dir(self)`` for every
        connection; over the 125 attributes of a session that is about half the server's
        CPU for a connection, and most of it for a client that sends one message a
        connection."""
        return _verbs(type(self))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._admitted_ip is None and self.transport is None:
            peer = transport.get_extra_info("peername")
            ip = str(peer[0]) if peer else "?"
            refusal = self._gate.admit(ip, transport)
            if refusal is not None:
                log.info("connection_refused", peer=ip, reply=refusal[:3])
                say(transport, refusal.encode("ascii") + b"\r\n")
                transport.close()
                return
            self._admitted_ip = ip
        before = self._handler_coroutine  # a STARTTLS handshake keeps the session's task
        super().connection_made(transport)
        if self._handler_coroutine is not before and self._handler_coroutine is not None:
            self._handler_coroutine.add_done_callback(self._session_ended)

    def _session_ended(self, _task: asyncio.Task[None]) -> None:
        """The session's task is over, however it ended: close its connection, so that
        ``connection_lost`` follows and gives the slot back.

        aiosmtpd closes the connection where the task ends at a command, but not where it
        ends before its first step, nor during the greeting. uvloop delivers a connection
        and its end of file in one pass of the loop: a client that connects and closes at
        once (a load balancer's TCP check, a port scan) has its task cancelled (by
        ``eof_received``) before it runs at all. Without this, the half-closed transport
        would stay open until the idle timeout, holding the address's slot and a stop's
        drain."""
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, error: Exception | None) -> None:
        if self._admitted_ip is not None:
            self._gate.release(self._admitted_ip, self.transport)
            self._admitted_ip = None
        if self.session is not None:
            super().connection_lost(error)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parser, with a fast path for the plain ``<local@domain>``
        (the email package's parser costs tens of microseconds a call, twice a message)."""
        match = _SIMPLE_PATH.match(arg)
        if match is None:
            return super()._getaddr(arg)
        address = match.group(1)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, arg[match.end():].lstrip()

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str):
            status = rewrite_reply(status)
            if status.startswith(_QUEUED):
                self._junk = 0
            hook = getattr(self.event_handler, "on_reply", None)
            if hook is not None:
                hook(status)
        await super().push(status)

    async def _junk_refused(self) -> bool:
        """Count a command that moves no mail; past JUNK_LIMIT, answer 421 and close."""
        self._junk += 1
        if self._junk <= JUNK_LIMIT:
            return False
        log.info("junk_limit", peer=self._admitted_ip)
        await super().push("421 4.7.0 Too many commands without mail, closing connection")
        if self.transport is not None:
            self.transport.close()
        return True

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA with the data read in blocks (see :mod:`mailqueue.smtp._data`)."""
        if self._decode_data or not _data.supported(self._reader):
            await super().smtp_DATA(arg)
            return
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            result = await _data.read_data(self._reader, self.data_size_limit,
                                              self.line_length_limit)
        except asyncio.CancelledError:
            # The connection went away during the data: nothing was accepted.
            self._writer.close()
            raise
        except asyncio.IncompleteReadError:
            self._writer.close()
            return
        if result.state is _data.DataState.TOO_LONG:
            await self.push("500 Line too long (see RFC5321 4.5.3.1.6)")
        elif result.state is _data.DataState.TOO_MUCH:
            await self.push("552 Error: Too much mail data")
        if result.state is not _data.DataState.NOMINAL:
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        self.envelope.content = self.envelope.original_content = result.content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    @syntax("NOOP [ignored]")
    async def smtp_NOOP(self, arg: str) -> None:
        if not await self._junk_refused():
            await super().smtp_NOOP(arg)

    @syntax("RSET")
    async def smtp_RSET(self, arg: str) -> None:
        if not await self._junk_refused():
            await super().smtp_RSET(arg)

    @syntax("VRFY <address>")
    async def smtp_VRFY(self, arg: str) -> None:
        if not await self._junk_refused():
            await super().smtp_VRFY(arg)

    @syntax("HELP [command]")
    async def smtp_HELP(self, arg: str) -> None:
        if not await self._junk_refused():
            await super().smtp_HELP(arg)

    async def smtp_EXPN(self, arg: str) -> None:
        if not await self._junk_refused():
            await super().smtp_EXPN(arg)

    def data_received(self, data: bytes) -> None:
        """Every chunk the client sends restarts the idle timeout: idle means no bytes.

        aiosmtpd restarts it only when a whole command line has arrived, which would cut a
        client on a slow line off with 421 in the middle of a long command or of a message
        it is still sending (DATA is one command, however long it takes)."""
        if self._admitted_ip is not None:  # a refused connection has no session to time
            self._reset_timeout()
        super().data_received(data)

    def _reset_timeout(self, duration: float | None = None) -> None:
        """Push the idle deadline back (on every chunk received, and aiosmtpd calls it
        after every command).

        aiosmtpd cancels its timer and schedules a new one each time: four or five timer
        handles a message, a noticeable share of the event loop's time under load. Here the
        deadline is a number; the one timer is moved only when it would fire too late, and
        when it fires early it sets itself again for what is left."""
        self._idle_deadline = self.loop.time() + (duration or self._timeout_duration)
        handle = self._timeout_handle
        if handle is None or handle.cancelled() or handle.when() > self._idle_deadline:
            if handle is not None:
                handle.cancel()
            self._timeout_handle = self.loop.call_at(self._idle_deadline, self._idle_check)

    def _idle_check(self) -> None:
        if self.loop.time() < self._idle_deadline:
            self._timeout_handle = self.loop.call_at(self._idle_deadline, self._idle_check)
        else:
            self._timeout_cb()

    def _timeout_cb(self) -> None:
        if self.transport is not None:
            say(self.transport, b"421 4.4.2 Idle timeout, closing connection\r\n")
        super()._timeout_cb()  # type: ignore[no-untyped-call]


async def start_server(handler: MailqueueHandler, gate: Gate, config: SmtpConfig,
                       ) -> asyncio.Server:
    """Listen on ``config.host:config.port`` (port 0 picks a free one)."""
    loop = asyncio.get_running_loop()

    def factory() -> MailqueueSMTP:
        return MailqueueSMTP(handler, gate, data_size_limit=config.max_message_size,
                             enable_SMTPUTF8=False, decode_data=False,
                             hostname=config.hostname, ident=IDENT,
                             timeout=config.timeout, loop=loop)

    return await loop.create_server(factory, host=config.host, port=config.port,
                                    reuse_address=True)
