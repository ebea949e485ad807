"""Testing toolkit: a complete mailqueue inside your tests, and a no-loss ledger.

Installed with mailqueue, the pytest plugin (:mod:`mailqueue.testing.plugin`, registered
through the ``pytest11`` entry point) provides the fixtures ``mailqueue`` (async tests,
needs pytest-asyncio), ``mailqueue_sync`` (plain tests; the app runs in a thread) and the
factories ``mailqueue_factory`` / ``mailqueue_sync_factory``. Outside pytest, use
:class:`AsyncMailqueue` or :class:`Mailqueue` as context managers. Their ``imap()`` and
``pop3()`` log in through Dovecot, raising :class:`MailboxClosed` (or
:class:`MailboxAuthFailed`, both :class:`MailboxAccessError`) when the login is refused.

The names below are imported on first use, so that pytest loading the plugin in a project
that does not use it costs next to nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mailqueue.testing.access import MailboxAccessError, MailboxAuthFailed, MailboxClosed
    from mailqueue.testing.harness import AsyncMailbox, AsyncMailqueue, NotDrainedError
    from mailqueue.testing.ledger import Ledger, MailLossError
    from mailqueue.testing.options import MailqueueOptions
    from mailqueue.testing.threaded import Mailbox, Mailqueue

_WHERE = {"AsyncMailbox": "harness", "AsyncMailqueue": "harness", "NotDrainedError": "harness",
          "Ledger": "ledger", "MailLossError": "ledger", "MailqueueOptions": "options",
          "Mailbox": "threaded", "Mailqueue": "threaded", "MailboxAccessError": "access",
          "MailboxAuthFailed": "access", "MailboxClosed": "access"}

__all__ = ["AsyncMailbox", "AsyncMailqueue", "Ledger", "MailLossError", "Mailbox",
           "MailboxAccessError", "MailboxAuthFailed", "MailboxClosed", "Mailqueue",
           "MailqueueOptions", "NotDrainedError"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'mailqueue.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(f"mailqueue.testing.{_WHERE[name]}"), name)
