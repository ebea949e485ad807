"""Mailbox access for the test harness: IMAP and POP3 logins through a private Dovecot.

``imap(address)`` and ``pop3(address)`` on a harness log a user in as a mail client would.
The first call starts, for that harness, the admin endpoint (the app's own when its config
has ``[admin]``, else one the app builds on a free loopback port) and one Dovecot written by
``mailqueue dovecot config`` for the harness's stores
(:class:`~mailqueue.testing.dovecot.AccessDovecot`); both stop with the harness, and so do
the clients. Dovecot checks the password, then asks the admin endpoint, which answers from
the app's control plane: the harness refreshes it on every window and node change, and
reads it on its manual clock, so what a test just did decides the very next login.

A login that does not succeed raises::

    MailboxAccessError        address, protocol ("imap", "pop3") and the server's reply
    ├── MailboxClosed         mailqueue refused it: the mailbox's store is in a maintenance
    │                         window (kind "maintenance") or its node is down ("node-down");
    │                         the message is the reason the client shows
    └── MailboxAuthFailed     a wrong password, or a user the users file does not have

Each client connects from a loopback address of its own (``127.1.x.y``, where the system
routes all of ``127/8`` to loopback, as Linux does): Dovecot delays the logins from an
address after a failed one, by 2 seconds up to 15, and a test refused during a window would
otherwise wait that long to log in after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import imaplib
import itertools
import os
import poplib
import socket
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mailqueue.access import Closed
from mailqueue.config import AdminConfig, Config
from mailqueue.control.windows import Window
from mailqueue.errors import ConfigError
from mailqueue.mailbox.router import Route, Router

if TYPE_CHECKING:
    from mailqueue.admin_http import AdminServer
    from mailqueue.app import MailqueueApp
    from mailqueue.testing.dovecot import AccessDovecot

HOST = "127.0.0.1"
CLIENT_TIMEOUT = 30.0  # seconds a client waits for each reply
CLOSE_TIMEOUT = 2.0  # ... and for the reply to its LOGOUT at teardown
ADMIN_TIMEOUT = 10.0
ANY_PASSWORD = "password"  # sent when Dovecot lets any password in
_AUTH_FAILED = "Authentication failed."  # Dovecot's text for a password it refused
# How Closed.reason() begins, for each kind of refusal.
_KINDS = {"Mailbox maintenance:": "maintenance", "Mailbox unavailable:": "node-down"}
_sources = itertools.count()


class MailboxAccessError(Exception):
    """A login to a mailbox did not succeed; ``reply`` is what the server answered."""

    def __init__(self, message: str, *, address: str, protocol: str, reply: str) -> None:
        super().__init__(message)
        self.address = address
        self.protocol = protocol
        self.reply = reply


class MailboxClosed(MailboxAccessError):
    """mailqueue refused the login: the mailbox's ``store`` is inside a maintenance
    ``window`` (``kind`` ``"maintenance"``) or its ``node`` is down (``"node-down"``).
    The message, also ``reason``, is the text the mail client shows its user."""

    def __init__(self, reason: str, *, address: str, protocol: str, reply: str, kind: str,
                 store: str, window: Window | None = None, node: str | None = None) -> None:
        super().__init__(reason, address=address, protocol=protocol, reply=reply)
        self.reason = reason
        self.kind = kind
        self.store = store
        self.window = window
        self.node = node


class MailboxAuthFailed(MailboxAccessError):
    """Dovecot refused the password (or does not know the user): an authentication
    failure, inside a window or not."""


def require_access() -> None:
    """Return when Dovecot's IMAP and POP3 are installed; else skip the pytest test that
    is running, or, outside one, raise :class:`~mailqueue.testing.dovecot.DovecotMissing`."""
    from mailqueue.testing.dovecot import (
        ACCESS_HINT,
        DovecotMissing,
        access_binary,
        require_dovecot_access,
    )

    if access_binary() is not None:
        return
    if os.environ.get("PYTEST_CURRENT_TEST"):
        require_dovecot_access()
    raise DovecotMissing(f"Dovecot with IMAP and POP3 is not installed ({ACCESS_HINT})")


class MailboxAccess:
    """One harness's admin endpoint, Dovecot and clients (see the module)."""

    def __init__(self, app: MailqueueApp, config: Config,
                 closed: Callable[[str, str], Closed | None],
                 passwords: Mapping[str, str] | None = None) -> None:
        self._app = app
        self._config = config
        self._closed = closed  # the harness's own view of the decision, for the details
        self._router = Router(config.stores)
        self.passwords = None if passwords is None else \
            {address.lower(): password for address, password in passwords.items()}
        self.dovecot: AccessDovecot | None = None
        self._lock = asyncio.Lock()
        self._admin: AdminServer | None = None  # ours, when the app has none
        self._admin_task: asyncio.Task[None] | None = None
        self._imap: list[imaplib.IMAP4] = []
        self._pop3: list[poplib.POP3] = []

    # --- logins --------------------------------------------------------------------------

    async def imap(self, address: str, password: str | None = None) -> imaplib.IMAP4:
        """An IMAP client logged in as ``address`` (see the module for what it raises)."""
        store, secret = self._credentials(address, password)
        dovecot = await self.start()
        try:
            client = await asyncio.to_thread(imap_login, dovecot.imap_port, address, secret)
        except imaplib.IMAP4.error as exc:
            raise self._refused("imap", address, store, exc) from None
        self._imap.append(client)
        return client

    async def pop3(self, address: str, password: str | None = None) -> poplib.POP3:
        """A POP3 client logged in as ``address`` (see the module for what it raises)."""
        store, secret = self._credentials(address, password)
        dovecot = await self.start()
        try:
            client = await asyncio.to_thread(pop3_login, dovecot.pop3_port, address, secret)
        except poplib.error_proto as exc:
            raise self._refused("pop3", address, store, exc) from None
        self._pop3.append(client)
        return client

    def _credentials(self, address: str, password: str | None) -> tuple[str, str]:
        """(store, password) for a login as ``address``; ValueError saying what is wrong
        with the call."""
        route = self._router.route(address)
        if not isinstance(route, Route):
            raise ValueError(f"{address!r}: no mailbox for it ({route})")
        if self._config.store(route.store).mailbox_root is None:
            raise ValueError(f"{address!r}: store {route.store!r} delivers to remote servers "
                             "and has no verify_path for Dovecot to serve its Maildirs from")
        if password is not None:
            return route.store, password
        if self.passwords is not None:
            known = self.passwords.get(address.lower())
            if known is None:
                raise ValueError(f"{address!r} has no password in passwords: give "
                                 "password=, or add it to the passwords option")
            return route.store, known
        users = self._config.smtp.users_file
        if users is not None:
            raise ValueError(f"logins are checked against {users}: give password=")
        return route.store, ANY_PASSWORD

    def _refused(self, protocol: str, address: str, store: str,
                 exc: Exception) -> MailboxAccessError:
        route = self._router.route(address)
        closed = self._closed(store, route.address) if isinstance(route, Route) else None
        return refusal(protocol, address, store, reply_text(exc), closed)

    # --- life ----------------------------------------------------------------------------

    async def start(self) -> AccessDovecot:
        """The running Dovecot, started (with the admin endpoint) on first use."""
        async with self._lock:
            if self.dovecot is None:
                port = await self._admin_port()
                self.dovecot = await asyncio.to_thread(self._start_dovecot, port)
            return self.dovecot

    async def _admin_port(self) -> int:
        admin = self._app.admin
        if admin is None:  # the config has no [admin]: one of ours, built as the app would
            if self._admin is None:
                self._admin = self._app.admin_server(AdminConfig(host=HOST, port=0))
                self._admin_task = asyncio.create_task(self._admin.run(), name="admin")
            admin = self._admin
            assert self._admin_task is not None
            await _started(admin, self._admin_task)
        assert admin.port is not None  # the app's own is up once the app is ready
        return admin.port

    def _admin_config(self, port: int) -> AdminConfig:
        """Where Dovecot asks: the app's ``[admin]`` (its host and token), or ours."""
        admin = self._config.admin
        if self._app.admin is None or admin is None:
            admin = AdminConfig(host=HOST)
        return admin.model_copy(update={"port": port})

    def _start_dovecot(self, admin_port: int) -> AccessDovecot:
        """Write the users file (for ``passwords``) and start Dovecot (blocking)."""
        from mailqueue.smtp.users import hasher, write_users
        from mailqueue.testing.dovecot import AccessDovecot

        config = self._config.model_copy(update={"admin": self._admin_config(admin_port)})
        check_reachable(config)
        dovecot = AccessDovecot(config, users_file=self._config.smtp.users_file)
        try:
            if self.passwords is not None:
                dovecot.users_file = dovecot.root / "users"
                write_users(dovecot.users_file, {address: hasher().hash(password) for
                                                 address, password in self.passwords.items()})
            dovecot.start()
        except BaseException:
            dovecot.stop()
            raise
        return dovecot

    async def stop(self, timeout: float) -> None:
        """Close the clients (IMAP ones log out; POP3 ones disconnect without ``QUIT``, so
        nothing the test did not commit is deleted), stop Dovecot, then the admin endpoint
        if it is ours."""
        imap, self._imap = self._imap, []
        pop3, self._pop3 = self._pop3, []
        dovecot, self.dovecot = self.dovecot, None
        try:
            await asyncio.to_thread(_close_all, imap, pop3)
            if dovecot is not None:
                await asyncio.to_thread(dovecot.stop, timeout)
        finally:
            task, self._admin_task = self._admin_task, None
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(task, timeout)


