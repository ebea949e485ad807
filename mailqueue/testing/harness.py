"""A complete mailqueue inside the test's event loop, driven by a manual clock."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import imaplib
import poplib
from collections.abc import Mapping
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING

from mailqueue.access import Closed, mailbox_closed
from mailqueue.app import MailqueueApp
from mailqueue.clock import ManualClock
from mailqueue.config import Config
from mailqueue.control.nodes import NodeMode, NodeState, find_node, node_index, node_name
from mailqueue.control.plane import set_nodes
from mailqueue.control.windows import Inbound, Window, WindowState
from mailqueue.mailbox.maildir import mailbox_path
from mailqueue.mailbox.router import Route, Router
from mailqueue.queue.values import LedgerRecipient, QueueStats, RecipientState
from mailqueue.testing.access import MailboxAccess, require_access
from mailqueue.testing.ledger import Ledger
from mailqueue.testing.options import with_nodes
from mailqueue.verify.scan import scan_config, scan_root, unchecked_stores

if TYPE_CHECKING:
    from mailqueue.testing.dovecot import AccessDovecot

START_TIMEOUT = 10.0
STOP_TIMEOUT = 15.0
_PENDING = (RecipientState.QUEUED.value, RecipientState.ACTIVE.value,
            RecipientState.HELD.value)


class NotDrainedError(AssertionError):
    """The queue still held mail when ``drained()`` gave up."""


def _seconds(span: timedelta | float) -> float:
    return span.total_seconds() if isinstance(span, timedelta) else float(span)


def read_mailbox(config: Config, address: str) -> list[EmailMessage]:
    """The messages delivered to ``address`` that are in its mailbox (and its folders),
    oldest first: in the order of acceptance their queue ids keep, whatever a reader
    renamed the files to (blocking file reads)."""
    route = Router(config.stores).route(address)
    if not isinstance(route, Route):
        raise ValueError(f"{address!r}: no mailbox for it ({route})")
    root = config.store(route.store).mailbox_root
    if root is None:
        raise ValueError(f"{address!r}: store {route.store!r} delivers to remote servers "
                         "and has no verify_path to read its mailboxes from")
    box = mailbox_path(root, route.address)
    # A copy with no Delivered-To (a remote server's, for several recipients at once)
    # belongs to the mailbox it lies in.
    copies = [c for c in scan_root(route.store, box) if c.queue_id is not None and
              (c.recipient is None or c.recipient.lower() == route.address)]
    copies.sort(key=lambda c: (c.queue_id or "", c.path.name))
    out = []
    for copy in copies:
        message = email.message_from_bytes(copy.path.read_bytes(), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        out.append(message)
    return out




class AsyncMailbox:
    """One address's Maildir, read back from disk."""

    def __init__(self, config: Config, address: str) -> None:
        self._config = config
        self.address = address

    async def messages(self) -> list[EmailMessage]:
        """Parsed messages (with the trace headers delivery added), oldest first."""
        return await asyncio.to_thread(read_mailbox, self._config, self.address)


