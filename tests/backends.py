"""Scripted mailbox servers for the tests: aiosmtpd speaking LMTP or SMTP on a free port,
answering as a test tells it (4xx, 5xx, slow, dropping the connection).

API::

    backend = Backend(kind="lmtp", root=tmp_path / "backend")
    with backend:                        # a thread of its own (aiosmtpd's Controller)
        backend.host                     # "127.0.0.1:PORT": a store's hosts entry
        backend.root                     # Maildirs it writes, {root}/{domain}/{local}/
        backend.script.mail = "451 4.3.0 busy"        # every MAIL FROM gets this
        backend.script.rcpt["x@a.example"] = "550 5.1.1 <x@a.example> unknown"
        backend.script.data["x@a.example"] = "452 4.2.2 over quota"  # after the dot
        backend.script.drop_after_data = True    # take the message, then hang up
        backend.script.delay = 2.0               # seconds before the reply to the dot
        backend.script.busy = 1                  # the next connection: 421 at once
        backend.transactions             # (MAIL FROM, [RCPT TO...], data) it took
        backend.connections, backend.resets, backend.logins

- A message the server accepts for a recipient is written to that recipient's Maildir as
  a delivery agent writes it: ``Return-Path``, ``Delivered-To`` when the transaction has
  one recipient (as Dovecot does), then the data.
- LMTP answers the dot once per accepted recipient (RFC 2033), each as ``script.data``
  says (``250`` by default); SMTP once for all (the first recipient's scripted answer).
- ``pipelining=True`` advertises PIPELINING (aiosmtpd reads pipelined commands anyway).
- ``tls=(certfile, keyfile)`` offers STARTTLS; ``require_tls`` refuses mail before it;
  ``users={name: password}`` offers AUTH PLAIN and LOGIN (after TLS) and requires it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailqueue.loadtest import free_port
from mailqueue.mailbox.maildir import ensure_maildir, mailbox_path

_names = itertools.count()


@dataclasses.dataclass
class Script:
    """What the server answers; a test changes it at any time."""

    mail: str | None = None  # the reply to every MAIL FROM (None: 250)
    rcpt: dict[str, str] = dataclasses.field(default_factory=dict)  # address -> reply
    data: dict[str, str] = dataclasses.field(default_factory=dict)  # address -> reply
    drop_after_data: bool = False
    delay: float = 0.0
    busy: int = 0  # this many new connections get "421 4.7.0 Too busy" and are closed


class _Handler:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.backend.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.backend.resets += 1
        return "250 OK"

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        refused = self.backend.script.mail
        if refused is not None:
            return refused
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        refused = self.backend.script.rcpt.get(address.lower())
        if refused is not None:
            return refused
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        script = self.backend.script
        data = envelope.original_content or b""
        replies = [script.data.get(r.lower(), "250 2.0.0 Saved") for r in envelope.rcpt_tos]
        if self.backend.kind != "lmtp":  # SMTP: the one reply is the first recipient's
            replies = [replies[0]] * len(replies)
        self.backend.took(envelope.mail_from or "", list(envelope.rcpt_tos), data,
                          [r for r, reply in zip(envelope.rcpt_tos, replies, strict=True)
                           if reply.startswith("2")])
        if script.delay:
            await asyncio.sleep(script.delay)
        if script.drop_after_data:
            assert server.transport is not None
            server.transport.abort()
            return "250 OK"
        if self.backend.kind == "lmtp":
            return "\r\n".join(replies)
        return replies[0]


class _Counting:
    """Counts the connections a server class is made for."""

    backend: Backend

    def connection_made(self, transport: Any) -> None:
        self.backend.connections += 1
        if self.backend.script.busy > 0:
            self.backend.script.busy -= 1
            transport.write(b"421 4.7.0 Too busy, try again later\r\n")
            transport.close()
            return
        super().connection_made(transport)  # type: ignore[misc]


class Backend:
    """One scripted server (see the module)."""

    def __init__(self, kind: str = "lmtp", root: Path | None = None, *,
                 pipelining: bool = False, tls: tuple[Path, Path] | None = None,
                 require_tls: bool = False, users: dict[str, str] | None = None,
                 port: int | None = None) -> None:
        self.kind = kind
        self.root = root
        self.pipelining = pipelining
        self.script = Script()
        self.transactions: list[tuple[str, list[str], bytes]] = []
        self.connections = 0
        self.resets = 0
        self.logins: list[str] = []
        self.port = port or free_port()
        self._lock = threading.Lock()
        tls_context = None
        if tls is not None:
            tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls_context.load_cert_chain(str(tls[0]), str(tls[1]))
        base = LMTP if kind == "lmtp" else SMTP
        server_class = type("ScriptedServer", (_Counting, base), {"backend": self})
        kwargs: dict[str, Any] = {"tls_context": tls_context, "require_starttls": require_tls}
        if users is not None:
            kwargs.update(authenticator=self._authenticator(users), auth_required=True,
                          auth_require_tls=True)
        self._controller = _Controller(server_class, _Handler(self), hostname="127.0.0.1",
                                       port=self.port, server_hostname="backend.test",
                                       ready_timeout=10, **kwargs)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _authenticator(self, users: dict[str, str]) -> Any:
        def check(server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                  data: Any) -> AuthResult:
            if isinstance(data, LoginPassword):
                name, password = data.login.decode(), data.password.decode()
                if users.get(name) == password:
                    self.logins.append(f"{mechanism} {name}")
                    return AuthResult(success=True)
            return AuthResult(success=False, handled=False)
        return check

    def took(self, mail_from: str, rcpts: list[str], data: bytes, accepted: list[str]) -> None:
        """Record a transaction; write the message to each accepted recipient's Maildir."""
        with self._lock:
            self.transactions.append((mail_from, rcpts, data))
        if self.root is None:
            return
        body = data.replace(b"\r\n", b"\n")
        for rcpt in accepted:
            head = f"Return-Path: <{mail_from}>\n"
            if len(rcpts) == 1:
                head += f"Delivered-To: {rcpt}\n"
            box = mailbox_path(self.root, rcpt)
            ensure_maildir(box)
            name = f"{time.time():.0f}.M{next(_names)}P{os.getpid()}.backend"
            (box / "tmp" / name).write_bytes(head.encode() + body)
            (box / "tmp" / name).rename(box / "new" / name)

    def delivered(self, address: str) -> list[bytes]:
        """The data of each transaction that carried ``address`` and was accepted."""
        return [data for _, rcpts, data in self.transactions
                if address.lower() in (r.lower() for r in rcpts)]

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> Backend:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Controller(Controller):
    """aiosmtpd's threaded controller, serving ``server_class`` (LMTP or SMTP)."""

    def __init__(self, server_class: type[SMTP], handler: Any, **kwargs: Any) -> None:
        self._server_class = server_class
        super().__init__(handler, **kwargs)

    def factory(self) -> SMTP:
        return self._server_class(self.handler, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        # The readiness probe's connection is not one of the test's: take it back.
        super()._trigger_server()  # type: ignore[no-untyped-call]
        self._server_class.backend.connections -= 1  # type: ignore[attr-defined]


def self_signed(directory: Path, name: str = "backend.test") -> tuple[Path, Path]:
    """A certificate for ``name`` (and 127.0.0.1) and its key, made with ``openssl`` (the
    test is skipped, saying so, where it is not installed)."""
    import shutil
    import subprocess

    import pytest

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (apt-get install openssl)")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={name}", "-addext",
                    f"subjectAltName=DNS:{name},IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key