async def _started(admin: AdminServer, task: asyncio.Task[None]) -> None:
    """Wait until ``admin`` listens; raise what went wrong if its task ended first."""
    ready = asyncio.create_task(admin.started.wait())
    await asyncio.wait([task, ready], timeout=ADMIN_TIMEOUT,
                       return_when=asyncio.FIRST_COMPLETED)
    if ready.done():
        return
    ready.cancel()
    if task.done():
        task.result()
    task.cancel()
    raise TimeoutError(f"the admin endpoint did not start within {ADMIN_TIMEOUT}s")


# --- what the server answered ----------------------------------------------------------------

def reply_text(exc: Exception) -> str:
    """The server's reply carried by an imaplib or poplib error, as text, without POP3's
    ``-ERR``: ``[ALERT] Mailbox maintenance: ...``."""
    raw = exc.args[0] if exc.args else ""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return text.removeprefix("-ERR").strip()


def refusal(protocol: str, address: str, store: str, reply: str,
            closed: Closed | None = None) -> MailboxAccessError:
    """The exception for a refused login: ``reply`` as :func:`reply_text` gives it;
    ``closed``, the harness's decision, fills in the window or node it names."""
    code, text = _response_code(reply)
    if code == "AUTHENTICATIONFAILED" or text == _AUTH_FAILED:
        return MailboxAuthFailed(f"{protocol.upper()} login as {address}: {text}",
                                 address=address, protocol=protocol, reply=reply)
    if code not in ("ALERT", "AUTH"):  # e.g. mailqueue could not be asked: fail closed
        return MailboxAccessError(f"{protocol.upper()} login as {address} failed: {reply}",
                                  address=address, protocol=protocol, reply=reply)
    kind = reason_kind(text)
    same = closed if closed is not None and closed.kind == kind else None
    return MailboxClosed(text, address=address, protocol=protocol, reply=reply, kind=kind,
                         store=store, window=same.window if same else None,
                         node=same.node if same else None)


