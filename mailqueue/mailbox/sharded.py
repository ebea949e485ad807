"""A node-aware mailbox store: mailboxes sharded over nodes that can be down, slow or flaky.

:class:`NodeAwareStore` wraps a :class:`~mailqueue.mailbox.maildir.MaildirStore` or a
:class:`~mailqueue.mailbox.remote.RemoteStore`. Each recipient's mailbox lives on one node
of the store (a stable hash of the address); the node's current state, read through a
callable (the control plane's view of the ``nodes`` table), decides whether the delivery
fails temporarily and how long it takes, before the inner store is asked. For a remote
store node N is its host N, so a node set down defers that host's mail whatever the host
would answer, and a node up lets the host answer for itself. Latency is in clock seconds,
slept in real time through the clock (``deliver`` runs in a thread).

:func:`build_mailboxes` builds every configured store this way, for ``serve``, the pytest
harness and rehearsals alike: a store of one node (the default) is the whole store behind
``STORE-1``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from mailqueue.clock import Clock
from mailqueue.config import Config, StoreConfig
from mailqueue.control.nodes import Fault, FaultModel, NodeMode, NodeState, node_name, node_of
from mailqueue.errors import TemporaryDeliveryError
from mailqueue.mailbox.base import DeliveryOutcome, MailboxStore, Report, ReportingStore
from mailqueue.mailbox.maildir import MaildirStore, resolve_owner
from mailqueue.mailbox.remote import RemoteStore
from mailqueue.queue.values import Claim

_NONE = Fault()  # what an up node does to a delivery
_UP = NodeMode.UP  # a plain name: an enum member's lookup costs more than the test itself


class NodeAwareStore:
    """A :class:`MailboxStore` whose mailboxes live on ``count`` nodes.

    While every node of the store is up (the usual case) a batch goes straight to the
    inner store; otherwise only the claims on a node that is not up are put to the fault
    model.
    """

    def __init__(self, inner: MailboxStore, store: str, count: int, clock: Clock,
                 nodes: Callable[[], Mapping[str, NodeState]], faults: FaultModel) -> None:
        self.inner = inner
        self.name = store
        self.count = count
        self._clock = clock
        self._nodes = nodes
        self._faults = faults
        self._names = frozenset(node_name(store, index) for index in range(count))
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[int, int]] = {}  # node -> (version, deliveries since)

    def node_for(self, address: str) -> NodeState:
        """The node ``address`` lives on, in its current state (up when never set)."""
        name = node_of(self.name, self.count, address)
        return self._nodes().get(name) or NodeState(name=name, store=self.name)

    def _not_up(self) -> dict[str, NodeState]:
        """This store's nodes that are not up now, by name (a node not listed is up; a
        listed name that is not one of this store's nodes is another store's, or an old
        row)."""
        return {name: node for name, node in self._nodes().items()
                if node.mode is not _UP and name in self._names}

    def _nth(self, node: NodeState) -> int:
        """Count this delivery to ``node`` since its last change (threads share the count)."""
        with self._lock:
            version, count = self._seen.get(node.name, (node.version, 0))
            if version != node.version:
                count = 0
            self._seen[node.name] = (node.version, count + 1)
            return count + 1

    def _fault(self, node: NodeState, claim: Claim) -> Fault:
        """What ``node`` (not up) does to the delivery of ``claim``. Only a flaky node's
        decision depends on the delivery: its key and its number since the change."""
        if node.mode is not NodeMode.FLAKY:
            return self._faults.decide(node, "", 0)
        key = f"{claim.queue_id}/{claim.address}/{claim.attempts}"
        return self._faults.decide(node, key, self._nth(node))

    @property
    def reports(self) -> bool:
        """Whether the inner store tells outcomes one by one (see ``ReportingStore``)."""
        return isinstance(self.inner, ReportingStore) and self.inner.reports

    def deliver(self, claims: Sequence[Claim]) -> list[DeliveryOutcome]:
        not_up = self._not_up()
        if not not_up:
            return self.inner.deliver(claims)
        outcomes, passing = self._faults_of(claims, not_up)
        if passing:
            done = self.inner.deliver([claims[i] for i in passing])
            for index, outcome in zip(passing, done, strict=True):
                outcomes[index] = outcome
        return outcomes

    def deliver_reporting(self, claims: Sequence[Claim], report: Report,
                          deadline: float | None) -> list[DeliveryOutcome]:
        """As :meth:`deliver`, telling each outcome as it is known: a node's fault at once,
        the inner store's as it tells them."""
        not_up = self._not_up()
        if not not_up:
            return self._inner_reporting(claims, list(range(len(claims))), report, deadline,
                                         [None] * len(claims))
        outcomes, passing = self._faults_of(claims, not_up)
        passed = set(passing)
        for index, outcome in enumerate(outcomes):
            if index not in passed:
                report(index, outcome)
        if passing:
            self._inner_reporting([claims[i] for i in passing], passing, report, deadline,
                                  outcomes)
        return outcomes

    def _inner_reporting(self, claims: Sequence[Claim], indexes: list[int], report: Report,
                         deadline: float | None, outcomes: list[DeliveryOutcome],
                         ) -> list[DeliveryOutcome]:
        """The inner store's outcomes for ``claims`` (``indexes`` in the caller's batch),
        told through ``report`` and written into ``outcomes``."""
        inner = self.inner
        if isinstance(inner, ReportingStore) and inner.reports:
            done = inner.deliver_reporting(claims, lambda i, o: report(indexes[i], o),
                                           deadline)
            for index, outcome in zip(indexes, done, strict=True):
                outcomes[index] = outcome
            return outcomes
        for index, outcome in zip(indexes, inner.deliver(claims), strict=True):
            outcomes[index] = outcome
            report(index, outcome)
        return outcomes

    def _faults_of(self, claims: Sequence[Claim], not_up: Mapping[str, NodeState]
                   ) -> tuple[list[DeliveryOutcome], list[int]]:
        """The claims' outcomes from the nodes that are not up (None where the node lets
        the delivery through) and the indexes of those let through, after the nodes'
        latency has been waited out."""
        outcomes: list[DeliveryOutcome] = [None] * len(claims)
        passing: list[int] = []
        delay = 0.0
        for index, claim in enumerate(claims):
            node = not_up.get(node_of(self.name, self.count, claim.address))
            fault = _NONE if node is None else self._fault(node, claim)
            delay += fault.delay
            if fault.error is None:
                passing.append(index)
            else:
                outcomes[index] = TemporaryDeliveryError(fault.error)
        if delay:
            self._wait(delay)
        return outcomes, passing

    def close(self) -> None:
        """Close the inner store's threads and connections, where it has any."""
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()

    def _wait(self, delay: float) -> None:
        """Take ``delay`` clock seconds, in real time. A clock whose time does not pass on
        its own (a test's manual clock) has none to give: the delivery goes on at once."""
        seconds = self._clock.real_seconds(delay)
        if math.isfinite(seconds):
            time.sleep(seconds)



def build_mailboxes(config: Config, clock: Clock,
                    nodes: Callable[[], Mapping[str, NodeState]],
                    faults: FaultModel) -> dict[str, MailboxStore]:
    """Every configured store on its ``nodes`` nodes, whose states ``nodes()`` gives (the
    control plane's view), with faults drawn by ``faults``: Maildirs mailqueue writes, or
    the hosts of an ``lmtp`` or ``smtp`` store."""
    return {store.name: NodeAwareStore(_inner(store, config.smtp.hostname), store.name,
                                       store.nodes, clock, nodes, faults)
            for store in config.stores}


def _inner(store: StoreConfig, hostname: str) -> MailboxStore:
    if store.kind == "maildir":
        assert store.path is not None  # the config requires it
        owner = None if store.owner is None else resolve_owner(store.owner)
        return MaildirStore(store.name, store.path, hostname, writers=store.writers,
                            owner=owner)
    return RemoteStore.from_config(store, hostname)
