"""One LMTP or SMTP client connection, carrying transactions one after another (blocking).

Written over sockets (and :mod:`ssl` for STARTTLS) because :mod:`smtplib`'s LMTP reads one
reply after the final dot, where an LMTP server sends one per accepted recipient (RFC 2033
§4.2): a client that reads only the first cannot tell which recipients were delivered.

A session opens with the greeting, ``LHLO`` (LMTP) or ``EHLO`` (SMTP, ``HELO`` where EHLO
is refused), ``STARTTLS`` as the settings ask, and ``AUTH PLAIN`` or ``LOGIN`` (only over
TLS). A transaction is ``MAIL FROM``, one ``RCPT TO`` per recipient, ``DATA``, the message
and its replies; a transaction on a connection used before starts with ``RSET``. Where the
server offers ``PIPELINING`` (RFC 2920) the commands up to ``DATA`` go in one write and the
replies are read in order, so a message costs two round trips.

Every wait has the timeout its step is given (:class:`~mailqueue.config.RemoteTimeouts`),
and none lasts past the ``deadline`` a transaction is given (the claim's lease).

Each recipient's outcome is handed to a callback the moment it is known: a refused
``RCPT`` at once, an LMTP recipient as its reply after the dot arrives. What the session
cannot finish (a timeout, a dropped connection, ``421``) raises :class:`SessionError`; the
recipients not decided by then are the caller's to retry.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import re
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from mailqueue.endpoint import Endpoint
from mailqueue.errors import PermanentDeliveryError, RemoteReply, TemporaryDeliveryError
from mailqueue.mailbox.base import DeliveryOutcome

_MAX_LINE = 8192  # RFC 5321 allows 512 octets per reply line; be lenient, not unbounded
_MAX_LINES = 256
_BLOCK = 64 * 1024  # bytes of message per send, each with the data_block timeout
_LINE_ENDS = re.compile(rb"\r\n|\r|\n")
_EHLO_REFUSED = (500, 501, 502, 504, 550)

Kind = Literal["lmtp", "smtp"]
TlsMode = Literal["off", "opportunistic", "required"]
# Called with (recipient index in the transaction, outcome) as each outcome is known.
OnResult = Callable[[int, DeliveryOutcome], None]


@dataclasses.dataclass(frozen=True)
class Timeouts:
    """Seconds per step (see :class:`mailqueue.config.RemoteTimeouts`)."""

    connect: float = 30.0
    greeting: float = 60.0
    mail: float = 60.0
    rcpt: float = 60.0
    data_init: float = 60.0
    data_block: float = 60.0
    data_done: float = 120.0
    idle: float = 10.0


@dataclasses.dataclass(frozen=True)
class Settings:
    """How a store's sessions talk to its servers."""

    kind: Kind
    helo: str
    timeouts: Timeouts = Timeouts()
    tls: TlsMode = "off"
    tls_verify: bool = True
    tls_ca_file: Path | None = None
    auth_user: str | None = dataclasses.field(default=None)
    auth_password: str | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass(frozen=True)
class Envelope:
    """One transaction: a message for some recipients on one server."""

    mail_from: str
    recipients: Sequence[str]
    data: bytes  # ready for the wire: CRLF line ends, dot-stuffed, ending with ".\r\n"
    size: int  # the message's size before stuffing (the SIZE parameter)
    eightbit: bool
    utf8: bool  # an address is not ASCII: needs SMTPUTF8


def wire_data(message: bytes) -> tuple[bytes, int]:
    """``message`` as DATA sends it, and its size: CRLF line ends (a bare CR or LF is made
    one), a final line end, leading dots doubled (RFC 5321 §4.5.2), then ``.\\r\\n``."""
    crlf = message.count(b"\r\n")
    if message.count(b"\n") != crlf or message.count(b"\r") != crlf:
        message = _LINE_ENDS.sub(b"\r\n", message)
    if message and not message.endswith(b"\r\n"):
        message += b"\r\n"
    size = len(message)
    if message.startswith(b"."):
        message = b"." + message
    return message.replace(b"\r\n.", b"\r\n..") + b".\r\n", size