def reason_kind(reason: str) -> str:
    """``maintenance`` or ``node-down`` for a reason :meth:`Closed.reason` wrote;
    ``refused`` for any other."""
    return next((kind for prefix, kind in _KINDS.items() if reason.startswith(prefix)),
                "refused")


def _response_code(reply: str) -> tuple[str, str]:
    """``("ALERT", "Mailbox ...")`` from ``"[ALERT] Mailbox ..."``; ``""`` without a code."""
    if reply.startswith("[") and "]" in reply:
        code, _, text = reply[1:].partition("]")
        return code.upper(), text.strip()
    return "", reply


# --- the clients ----------------------------------------------------------------------------

def _connect(port: int, timeout: float | None) -> socket.socket:
    """A connection to Dovecot from the next ``127.1.x.y`` (from the default address
    where the system has no such address)."""
    n = next(_sources) % (254 * 254)
    source = f"127.1.{n // 254}.{n % 254 + 1}"
    try:
        return socket.create_connection((HOST, port), timeout, source_address=(source, 0))
    except OSError as exc:
        if exc.errno != errno.EADDRNOTAVAIL:
            raise
    return socket.create_connection((HOST, port), timeout)


class _IMAP4(imaplib.IMAP4):
    """imaplib's client, connecting from an address of its own."""

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        return _connect(self.port, timeout)


