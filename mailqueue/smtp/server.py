"""The SMTP protocol: aiosmtpd's session with admission control, enhanced status codes,
DATA read in blocks, a junk-command limit, an idle timeout that counts bytes, STARTTLS
(through the event loop's ``start_tls``) and implicit TLS, and AUTH PLAIN and LOGIN with
the passwords checked off the event loop.

Replies are the error model at the edge: temporary trouble answers 4xx, permanent 5xx,
and no exception text ever reaches a client.
"""

from __future__ import annotations

import asyncio
import binascii
import collections
import re
import ssl
from base64 import b64decode, b64encode
from dataclasses import dataclass
from typing import Any, AnyStr

import structlog
from aiosmtpd.smtp import MISSING, SMTP, TLSSetupException, syntax

from mailqueue.config import SmtpConfig
from mailqueue.smtp import _data
from mailqueue.smtp.admission import Gate, say
from mailqueue.smtp.auth import Authenticator, Verdict
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
    "503 Error: send EHLO first": "503 5.5.1 Send EHLO first",
    "530 Must issue a STARTTLS command first": "530 5.7.0 Must issue a STARTTLS command first",
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
# RFC 4954 4: an AUTH command line, initial response included, may be longer than other
# commands; the stream's line limit (aiosmtpd's line_length_limit) still bounds it.
AUTH_LINE_LIMIT = 1000
HANDSHAKE_TIMEOUT = 60.0  # asyncio's default; the idle timeout, if that is shorter
MECHANISMS = ("LOGIN", "PLAIN")
_LOGIN_USER, _LOGIN_PASSWORD = b"Username:", b"Password:"
_AUTH_OK = "235 2.7.0 Authentication successful"
_AUTH_BAD = "535 5.7.8 Authentication credentials invalid"
_AUTH_LOCKED = "421 4.7.0 Too many failed authentication attempts, try again later"


@dataclass(frozen=True)
class Listener:
    """One SMTP listener: where it binds and what it asks of a session."""

    name: str
    host: str
    port: int
    implicit_tls: bool = False  # TLS from the first byte (port 465 style)
    require_tls: bool = False  # mail commands before STARTTLS: 530 5.7.0
    auth_required: bool = False  # mail commands before AUTH: 530 5.7.0


MAIN_LISTENER = "smtp"


