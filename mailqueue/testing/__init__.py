"""Testing toolkit: a complete mailqueue inside your tests, and a no-loss ledger.

Installed with mailqueue, the pytest plugin (:mod:`mailqueue.testing.plugin`, registered
through the ``pytest11`` entry point) provides the fixtures ``mailqueue`` (async tests,
needs pytest-asyncio), ``mailqueue_sync`` (plain tests; the app runs in a thread) and the
factories ``mailqueue_factory`` / ``mailqueue_sync_factory``. Outside pytest, use
:class:`AsyncMailqueue` or :class:`Mailqueue` as context managers.
"""

from mailqueue.testing.harness import AsyncMailbox, AsyncMailqueue, NotDrainedError
from mailqueue.testing.ledger import Ledger, MailLossError
from mailqueue.testing.options import MailqueueOptions
from mailqueue.testing.threaded import Mailbox, Mailqueue

__all__ = ["AsyncMailbox", "AsyncMailqueue", "Ledger", "MailLossError", "Mailbox",
           "Mailqueue", "MailqueueOptions", "NotDrainedError"]
