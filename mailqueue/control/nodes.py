"""Mailbox nodes: a store sharded over N nodes, each up, down, slow or flaky.

A store has ``nodes`` nodes (``[[stores]] nodes``, 1 by default), named ``STORE-1`` ..
``STORE-N``. A mailbox maps to one node of its store by a stable hash of its address, so the
same mailbox always lands on the same node in every process and every run. Node states live
in the queue database (like windows) so the CLI, a test or a rehearsal script can flip a
node that a running server then honours. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from enum import StrEnum

from mailqueue.errors import UnknownNodeError

MAX_NODES = 1000  # nodes per store, in the config and in scenarios


class NodeMode(StrEnum):
    UP = "up"
    DOWN = "down"  # every delivery fails temporarily
    SLOW = "slow"  # every delivery takes ``latency`` extra clock seconds
    FLAKY = "flaky"  # ``failure_rate`` of deliveries fail, or the next ``fail_next`` do


@dataclasses.dataclass(frozen=True)
class NodeState:
    """One node as stored in the queue database."""

    name: str
    store: str
    mode: NodeMode = NodeMode.UP
    latency: float = 0.0  # clock seconds per delivery (slow, flaky)
    failure_rate: float = 0.0  # 0..1 (flaky)
    fail_next: int = 0  # fail this many deliveries after the change, then succeed (flaky)
    version: int = 0  # bumped on every change, so "the next N" restarts per change
    updated_at: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.failure_rate <= 1.0:
            raise ValueError("failure_rate must be between 0 and 1")
        if self.latency < 0 or self.fail_next < 0:
            raise ValueError("latency and fail_next cannot be negative")

    def changed(self, mode: NodeMode, now: float, *, latency: float = 0.0,
                failure_rate: float = 0.0, fail_next: int = 0) -> NodeState:
        """This node in ``mode`` from ``now`` on (the version moves on)."""
        return dataclasses.replace(self, mode=mode, latency=latency,
                                   failure_rate=failure_rate, fail_next=fail_next,
                                   version=self.version + 1, updated_at=now)

    def describe(self) -> str:
        """One line: ``basic-2 flaky failure_rate=0.3``."""
        text = f"{self.name} {self.mode}"
        if self.latency:
            text += f" latency={self.latency:g}s"
        if self.failure_rate:
            text += f" failure_rate={self.failure_rate:g}"
        if self.fail_next:
            text += f" fail_next={self.fail_next}"
        return text


def mode_needs(mode: NodeMode, *, latency: float = 0.0, failure_rate: float = 0.0,
               fail_next: int = 0) -> tuple[str, ...]:
    """The settings of which ``mode`` needs one and is given none: a slow node needs a
    ``latency``, a flaky one a ``failure_rate`` or a ``fail_next``; () when it has them."""
    if mode is NodeMode.SLOW and latency <= 0:
        return ("latency",)
    if mode is NodeMode.FLAKY and not (failure_rate or fail_next):
        return ("failure_rate", "fail_next")
    return ()


def node_name(store: str, index: int) -> str:
    """The name of node ``index`` (0-based) of ``store``: ``basic-1``, ``basic-2``, ..."""
    return f"{store}-{index + 1}"


def node_span(store: str, count: int) -> str:
    """The names of ``store``'s nodes as a range: ``basic-1..basic-3``, or ``basic-1``."""
    first = node_name(store, 0)
    return first if count == 1 else f"{first}..{node_name(store, count - 1)}"


def find_node(name: str, counts: Mapping[str, int]) -> tuple[str, int]:
    """The store and 0-based index of node ``name`` (``STORE-N``), given each store's number
    of nodes. Raises :class:`UnknownNodeError` naming the nodes there are."""
    store, _, number = name.rpartition("-")
    count = counts.get(store)
    shown = repr(name if len(name) <= 80 else name[:77] + "...")
    if count is None:
        known = ", ".join(node_span(s, c) for s, c in counts.items())
        raise UnknownNodeError(f"no node {shown} (known: {known})")
    # Only the canonical spelling: "basic-01" would be a second name for basic-1's row.
    if number.isascii() and number.isdigit() and not number.startswith("0") and \
            len(number) <= len(str(count)) and int(number) <= count:
        return store, int(number) - 1
    has = f"has one node: {node_name(store, 0)}" if count == 1 else \
        f"has nodes {node_span(store, count)}"
    raise UnknownNodeError(f"no node {shown} ({store} {has})")


def node_index(address: str, count: int) -> int:
    """The node (0-based) a mailbox lives on: a stable hash of the address, mod ``count``."""
    if count < 1:
        raise ValueError("a store has at least one node")
    if count == 1:
        return 0
    digest = hashlib.sha256(address.lower().encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % count


def node_of(store: str, count: int, address: str) -> str:
    """The name of the node of ``store`` (on ``count`` nodes) that ``address``'s mailbox
    lives on: ``basic-2``."""
    return node_name(store, node_index(address, count))


# How much of its mail a node turns away, by mode: deliveries to a node that turns away
# less than before need not wait for their retry.
_TURNS_AWAY = {NodeMode.UP: 0, NodeMode.SLOW: 0, NodeMode.FLAKY: 1, NodeMode.DOWN: 2}


def came_back(before: NodeState | None, after: NodeState) -> bool:
    """Whether ``after`` takes mail that ``before`` turned away: a node that was down and
    is not now, or was flaky and is now up or slow (None: a node never set, so up)."""
    was = _TURNS_AWAY[before.mode] if before is not None else 0
    return _TURNS_AWAY[after.mode] < was


def unit_draw(seed: int, *parts: object) -> float:
    """A number in [0, 1) fixed by ``seed`` and ``parts``: the same inputs, the same draw."""
    key = "\x1f".join([str(seed), *(str(p) for p in parts)]).encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2.0**64


@dataclasses.dataclass(frozen=True)
class Fault:
    """What a node does to one delivery: fail it (with a reason) and/or delay it."""

    error: str | None = None
    delay: float = 0.0


class FaultModel:
    """Decides, deterministically under ``seed``, what a node does to a delivery.

    A flaky node's failures are drawn from a hash of (seed, node, version, delivery key), so
    a rehearsal run twice with the same seed fails the same attempts, whatever the thread
    interleaving. ``fail_next`` counts deliveries since the node's last change.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def decide(self, node: NodeState, key: str, nth: int) -> Fault:
        """The fault for the ``nth`` (1-based) delivery to ``node`` since its last change."""
        if node.mode is NodeMode.UP:
            return Fault()
        if node.mode is NodeMode.DOWN:
            return Fault(error=f"node {node.name} is down")
        if node.mode is NodeMode.SLOW:
            return Fault(delay=node.latency)
        if nth <= node.fail_next:
            return Fault(error=f"node {node.name}: error ({nth} of the next "
                               f"{node.fail_next} deliveries fail)", delay=node.latency)
        if unit_draw(self.seed, node.name, node.version, key) < node.failure_rate:
            return Fault(error=f"node {node.name}: intermittent error", delay=node.latency)
        return Fault(delay=node.latency)