def listeners(config: SmtpConfig) -> list[Listener]:
    """``[smtp] host:port`` (named ``smtp``) and every ``[[smtp.listeners]]`` entry."""
    return [Listener(MAIN_LISTENER, config.host, config.port,
                     require_tls=config.require_tls, auth_required=config.auth_required),
            *(Listener(lst.name, lst.host or config.host, lst.port,
                       implicit_tls=lst.implicit_tls, require_tls=lst.require_tls,
                       auth_required=lst.auth_required) for lst in config.listeners)]


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
    """aiosmtpd's protocol with admission control, enhanced codes, polite timeouts, TLS
    and AUTH."""

    def __init__(self, handler: MailqueueHandler, gate: Gate,
                 listener: Listener | None = None,
                 authenticator: Authenticator | None = None, **kwargs: Any) -> None:
        listener = listener or Listener(MAIN_LISTENER, "", 0)
        super().__init__(handler, require_starttls=listener.require_tls,
                         auth_required=listener.auth_required, **kwargs)
        self._gate = gate
        self._admitted_ip: str | None = None
        self._junk = 0
        self._idle_deadline = 0.0
        self._implicit_tls = listener.implicit_tls
        self._lost = False
        self._passwords = authenticator
        # Per session, not aiosmtpd's table shared by every session of the class.
        self.command_size_limits = collections.defaultdict(
            lambda: SMTP.command_size_limit, {"AUTH": AUTH_LINE_LIMIT})

    @property
    def encrypted(self) -> bool:
        """Whether the session runs over TLS (implicit, or after STARTTLS)."""
        return self._implicit_tls or self._tls_protocol is not None

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
        super().connection_made(transport)
        if self._implicit_tls and self.session is not None:
            # What a session records after STARTTLS: the handler reads the cipher from it.
            self.session.ssl = {"ssl_object": transport.get_extra_info("ssl_object")}
        if self._handler_coroutine is not None:
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
        """Give the connection's slot back and end the session, once (after a failed
        STARTTLS handshake both aiosmtpd and the TLS layer report the loss)."""
        if self._lost:
            return
        self._lost = True
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
        refused = False
        if isinstance(status, str):
            status = rewrite_reply(status)
            if status.startswith(_QUEUED):
                self._junk = 0
            # A mail command refused for want of STARTTLS or AUTH moves no mail either.
            refused = status.startswith("530 ")
            hook = getattr(self.event_handler, "on_reply", None)
            if hook is not None:
                hook(status)
        await super().push(status)
        if refused:
            await self._junk_refused()

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        """aiosmtpd's EHLO, offering STARTTLS before TLS and AUTH only over TLS (also on an
        implicit-TLS listener, which aiosmtpd does not count as TLS)."""
        if not hostname:
            await self.push("501 Syntax: EHLO hostname")
            return
        self._set_rset_state()  # type: ignore[no-untyped-call]
        assert self.session is not None
        self.session.extended_smtp = True
        self.session.host_name = hostname
        lines = [self.hostname]
        if self.data_size_limit:
            lines.append(f"SIZE {self.data_size_limit}")
            self.command_size_limits["MAIL"] = self.command_size_limit + 26  # SIZE=n
        if not self._decode_data:
            lines.append("8BITMIME")
        if self.enable_SMTPUTF8:
            lines.append("SMTPUTF8")
            self.command_size_limits["MAIL"] += 10
        if self.tls_context and not self.encrypted:
            lines.append("STARTTLS")
        if self._passwords is not None and self.encrypted:
            lines.append("AUTH " + " ".join(MECHANISMS))
        lines.append("HELP")
        await self.push("\r\n".join(f"250-{line}" for line in lines[:-1]) +
                        f"\r\n250 {lines[-1]}")

    @syntax("STARTTLS")
    async def smtp_STARTTLS(self, arg: str) -> None:
        if arg:
            await self.push("501 Syntax: STARTTLS")
        elif self.encrypted:
            await self.push("503 5.5.1 TLS already active")
        elif not self.tls_context:
            await self.push("454 4.7.0 TLS not available")
        else:
            await self._start_tls()

    async def _start_tls(self) -> None:
        """RFC 3207 STARTTLS through the event loop's own ``start_tls``.

        aiosmtpd's STARTTLS wraps the connection in asyncio's TLS layer, written in Python
        even on uvloop; ``loop.start_tls`` is the public way to do the same, and on uvloop
        runs its native TLS layer, which costs the event loop less per message. The
        session then starts over as RFC 3207 4.2 asks: nothing the client sent before the
        handshake is read, and it says EHLO again."""
        assert self.tls_context is not None and self.transport is not None
        await self.push("220 2.0.0 Ready to start TLS")
        plain = self.transport
        # What the client sent past the STARTTLS line is plaintext: dropped unread. No await
        # comes between this and start_tls pausing the reading, and from then on every byte
        # goes to the TLS layer (a client may send EHLO right behind its handshake).
        self._reader._buffer.clear()  # type: ignore[attr-defined]
        try:
            transport = await self.loop.start_tls(
                plain, self, self.tls_context, server_side=True,  # type: ignore[arg-type]
                ssl_handshake_timeout=min(self._timeout_duration, HANDSHAKE_TIMEOUT))
        except Exception as exc:
            # A TLS error, the client gone, the handshake timed out: aiosmtpd closes the
            # connection (handle_exception logs why), and no reply goes out.
            raise TLSSetupException() from exc
        if transport is None:  # the connection closed during the handshake
            raise TLSSetupException()
        self._gate.replace(plain, transport)
        self._original_transport = plain
        # aiosmtpd's and this session's sign that TLS is on (it is never read otherwise).
        self._tls_protocol = transport  # type: ignore[assignment]
        self.transport = transport
        self._reader._transport = transport  # type: ignore[attr-defined]
        self._writer._transport = transport  # type: ignore[attr-defined]
        self._over_ssl = True
        self._set_rset_state()  # type: ignore[no-untyped-call]
        self.session = self._create_session()
        self.session.peer = transport.get_extra_info("peername")
        self.session.ssl = {"ssl_object": transport.get_extra_info("ssl_object")}
        self._reset_timeout()

    @syntax("AUTH <mechanism> [initial-response]")
    async def smtp_AUTH(self, arg: str) -> None:
        """RFC 4954 AUTH with PLAIN (RFC 4616) and LOGIN, only over TLS; the password is
        checked on the authenticator's threads, within its failure limit."""
        if await self._junk_refused() or await self.check_helo_needed("EHLO"):
            return
        assert self.session is not None and self.envelope is not None
        refusal = self._auth_refusal()
        if refusal is not None:
            await self.push(refusal)
            return
        assert self._passwords is not None
        words = (arg or "").split()
        if not 1 <= len(words) <= 2:
            await self.push("501 5.5.4 Syntax: AUTH mechanism [initial-response]")
            return
        mechanism = words[0].upper()
        if mechanism not in MECHANISMS:
            await self.push("504 5.5.4 Unrecognized authentication type")
            return
        address = self._admitted_ip or "?"
        if self._passwords.locked_out(address):
            await self._lock_out(address)
            return
        credentials = await (self._plain(words[1:]) if mechanism == "PLAIN"
                             else self._login(words[1:]))
        if credentials is None:
            return  # refused already, with its reason
        verdict, user = await self._passwords.verify(address, *credentials)
        if verdict is Verdict.LOCKED_OUT:
            await self._lock_out(address)
        elif verdict is Verdict.FAILED:
            log.info("auth_failed", peer=address, mechanism=mechanism)
            await self.push(_AUTH_BAD)
        else:
            self.session.authenticated = True
            self.session.auth_data = user  # type: ignore[assignment]  # typed None upstream
            log.info("auth_succeeded", peer=address, mechanism=mechanism, user=user)
            await self.push(_AUTH_OK)

    def _auth_refusal(self) -> str | None:
        """The reply refusing AUTH in this state of the session, if it is refused."""
        assert self.session is not None and self.envelope is not None
        if not self.session.extended_smtp:
            return "503 5.5.1 Send EHLO first"
        if self._passwords is None:
            return "503 5.5.1 Authentication not enabled"
        if not self.encrypted:
            return "538 5.7.11 Encryption required for requested authentication mechanism"
        if self.session.authenticated:
            return "503 5.5.1 Already authenticated"
        if self.envelope.mail_from is not None:
            return "503 5.5.1 AUTH not permitted during a mail transaction"
        return None

    async def _lock_out(self, address: str) -> None:
        log.warning("auth_locked_out", peer=address)
        await self.push(_AUTH_LOCKED)
        if self.transport is not None:
            self.transport.close()

    async def _plain(self, initial: list[str]) -> tuple[bytes, bytes] | None:
        """RFC 4616: ``[authzid] NUL authcid NUL password``, in the AUTH line or after an
        empty challenge. An authorization identity other than the user is refused."""
        response = await (self._decoded(initial[0]) if initial else self._challenge(b""))
        if response is None:
            return None
        parts = response.split(b"\x00")
        if len(parts) != 3 or not parts[1]:
            await self.push("501 5.5.2 Malformed PLAIN response")
            return None
        authzid, login, password = parts
        if authzid and authzid != login:
            await self.push("535 5.7.8 Authorization identity must be the user")
            return None
        return login, password

    async def _login(self, initial: list[str]) -> tuple[bytes, bytes] | None:
        login = await (self._decoded(initial[0]) if initial else self._challenge(_LOGIN_USER))
        if login is None:
            return None
        password = await self._challenge(_LOGIN_PASSWORD)
        if password is None:
            return None
        return login, password

    async def _challenge(self, challenge: bytes) -> bytes | None:
        """Send ``334 challenge`` and read the client's answer, decoded; None (with the
        reply sent, or the connection gone) when there is none to use."""
        await self.push(b"334 " + b64encode(challenge))
        try:
            line = await self._reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            await self._skip_line(exc.consumed)
            await self.push("500 5.5.6 Authentication exchange line is too long")
            return None
        except asyncio.IncompleteReadError:
            if self.transport is not None:
                self.transport.close()
            return None
        self._reset_timeout()
        answer = line.rstrip(b"\r\n").strip()
        if answer == b"*":
            await self.push("501 5.7.0 Authentication cancelled")
            return None
        return await self._decoded(answer.decode("ascii", "replace"))

    async def _skip_line(self, consumed: int) -> None:
        """Read and drop the rest of an over-long line (as aiosmtpd does for commands)."""
        await self._reader.read(consumed)
        while True:
            try:
                await self._reader.readuntil(b"\n")
                return
            except asyncio.LimitOverrunError as exc:
                await self._reader.read(exc.consumed)

    async def _decoded(self, text: str) -> bytes | None:
        if text == "=":  # RFC 4954 4: an empty initial response
            return b""
        try:
            return b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            await self.push("501 5.5.2 Cannot decode base64")
            return None

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
                       listener: Listener | None = None, tls: ssl.SSLContext | None = None,
                       authenticator: Authenticator | None = None) -> asyncio.Server:
    """Serve ``listener`` (default: ``config.host:config.port``; port 0 picks a free one).

    ``tls``: the server's TLS context, offered with STARTTLS, or from the first byte on
    an implicit-TLS listener. ``authenticator``: AUTH is offered over TLS."""
    loop = asyncio.get_running_loop()
    listener = listener or listeners(config)[0]
    implicit = tls if listener.implicit_tls else None

    def factory() -> MailqueueSMTP:
        return MailqueueSMTP(handler, gate, listener, authenticator,
                             tls_context=None if implicit else tls,
                             data_size_limit=config.max_message_size,
                             enable_SMTPUTF8=False, decode_data=False,
                             hostname=config.hostname, ident=IDENT,
                             timeout=config.timeout, loop=loop)

    return await loop.create_server(factory, host=listener.host, port=listener.port,
                                    reuse_address=True, ssl=implicit)
