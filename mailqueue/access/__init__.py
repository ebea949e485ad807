"""Who may read a mailbox now: one decision for every way in.

The admin endpoint's ``/mailboxes`` route (``503``) and Dovecot's IMAP and POP3 logins
(through the endpoint's auth-policy route, :mod:`mailqueue.access.dovecot`) both ask
:func:`mailbox_closed`, so they cannot disagree.

A mailbox is closed while its store is inside an active maintenance window (until the
window's planned end, as the upgrade notice promised) and while the node it lives on is
down (until the node is set up again; a slow or flaky node still serves its mailboxes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from mailqueue.config import StoreConfig
from mailqueue.control.nodes import NodeMode, NodeState, node_of
from mailqueue.control.windows import Window, WindowSet
from mailqueue.timeparse import format_time


@dataclasses.dataclass(frozen=True)
class Closed:
    """Why a mailbox cannot be read now: a window, or its node being down."""

    store: str
    window: Window | None = None
    node: str | None = None

    @property
    def kind(self) -> str:
        """``maintenance`` (a window) or ``node-down``."""
        return "maintenance" if self.window is not None else "node-down"

    def reason(self) -> str:
        """What a mail client shows its user: the maintenance and its planned end, or the
        node that is down."""
        if self.window is not None:
            end = format_time(self.window.end, self.window.timezone)
            return (f"Mailbox maintenance: {self.store} is being upgraded (window "
                    f"{self.window.name}) until {end}; please try again later")
        return (f"Mailbox unavailable: its node {self.node} is down; please try again "
                "later")


def mailbox_closed(store: StoreConfig, address: str, windows: WindowSet,
                   nodes: Mapping[str, NodeState]) -> Closed | None:
    """Why ``address`` (a mailbox of ``store``) is closed now, or None when it is open."""
    window = windows.blocking(store.name)
    if window is not None:
        return Closed(store=store.name, window=window)
    name = node_of(store.name, store.nodes, address)
    node = nodes.get(name)
    if node is not None and node.mode is NodeMode.DOWN:
        return Closed(store=store.name, node=name)
    return None