class SessionError(Exception):
    """The session cannot go on (refused, dropped, timed out, ``421``, TLS, a protocol
    error). ``remote``: the reply that ended it, if one did; ``stale``: a connection used
    before was found closed before this transaction got anywhere, so it may be tried again
    at once on a new one."""

    def __init__(self, reason: str, *, remote: RemoteReply | None = None,
                 stale: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.remote = remote
        self.stale = stale


class _TlsFailed(SessionError):
    """The TLS handshake failed (opportunistic TLS then tries again without it)."""


@dataclasses.dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(line for line in self.lines if line)

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300


class Session:
    """An open connection to one server, after greeting, hello, TLS and AUTH."""

    def __init__(self, endpoint: Endpoint, settings: Settings, sock: socket.socket) -> None:
        self.endpoint = endpoint
        self.settings = settings
        self._sock: socket.socket = sock
        self._buffer = bytearray()
        self._deadline: float | None = None
        self.extensions: dict[str, str] = {}
        self.mta = endpoint.host or "localhost"  # the greeting's name, for a unix socket
        self.tls = False
        self.used = False  # a transaction ran: the next begins with RSET
        self.closed = False

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, endpoint: Endpoint, settings: Settings,
             deadline: float | None = None) -> Session:
        """Connect, read the greeting, say hello, start TLS and log in as ``settings`` ask.
        Raises :class:`SessionError`."""
        try:
            return cls._open(endpoint, settings, deadline, settings.tls)
        except _TlsFailed:
            if settings.tls != "opportunistic":
                raise
            # As an opportunistic client does: the same server again, without TLS.
            return cls._open(endpoint, settings, deadline, "off")

    @classmethod
    def _open(cls, endpoint: Endpoint, settings: Settings, deadline: float | None,
              tls: TlsMode) -> Session:
        session = cls(endpoint, settings, _connect(endpoint, settings.timeouts.connect,
                                                   deadline))
        session._deadline = deadline
        try:
            session._start(tls)
        except BaseException:
            session.close(quit=False)
            raise
        return session

    def _start(self, tls: TlsMode) -> None:
        greeting = self._read("the greeting", self.settings.timeouts.greeting)
        if greeting.code != 220:
            raise self._refused(greeting, "greeting")
        if self.endpoint.is_unix and greeting.lines and greeting.lines[0]:
            self.mta = greeting.lines[0].split()[0]
        self._hello()
        if tls != "off":
            self._starttls(tls)
        if self.settings.auth_user is not None:
            self._auth()

    def _hello(self) -> None:
        verb = "LHLO" if self.settings.kind == "lmtp" else "EHLO"
        reply = self._command(f"{verb} {self.settings.helo}", self.settings.timeouts.greeting)
        if verb == "EHLO" and reply.code in _EHLO_REFUSED:
            reply = self._command(f"HELO {self.settings.helo}",
                                  self.settings.timeouts.greeting)
            verb = "HELO"
        if not reply.ok:
            raise self._refused(reply, verb)
        self.extensions = {}
        for line in reply.lines[1:] if verb != "HELO" else ():
            keyword, _, params = line.partition(" ")
            self.extensions[keyword.upper()] = params.strip()

    def _starttls(self, tls: TlsMode) -> None:
        if "STARTTLS" not in self.extensions:
            if tls == "required":
                raise SessionError(f"{self._where()} does not offer STARTTLS, and "
                                   "starttls = \"required\"")
            return
        reply = self._command("STARTTLS", self.settings.timeouts.greeting)
        if reply.code != 220:
            if tls == "required":
                raise self._refused(reply, "STARTTLS")
            return  # opportunistic: carry on in the clear
        context = _tls_context(self.settings, verify=tls == "required")
        if not self.endpoint.host:
            context.check_hostname = False  # a unix socket has no name to check
        self._set_timeout(self.settings.timeouts.connect, "the TLS handshake")
        try:
            self._sock = context.wrap_socket(
                self._sock, server_hostname=self.endpoint.host or None)
        except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
            raise _TlsFailed(f"{self._where()}: TLS handshake failed: {exc}") from exc
        self._buffer.clear()  # nothing sent before the handshake counts after it
        self.tls = True
        self._hello()

    def _auth(self) -> None:
        user, password = self.settings.auth_user or "", self.settings.auth_password or ""
        if not self.tls:
            raise SessionError(f"{self._where()} did not start TLS; credentials are only "
                               "sent over TLS")
        mechanisms = self.extensions.get("AUTH", "").upper().split()
        timeout = self.settings.timeouts.greeting
        if "PLAIN" in mechanisms:
            token = _b64(f"\0{user}\0{password}")
            reply = self._command(f"AUTH PLAIN {token}", timeout, shown="AUTH PLAIN")
        elif "LOGIN" in mechanisms:
            reply = self._command("AUTH LOGIN", timeout)
            if reply.code == 334:
                reply = self._command(_b64(user), timeout, shown="AUTH LOGIN")
            if reply.code == 334:
                reply = self._command(_b64(password), timeout, shown="AUTH LOGIN")
        else:
            offered = " ".join(mechanisms) or "no AUTH"
            raise SessionError(f"{self._where()} offers {offered}; mailqueue logs in with "
                               "AUTH PLAIN or LOGIN")
        if reply.code != 235:
            raise self._refused(reply, "AUTH")

    # --- a transaction ---------------------------------------------------------------------

    def transaction(self, envelope: Envelope, on_result: OnResult,
                    deadline: float | None = None) -> None:
        """Deliver ``envelope``; ``on_result(i, outcome)`` once for each recipient whose
        outcome the session learns. Raises :class:`SessionError` when the connection cannot
        go on; recipients not reported by then have no outcome."""
        self._deadline = deadline
        refused = self._cannot_carry(envelope)
        if refused is not None:
            for index in range(len(envelope.recipients)):
                on_result(index, refused)
            return
        reset, self.used = self.used, True
        if "PIPELINING" in self.extensions:
            accepted = self._pipelined(envelope, on_result, reset)
        else:
            accepted = self._one_by_one(envelope, on_result, reset)
        if accepted:
            self._send_data(envelope, accepted, on_result)

    def _cannot_carry(self, envelope: Envelope) -> DeliveryOutcome:
        """Why this server can never take ``envelope`` (a bounce), or None."""
        if envelope.utf8 and "SMTPUTF8" not in self.extensions:
            return PermanentDeliveryError(f"{self._where()} does not offer SMTPUTF8, which "
                                          "an address of this message needs (5.6.7)")
        limit = self.extensions.get("SIZE", "")
        if limit.isdigit() and 0 < int(limit) < envelope.size:
            return PermanentDeliveryError(f"{self._where()} takes messages up to {limit} "
                                          f"bytes; this one has {envelope.size} (5.3.4)")
        return None

    def _mail_command(self, envelope: Envelope) -> str:
        params = []
        if envelope.eightbit and "8BITMIME" in self.extensions:
            params.append("BODY=8BITMIME")
        if "SIZE" in self.extensions:
            params.append(f"SIZE={envelope.size}")
        if envelope.utf8:
            params.append("SMTPUTF8")
        return " ".join([f"MAIL FROM:<{envelope.mail_from}>", *params])

    def _pipelined(self, envelope: Envelope, on_result: OnResult,
                   reset: bool) -> list[int]:
        timeouts = self.settings.timeouts
        commands = ["RSET"] if reset else []
        commands += [self._mail_command(envelope),
                     *(f"RCPT TO:<{r}>" for r in envelope.recipients), "DATA"]
        self._send_first(("\r\n".join(commands) + "\r\n").encode("utf-8", "surrogateescape"),
                         timeouts.mail, "MAIL FROM", reset)
        if reset:
            self._reset_reply()
        mail = self._read("MAIL FROM", timeouts.mail)
        accepted = []
        for index in range(len(envelope.recipients)):
            rcpt = self._read("RCPT TO", timeouts.rcpt)
            reply, command = (rcpt, "RCPT TO") if mail.ok else (mail, "MAIL FROM")
            if reply.ok:
                accepted.append(index)
            else:
                on_result(index, self._outcome(reply, command))
        data = self._read("DATA", timeouts.data_init)
        return self._data_reply(data, accepted, on_result)

    def _one_by_one(self, envelope: Envelope, on_result: OnResult, reset: bool) -> list[int]:
        timeouts = self.settings.timeouts
        if reset:
            self._send_first(b"RSET\r\n", timeouts.greeting, "RSET", reset)
            self._reset_reply()
        mail = self._command(self._mail_command(envelope), timeouts.mail, shown="MAIL FROM")
        if not mail.ok:
            for index in range(len(envelope.recipients)):
                on_result(index, self._outcome(mail, "MAIL FROM"))
            return []
        accepted = []
        for index, address in enumerate(envelope.recipients):
            rcpt = self._command(f"RCPT TO:<{address}>", timeouts.rcpt, shown="RCPT TO")
            if rcpt.ok:
                accepted.append(index)
            else:
                on_result(index, self._outcome(rcpt, "RCPT TO"))
        if not accepted:
            return []
        data = self._command("DATA", timeouts.data_init)
        return self._data_reply(data, accepted, on_result)

    def _send_first(self, data: bytes, timeout: float, what: str, reset: bool) -> None:
        """The transaction's first write: on a connection used before, a failure here means
        the server closed it meanwhile (stale)."""
        try:
            self._send(data, timeout, what)
        except SessionError as exc:
            raise SessionError(exc.reason, stale=reset) from exc

    def _reset_reply(self) -> None:
        """The reply to ``RSET`` on a connection used before: a closed or closing
        connection here is stale, and the transaction may start again on a new one."""
        try:
            reply = self._read("RSET", self.settings.timeouts.greeting)
        except SessionError as exc:
            raise SessionError(exc.reason, remote=exc.remote, stale=True) from exc
        if not reply.ok:
            self.closed = True
            raise SessionError(f"{self._where()} refused RSET: {reply.code} {reply.text}",
                               stale=reply.code == 421)

    def _data_reply(self, data: Reply, accepted: list[int],
                    on_result: OnResult) -> list[int]:
        """The recipients the message goes to now that ``DATA`` was answered ``data``."""
        if data.code == 354 and accepted:
            return accepted
        if data.code == 354:
            # A pipelining server that took DATA with no recipient (RFC 2920 says it must
            # not): the data cannot be left unsent, and there is nothing to send.
            self.closed = True
            raise SessionError(f"{self._where()} answered 354 to DATA with no recipient")
        for index in accepted:
            on_result(index, self._outcome(data, "DATA"))
        if data.code == 421:
            self.closed = True
        return []

    def _send_data(self, envelope: Envelope, accepted: list[int],
                   on_result: OnResult) -> None:
        timeouts = self.settings.timeouts
        view = memoryview(envelope.data)
        for start in range(0, len(view), _BLOCK):
            self._send(view[start:start + _BLOCK], timeouts.data_block, "the message data")
        if self.settings.kind == "lmtp":
            # RFC 2033 §4.2: one reply per accepted recipient, in RCPT order.
            for index in accepted:
                reply = self._read("end of data", timeouts.data_done, after_data=True)
                on_result(index, self._outcome(reply, "end of data"))
            return
        reply = self._read("end of data", timeouts.data_done, after_data=True)
        for index in accepted:
            on_result(index, self._outcome(reply, "end of data"))

    # --- replies and outcomes --------------------------------------------------------------

    def _outcome(self, reply: Reply, command: str) -> DeliveryOutcome:
        if reply.ok:
            return None
        if reply.code == 421:
            self.closed = True
        remote = self._remote(reply, command)
        reason = remote.describe(self.settings.kind)
        if 500 <= reply.code <= 599:
            return PermanentDeliveryError(reason, remote=remote)
        return TemporaryDeliveryError(reason, remote=remote)

    def _remote(self, reply: Reply, command: str) -> RemoteReply:
        return RemoteReply(mta=self.mta, endpoint=str(self.endpoint), code=reply.code,
                           text=reply.text, command=command)

    def _refused(self, reply: Reply, command: str) -> SessionError:
        """The server would not let the session start (every such refusal is temporary:
        it is about the server, not a recipient)."""
        self.closed = True
        remote = self._remote(reply, command)
        return SessionError(remote.describe(self.settings.kind), remote=remote)

    def _where(self) -> str:
        return f"{self.settings.kind} {self.endpoint}"

    def _command(self, line: str, timeout: float, shown: str | None = None) -> Reply:
        what = shown or line.split(" ", 1)[0]
        self._send(line.encode("utf-8", "surrogateescape") + b"\r\n", timeout, what)
        return self._read(what, timeout)

    # --- the socket ------------------------------------------------------------------------

    def _set_timeout(self, seconds: float, waiting_for: str) -> bool:
        """Set the socket's timeout to ``seconds``, or to what is left before the deadline
        when that is less (then True); raise :class:`SessionError` if nothing is."""
        clipped = False
        if self._deadline is not None:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise self._lease_ran_out(waiting_for)
            clipped, seconds = left < seconds, min(seconds, left)
        self._sock.settimeout(seconds)
        return clipped

    def _lease_ran_out(self, waiting_for: str) -> SessionError:
        self.closed = True
        return SessionError(f"{self._where()}: the claim's lease ran out waiting for "
                            f"{waiting_for}")

    def _send(self, data: bytes | memoryview, timeout: float, what: str) -> None:
        clipped = self._set_timeout(timeout, f"{what} to be sent")
        try:
            self._sock.sendall(data)
        except TimeoutError:
            self.closed = True
            if clipped:
                raise self._lease_ran_out(f"{what} to be sent") from None
            raise SessionError(f"{self._where()}: timed out sending {what}") from None
        except OSError as exc:
            self.closed = True
            raise SessionError(f"{self._where()}: connection lost sending {what}: "
                               f"{_os_reason(exc)}") from None

    def _read(self, what: str, timeout: float, after_data: bool = False) -> Reply:
        """One reply (all of its lines), waiting at most ``timeout`` for it in all."""
        end = time.monotonic() + timeout
        code: int | None = None
        lines: list[str] = []
        while True:
            raw = self._line(what, end, after_data)
            if len(raw) < 3 or not raw[:3].isdigit() or raw[3:4] not in (b"", b" ", b"-") \
                    or (code is not None and int(raw[:3]) != code) or len(lines) >= _MAX_LINES:
                self.closed = True
                raise SessionError(f"{self._where()}: not an SMTP reply to {what}: "
                                   f"{raw[:80]!r}")
            code = int(raw[:3])
            lines.append(raw[4:].decode("utf-8", "replace").strip())
            if raw[3:4] != b"-":
                return Reply(code, tuple(lines))

    def _line(self, what: str, end: float, after_data: bool) -> bytes:
        while True:
            found = self._buffer.find(b"\n")
            if found >= 0:
                line = bytes(self._buffer[:found]).rstrip(b"\r")
                del self._buffer[:found + 1]
                return line
            if len(self._buffer) > _MAX_LINE:
                self.closed = True
                raise SessionError(f"{self._where()}: reply line too long after {what}")
            clipped = False
            try:
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                clipped = self._set_timeout(left, f"the reply to {what}")
                chunk = self._sock.recv(65536)
            except TimeoutError:
                self.closed = True
                maybe = _MAYBE if after_data else ""
                if clipped:
                    raise self._lease_ran_out(f"the reply to {what}{maybe}") from None
                raise SessionError(f"{self._where()}: timed out waiting for the reply to "
                                   f"{what}{maybe}") from None
            except OSError as exc:
                self.closed = True
                raise SessionError(f"{self._where()}: connection lost waiting for the reply "
                                   f"to {what}: {_os_reason(exc)}"
                                   f"{_MAYBE if after_data else ''}") from None
            if not chunk:
                self.closed = True
                raise SessionError(f"{self._where()}: connection closed by the server before "
                                   f"the reply to {what}{_MAYBE if after_data else ''}")
            self._buffer += chunk

    def close(self, quit: bool = True) -> None:
        """Say ``QUIT`` (briefly, if the connection is still good) and close."""
        if quit and not self.closed:
            with contextlib.suppress(OSError):
                self._sock.settimeout(min(1.0, self.settings.timeouts.greeting))
                self._sock.sendall(b"QUIT\r\n")
                self._sock.recv(1024)
        self.closed = True
        with contextlib.suppress(OSError):
            self._sock.close()


_MAYBE = " (the server may have the message: it is sent again at the retry)"


def _connect(endpoint: Endpoint, timeout: float, deadline: float | None) -> socket.socket:
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise SessionError(f"{endpoint}: the claim's lease ran out before connecting")
        timeout = min(timeout, left)
    try:
        if endpoint.is_unix:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(endpoint.path)
            except BaseException:
                sock.close()
                raise
            return sock
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    except TimeoutError:
        raise SessionError(f"connect to {endpoint}: timed out") from None
    except socket.gaierror as exc:
        raise SessionError(f"connect to {endpoint}: cannot resolve {endpoint.host}: "
                           f"{exc.strerror}") from None
    except OSError as exc:
        raise SessionError(f"connect to {endpoint}: {_os_reason(exc)}") from None


def _tls_context(settings: Settings, verify: bool) -> ssl.SSLContext:
    if verify and settings.tls_verify:
        context = ssl.create_default_context(
            cafile=str(settings.tls_ca_file) if settings.tls_ca_file else None)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