class _POP3(poplib.POP3):
    """poplib's client, connecting from an address of its own."""

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return _connect(self.port, timeout)


def imap_login(port: int, address: str, password: str) -> imaplib.IMAP4:
    """Connect to Dovecot's IMAP ``port`` and log in (blocking); imaplib's error if the
    login is refused, the connection closed."""
    client = _IMAP4(HOST, port, timeout=CLIENT_TIMEOUT)
    try:
        client.login(address, password)
    except BaseException:
        close_imap(client)
        raise
    return client


def pop3_login(port: int, address: str, password: str) -> poplib.POP3:
    """Connect to Dovecot's POP3 ``port`` and log in (blocking); poplib's error if the
    login is refused, the connection closed."""
    client = _POP3(HOST, port, timeout=CLIENT_TIMEOUT)
    try:
        client.user(address)
        client.pass_(password)
    except BaseException:
        client.close()
        raise
    return client


def close_imap(client: imaplib.IMAP4) -> None:
    """Log out unless the test did, and close the connection whatever the server does."""
    with contextlib.suppress(Exception):
        if client.state != "LOGOUT":
            client.sock.settimeout(CLOSE_TIMEOUT)
            client.logout()
    with contextlib.suppress(Exception):
        client.shutdown()  # a no-op after a clean logout; closes the socket after a failed one


def _close_all(imap: list[imaplib.IMAP4], pop3: list[poplib.POP3]) -> None:
    for client in imap:
        close_imap(client)
    for pop in pop3:
        with contextlib.suppress(Exception):
            pop.close()


# --- where Dovecot's mail user may go -------------------------------------------------------

def check_reachable(config: Config) -> None:
    """ConfigError unless Dovecot's mail user can reach every served store's Maildirs.

    Only a concern as root: Dovecot then serves mail as the stores' ``owner``, which must
    be able to enter each directory above the Maildirs (pytest's ``tmp_path`` lies under
    one only root may enter). Otherwise Dovecot runs as the user that owns them.
    """
    if os.geteuid() != 0:
        return
    from mailqueue.access.dovecot import mail_user, served_stores

    uid, gid = mail_user(config.stores)
    for store in served_stores(config.stores):
        for directory in (*reversed(store.root.parents), store.root):
            blocked = _closed_to(directory, uid, gid)
            if blocked is not None:
                raise ConfigError(
                    f"store {store.name}: Dovecot reads its Maildirs as uid {uid}, which "
                    f"cannot enter {directory} ({blocked}): put the Maildirs where that user "
                    "can pass (MailqueueOptions.build(root, maildirs=DIR, owner=...); the "
                    "pytest fixtures do so when run as root)")


def _closed_to(directory: Path, uid: int, gid: int) -> str | None:
    """Why user ``uid``/``gid`` may not pass through ``directory``; None when it may (or
    the directory is not there yet)."""
    try:
        info = directory.stat()
    except FileNotFoundError:
        return None
    if info.st_uid == uid:
        bit = stat.S_IXUSR
    elif info.st_gid == gid:
        bit = stat.S_IXGRP
    else:
        bit = stat.S_IXOTH
    if info.st_mode & bit:
        return None
    return f"mode {stat.S_IMODE(info.st_mode):04o}, owner uid {info.st_uid}"
