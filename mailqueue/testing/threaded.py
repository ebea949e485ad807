"""The synchronous twin: the same mailqueue on its own event loop in a background thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import imaplib
import poplib
import threading
from collections.abc import Coroutine, Mapping
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mailqueue.config import Config
from mailqueue.control.nodes import NodeState
from mailqueue.control.windows import Window
from mailqueue.queue.values import QueueStats
from mailqueue.testing.access import require_access
from mailqueue.testing.harness import STOP_TIMEOUT, AsyncMailqueue, read_mailbox
from mailqueue.testing.ledger import Ledger
from mailqueue.testing.options import with_nodes

if TYPE_CHECKING:
    from mailqueue.testing.dovecot import AccessDovecot

T = TypeVar("T")
_CALL_MARGIN = 5.0
_ACCESS_TIMEOUT = 60.0  # the first login starts Dovecot


class Mailbox:
    """One address's Maildir, read back from disk."""

    def __init__(self, config: Config, address: str) -> None:
        self._config = config
        self.address = address

    def messages(self) -> list[EmailMessage]:
        """Parsed messages (with the trace headers delivery added), oldest first."""
        return read_mailbox(self._config, self.address)


class Mailqueue:
    """:class:`~mailqueue.testing.harness.AsyncMailqueue` for synchronous tests.

    The app runs on a private event loop in a daemon thread; every method blocks until the
    loop has done the work, so a sync test (``smtplib``, ``requests``, a Django or Flask
    client) drives it without ``await``.
    """

    def __init__(self, config: Config, *, inbound: str = "queue",
                 nodes: Mapping[str, int] | None = None,
                 passwords: Mapping[str, str] | None = None) -> None:
        self.config = with_nodes(config, nodes)
        self.passwords = None if passwords is None else dict(passwords)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="mailqueue-loop", daemon=True)
        self._inner: AsyncMailqueue | None = None
        self._inbound = inbound

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        __tracebackhide__ = True  # pytest: show the message, not this frame
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"mailqueue did not answer within {timeout}s") from None

    @property
    def inner(self) -> AsyncMailqueue:
        if self._inner is None:
            raise RuntimeError("mailqueue is not running: call start() first")
        return self._inner

    @property
    def host(self) -> str:
        return self.config.smtp.host

    @property
    def port(self) -> int:
        return self.inner.port

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop thread and the app in it; return once it listens."""
        self._thread.start()

        async def build() -> AsyncMailqueue:
            inner = AsyncMailqueue(self.config, inbound=self._inbound,
                                   passwords=self.passwords)
            await inner.start()
            return inner

        try:
            self._inner = self._call(build())
        except BaseException:
            self._shutdown_loop()
            raise

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the mailbox access of :meth:`imap` and the app (each under ``timeout``),
        then the loop and its thread."""
        try:
            if self._inner is not None:
                self._call(self._inner.stop(timeout), 2 * timeout + _CALL_MARGIN)
        finally:
            self._shutdown_loop()

    def _shutdown_loop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_CALL_MARGIN)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()

    def __enter__(self) -> Mailqueue:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the same verbs, blocking --------------------------------------------------------

    def start_window(self, stores: str | list[str] | tuple[str, ...] | None = None, *,
                     inbound: str | None = None, name: str = "maintenance",
                     duration: timedelta | float = timedelta(hours=48)) -> Window:
        """Open window ``name`` now for ``stores`` (all when None) for ``duration``."""
        return self._call(self.inner.start_window(stores, inbound=inbound, name=name,
                                                  duration=duration))

    def end_window(self, name: str | None = None) -> list[Window]:
        """End window ``name`` (every active window when None); the queue drains."""
        return self._call(self.inner.end_window(name))

    def extend_window(self, by: timedelta | float | None = None, *,
                      until: datetime | None = None, name: str = "maintenance") -> Window:
        """Push the planned end of ``name`` by ``by``, or to ``until``."""
        return self._call(self.inner.extend_window(by, until=until, name=name))

    def node_of(self, address: str) -> int:
        """The node (1-based) of its store that ``address``'s mailbox lives on."""
        return self.inner.node_of(address)

    def node_down(self, store: str, node: int) -> NodeState:
        """Take node ``node`` (1-based) of ``store`` down: its deliveries fail temporarily."""
        return self._call(self.inner.node_down(store, node))

    def node_up(self, store: str, node: int) -> NodeState:
        """Bring node ``node`` (1-based) of ``store`` back up: its deferred mail goes now."""
        return self._call(self.inner.node_up(store, node))

    def advance(self, span: timedelta | float) -> None:
        """Move mail time forward (on the loop's thread: the clock wakes its waiters)."""
        async def move() -> None:
            self.inner.advance(span)

        self._call(move())

    def drained(self, timeout: float = 10.0) -> None:
        """Block until no recipient is queued or in delivery; fail after ``timeout`` s."""
        __tracebackhide__ = True
        self._call(self.inner.drained(timeout), timeout + _CALL_MARGIN)

    def stats(self) -> QueueStats:
        return self._call(self.inner.stats())

    def imap(self, address: str, password: str | None = None) -> imaplib.IMAP4:
        """An IMAP client logged in as ``address`` through Dovecot (logged out at
        teardown). Raises ``MailboxClosed`` with the reason while a window or a node
        outage closes the mailbox, ``MailboxAuthFailed`` for a wrong ``password``; skips
        the test where Dovecot is not installed."""
        __tracebackhide__ = True
        require_access()  # here, so that a skip is raised in the test's thread
        return self._call(self.inner.imap(address, password), _ACCESS_TIMEOUT)

    def pop3(self, address: str, password: str | None = None) -> poplib.POP3:
        """A POP3 client logged in as ``address``, as :meth:`imap` (closed at teardown
        without ``QUIT``: call ``quit()`` to commit deletions)."""
        __tracebackhide__ = True
        require_access()
        return self._call(self.inner.pop3(address, password), _ACCESS_TIMEOUT)

    def dovecot(self) -> AccessDovecot:
        """The Dovecot :meth:`imap` logs in through (started on first use): its
        ``imap_port`` and ``pop3_port`` on 127.0.0.1, for your own mail client."""
        require_access()
        return self._call(self.inner.dovecot(), _ACCESS_TIMEOUT)

    def mailbox(self, address: str) -> Mailbox:
        """The Maildir of ``address`` (``mailbox(a).messages()``)."""
        return Mailbox(self.config, address)

    def ledger(self) -> Ledger:
        """What was accepted, compared with the Maildir files as they are now."""
        return self._call(self.inner.ledger())

    def maildir_root(self, store: str | None = None) -> Path:
        return self.inner.maildir_root(store)
