"""A node-aware mailbox store: Maildirs sharded over nodes that can be down, slow or flaky.

:class:`NodeAwareStore` wraps a :class:`~mailqueue.mailbox.maildir.MaildirStore`. Each
recipient's mailbox lives on one node of the store (a stable hash of the address); the
node's current state, read through a callable (the control plane's view of the ``nodes``
table), decides whether the delivery fails temporarily and how long it takes. Latency is
in clock seconds, slept in real time through the clock (``deliver`` runs in a thread).

:func:`build_mailboxes` builds every configured store this way, for ``serve``, the pytest
harness and rehearsals alike: a store of one node (the default) is the whole store behind
``STORE-1``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence

from mailqueue.clock import Clock
from mailqueue.config import Config
from mailqueue.errors import TemporaryDeliveryError
from mailqueue.mailbox.base import DeliveryOutcome, MailboxStore
from mailqueue.mailbox.maildir import MaildirStore
from mailqueue.nodes import FaultModel, NodeState, node_of
from mailqueue.queue.models import Claim


class NodeAwareStore:
    """A :class:`MailboxStore` whose mailboxes live on ``count`` nodes."""

    def __init__(self, inner: MailboxStore, store: str, count: int, clock: Clock,
                 nodes: Callable[[], Mapping[str, NodeState]], faults: FaultModel) -> None:
        self.inner = inner
        self.name = store
        self.count = count
        self._clock = clock
        self._nodes = nodes
        self._faults = faults
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[int, int]] = {}  # node -> (version, deliveries since)

    def node_for(self, address: str) -> NodeState:
        """The node ``address`` lives on, in its current state (up when never set)."""
        name = node_of(self.name, self.count, address)
        return self._nodes().get(name) or NodeState(name=name, store=self.name)

    def _nth(self, node: NodeState) -> int:
        """Count this delivery to ``node`` since its last change (threads share the count)."""
        with self._lock:
            version, count = self._seen.get(node.name, (node.version, 0))
            if version != node.version:
                count = 0
            self._seen[node.name] = (node.version, count + 1)
            return count + 1

    def deliver(self, claims: Sequence[Claim]) -> list[DeliveryOutcome]:
        outcomes: list[DeliveryOutcome] = [None] * len(claims)
        passing: list[int] = []
        delay = 0.0
        for index, claim in enumerate(claims):
            node = self.node_for(claim.address)
            key = f"{claim.queue_id}/{claim.address}/{claim.attempts}"
            fault = self._faults.decide(node, key, self._nth(node))
            delay += fault.delay
            if fault.error is None:
                passing.append(index)
            else:
                outcomes[index] = TemporaryDeliveryError(fault.error)
        if delay:
            time.sleep(self._clock.real_seconds(delay))
        if passing:
            done = self.inner.deliver([claims[i] for i in passing])
            for index, outcome in zip(passing, done, strict=True):
                outcomes[index] = outcome
        return outcomes


def build_mailboxes(config: Config, clock: Clock,
                    nodes: Callable[[], Mapping[str, NodeState]],
                    faults: FaultModel) -> dict[str, MailboxStore]:
    """Every configured store: its Maildirs on its ``nodes`` nodes, whose states ``nodes()``
    gives (the control plane's view), with faults drawn by ``faults``."""
    return {store.name: NodeAwareStore(
                MaildirStore(store.name, store.path, config.smtp.hostname, writers=store.writers),
                store.name, store.nodes, clock, nodes, faults)
            for store in config.stores}
