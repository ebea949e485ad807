"""Who may read a mailbox now: one decision for every way in (the admin endpoint's
``/mailboxes`` route).

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


@dataclasses.dataclass(frozen=True)
class Closed:
    """Why a mailbox cannot be read now: a window, or its node being down."""

    store: str
    window: Window | None = None
    node: str | None = None


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