class AsyncMailqueue:
    """SMTP front end, queue (SQLite in a temp dir), worker and Maildirs, in this loop.

    Time is a :class:`~mailqueue.clock.ManualClock`: windows, retries and lifetimes move
    only when the test calls :meth:`advance`. Every method that touches the queue or the
    disk is awaited; :meth:`advance` and the attributes are plain. ``nodes`` (store → how
    many mailbox nodes) sets those stores' ``nodes`` in ``config``; ``passwords`` (address
    → password) are those of the users :meth:`imap` and :meth:`pop3` log in (any password
    logs any address in when None, unless ``[smtp] users_file`` says who may).
    """

    def __init__(self, config: Config, *, inbound: str = "queue",
                 nodes: Mapping[str, int] | None = None,
                 passwords: Mapping[str, str] | None = None) -> None:
        self.config = config = with_nodes(config, nodes)
        self.clock = ManualClock()
        self.default_inbound = Inbound(inbound)
        self.nodes = {s.name: s.nodes for s in config.stores}
        self.passwords = None if passwords is None else dict(passwords)
        self.app = MailqueueApp(config, clock=self.clock)
        self._task: asyncio.Task[None] | None = None
        self._access: MailboxAccess | None = None  # made by the first imap() or pop3()

    @property
    def host(self) -> str:
        """Where the SMTP front end listens."""
        return self.config.smtp.host

    @property
    def port(self) -> int:
        """The front end's port (0 until started)."""
        return self.app.port or 0

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, timeout: float = START_TIMEOUT) -> None:
        """Run the app and wait until it listens."""
        self._task = asyncio.create_task(self.app.run(), name="mailqueue")
        ready = asyncio.create_task(self.app.ready.wait())
        await asyncio.wait([self._task, ready], timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            if self._task.done():
                self._task.result()  # raises what went wrong
            await self.stop()
            raise TimeoutError(f"mailqueue did not start within {timeout}s")

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop gracefully; cancel what is left after ``timeout`` seconds. The mail
        clients, Dovecot and admin endpoint of :meth:`imap` go first."""
        access, self._access = self._access, None
        try:
            if access is not None:
                await access.stop(timeout)
        finally:
            await self._stop_app(timeout)

    async def _stop_app(self, timeout: float) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self.app.stop()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise TimeoutError(f"mailqueue did not stop within {timeout}s") from None

    async def __aenter__(self) -> AsyncMailqueue:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- windows -------------------------------------------------------------------------

    async def start_window(self, stores: str | list[str] | tuple[str, ...] | None = None,
                           *, inbound: str | None = None, name: str = "maintenance",
                           duration: timedelta | float = timedelta(hours=48)) -> Window:
        """Open window ``name`` now for ``stores`` (all when None) for ``duration``."""
        chosen = (stores,) if isinstance(stores, str) else tuple(stores or ())
        known = [s.name for s in self.config.stores]
        unknown = [s for s in chosen if s not in known]
        if unknown:
            raise ValueError(f"unknown store(s) {unknown} (known: {known})")
        now = self.clock.now()
        end = now + _seconds(duration)
        current = self._window(await self.app.queue.windows(), name)
        if current is None:
            current = Window(name=name, stores=chosen, start=now, end=end,
                             inbound=Inbound(inbound or self.default_inbound))
        return await self._save(current.started_now(now, end))

    async def end_window(self, name: str | None = None) -> list[Window]:
        """End window ``name`` (every active window when None); the queue drains."""
        now = self.clock.now()
        ended = []
        for window in await self.app.queue.windows():
            if (name is None or window.name == name) and \
                    window.effective_state(now) is WindowState.ACTIVE:
                ended.append(await self._save(window.ended_now(now)))
        if name is not None and not ended:
            raise ValueError(f"no active window named {name!r}")
        return ended

    async def extend_window(self, by: timedelta | float | None = None, *,
                            until: datetime | None = None,
                            name: str = "maintenance") -> Window:
        """Push the planned end of ``name`` by ``by``, or to ``until`` (an aware datetime)."""
        if (by is None) == (until is None):
            raise ValueError("give by= or until=, not both")
        window = self._window(await self.app.queue.windows(), name)
        if window is None:
            raise ValueError(f"no window named {name!r}")
        end = until.timestamp() if until is not None else window.end + _seconds(by or 0)
        return await self._save(window.extended(self.clock.now(), end))

    @staticmethod
    def _window(windows: list[Window], name: str) -> Window | None:
        return next((w for w in windows if w.name == name), None)

    async def _save(self, window: Window) -> Window:
        await self.app.queue.save_window(window)
        await self.app.control.refresh()
        return window

    # --- mailbox nodes -------------------------------------------------------------------

    def node_of(self, address: str) -> int:
        """The node (1-based) of its store that ``address``'s mailbox lives on."""
        route = Router(self.config.stores).route(address)
        if not isinstance(route, Route):
            raise ValueError(f"{address!r}: no mailbox for it ({route})")
        return node_index(route.address, self.nodes[route.store]) + 1

    async def node_down(self, store: str, node: int) -> NodeState:
        """Take node ``node`` (1-based) of ``store`` down: its deliveries fail temporarily
        (4xx, retried) until :meth:`node_up`."""
        return await self._set_node(store, node, NodeMode.DOWN)

    async def node_up(self, store: str, node: int) -> NodeState:
        """Bring node ``node`` (1-based) of ``store`` back; the mail its outage deferred is
        delivered now, without waiting for its retry."""
        return await self._set_node(store, node, NodeMode.UP)

    async def _set_node(self, store: str, node: int, mode: NodeMode) -> NodeState:
        # A NodeError (a ValueError) names the nodes there are.
        changed = await set_nodes(self.app.queue, [node_name(store, node - 1)], mode,
                                  self.clock.now(), counts=self.nodes)
        await self.app.control.refresh()
        return changed[0]

    # --- time and draining ---------------------------------------------------------------

    def advance(self, span: timedelta | float) -> None:
        """Move mail time forward (windows end, retries fall due, lifetimes run out)."""
        self.clock.advance(_seconds(span))

    async def stats(self) -> QueueStats:
        return await self.app.queue.stats()

    async def drained(self, timeout: float = 10.0) -> None:
        """Wait until no recipient is queued or in delivery; fail after ``timeout`` s."""
        __tracebackhide__ = True  # pytest: show the message, not this frame
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            stats = await self.app.queue.stats()
            if not sum(stats.recipients[s] for s in _PENDING):
                return
            if self._task is not None and self._task.done():
                self._task.result()
                raise NotDrainedError("mailqueue stopped before the queue drained")
            if loop.time() > deadline:
                raise NotDrainedError(await self._why_not_drained(timeout))
            await asyncio.sleep(0.02)

    async def _why_not_drained(self, timeout: float) -> str:
        lines = [f"mailqueue: queue not drained after {timeout}s"]
        for entry in await self.app.queue.ledger():
            for rcpt in entry.recipients:
                if rcpt.state.value not in _PENDING:
                    continue
                lines.append(f"  {entry.queue_id} {entry.message_id or ''} -> "
                             f"{rcpt.address}: {self._why_waiting(rcpt)}")
        return "\n".join(lines[:51])

    def _why_waiting(self, rcpt: LedgerRecipient) -> str:
        """Why a recipient is still pending, and what the test can do about it."""
        closed = self._closed(rcpt.store, rcpt.address)
        if closed is not None and closed.window is not None:
            return f"held by active window {closed.window.name!r} (end_window())"
        if closed is not None and closed.node is not None:
            store, index = find_node(closed.node, self.nodes)
            return f"its node is down (node_up({store!r}, {index + 1}))"
        if rcpt.last_error:
            return f"waiting to retry: {rcpt.last_error} (advance() the clock)"
        return rcpt.state.value

    def _closed(self, store: str, address: str) -> Closed | None:
        """Why ``address``'s mailbox (of ``store``) is closed now: the one decision of
        :func:`~mailqueue.access.mailbox_closed` (only a window's, for a store that is
        not configured)."""
        windows = self.app.control.current()
        config = next((s for s in self.config.stores if s.name == store), None)
        if config is not None:
            return mailbox_closed(config, address, windows, self.app.control.nodes())
        window = windows.blocking(store)
        return None if window is None else Closed(store=store, window=window)

    # --- mailbox access ------------------------------------------------------------------

    async def imap(self, address: str, password: str | None = None) -> imaplib.IMAP4:
        """An IMAP client logged in as ``address`` through Dovecot, as a mail client would
        be (logged out at teardown); its calls block, and need nothing from this loop.

        Raises :class:`~mailqueue.testing.MailboxClosed` with the reason the client shows
        while a window or a node outage closes the mailbox,
        :class:`~mailqueue.testing.MailboxAuthFailed` for a wrong ``password``. The first
        call starts Dovecot (skipping the pytest test when it is not installed).
        """
        return await self._mailbox_access().imap(address, password)

    async def pop3(self, address: str, password: str | None = None) -> poplib.POP3:
        """A POP3 client logged in as ``address``, as :meth:`imap` (closed at teardown
        without ``QUIT``: call ``quit()`` to commit deletions)."""
        return await self._mailbox_access().pop3(address, password)

    async def dovecot(self) -> AccessDovecot:
        """The Dovecot that :meth:`imap` logs in through (started on first use): point
        your own mail client at ``127.0.0.1`` and its ``imap_port`` or ``pop3_port``."""
        return await self._mailbox_access().start()

    def _mailbox_access(self) -> MailboxAccess:
        if self._task is None:
            raise RuntimeError("mailqueue is not running: call start() first")
        require_access()
        if self._access is None:
            self._access = MailboxAccess(self.app, self.config, self._closed, self.passwords)
        return self._access

    # --- what arrived --------------------------------------------------------------------

    def mailbox(self, address: str) -> AsyncMailbox:
        """The Maildir of ``address`` (``await mailbox(a).messages()``)."""
        return AsyncMailbox(self.config, address)

    async def ledger(self) -> Ledger:
        """What was accepted, compared with the Maildir files as they are now."""
        entries = await self.app.queue.ledger()
        copies, roots = await asyncio.to_thread(scan_config, self.config)
        return Ledger(entries, copies, roots, unchecked_stores(self.config))

    def maildir_root(self, store: str | None = None) -> Path:
        """Where a store's (by default the first store's) Maildirs are: its ``path``, or
        for a remote store its ``verify_path``."""
        config = self.config.store(store or self.config.stores[0].name)
        if config.mailbox_root is None:
            raise ValueError(f"store {config.name!r} delivers to remote servers and has no "
                             "verify_path")
        return config.mailbox_root
