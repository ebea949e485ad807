"""Stores and their mailbox nodes: list them with their state, set a node up, down, slow
or flaky."""

from __future__ import annotations

from typing import Any

from mailqueue.control.nodes import NodeMode, NodeState, find_node, mode_needs, node_name
from mailqueue.control.plane import set_nodes
from mailqueue.control.windows import WindowSet
from mailqueue.service.context import Context, about
from mailqueue.timeparse import format_time, parse_duration


def node_json(n: NodeState) -> dict[str, Any]:
    """A node as ``node list --json`` prints it."""
    return {"name": n.name, "store": n.store, "mode": n.mode.value, "latency": n.latency,
            "failure_rate": n.failure_rate, "fail_next": n.fail_next}


def node_view(n: NodeState) -> dict[str, Any]:
    """:func:`node_json` with when it last changed (None: never set, so up)."""
    at = n.updated_at
    return node_json(n) | {"updated_at": None if at is None else format_time(at),
                           "updated_at_epoch": at}


def node_counts(ctx: Context) -> dict[str, int]:
    """Each configured store's number of nodes."""
    return {s.name: s.nodes for s in ctx.config.stores}


async def list_nodes(ctx: Context) -> list[NodeState]:
    """Every configured node and its state (up unless set otherwise), store by store."""
    stored = {n.name: n for n in await ctx.queue.nodes()}
    return [stored.get(name) or NodeState(name=name, store=store.name)
            for store in ctx.config.stores
            for name in (node_name(store.name, index) for index in range(store.nodes))]


async def get_node(ctx: Context, name: str) -> NodeState:
    """Node ``name`` (``STORE-N``); :class:`~mailqueue.errors.UnknownNodeError` naming the
    nodes there are."""
    with about("name"):
        store, _ = find_node(name, node_counts(ctx))
    stored = {n.name: n for n in await ctx.queue.nodes()}
    return stored.get(name) or NodeState(name=name, store=store)


def _mode(ctx: Context, mode: str) -> NodeMode:
    try:
        return NodeMode(mode)
    except ValueError:
        raise ctx.invalid("mode", f"{ctx.name('mode')}: {mode!r} is not one of "
                                  f"{', '.join(NodeMode)}") from None


async def set_node(ctx: Context, name: str, mode: str, *, latency: str | float = 0.0,
                   failure_rate: float = 0.0, fail_next: int = 0) -> NodeState:
    """Set node ``name`` to ``mode`` from now on; a running server follows within a
    second. A slow node needs a ``latency``, a flaky one a ``failure_rate`` or a
    ``fail_next``."""
    counts = node_counts(ctx)
    with about("name"):
        find_node(name, counts)  # a wrong name is named before anything else
    chosen = _mode(ctx, mode)
    with about("latency"):
        delay = parse_duration(latency)
    if not 0.0 <= failure_rate <= 1.0:
        raise ctx.invalid("failure_rate", f"{ctx.name('failure_rate')}: {failure_rate!r} is "
                                          "not between 0 and 1")
    if fail_next < 0:
        raise ctx.invalid("fail_next", f"{ctx.name('fail_next')}: {fail_next!r} is negative")
    needs = mode_needs(chosen, latency=delay, failure_rate=failure_rate, fail_next=fail_next)
    if needs:
        example = " (e.g. 30s)" if "latency" in needs else ""
        raise ctx.invalid(needs[0], f"a {chosen.value} node needs "
                                    f"{' or '.join(ctx.name(k) for k in needs)}{example}")
    changed = await set_nodes(ctx.queue, [name], chosen, ctx.now(), counts=counts,
                              latency=delay, failure_rate=failure_rate, fail_next=fail_next)
    ctx.changed()
    return changed[0]


async def list_stores(ctx: Context) -> list[dict[str, Any]]:
    """Every configured store: its kind, domains, nodes, and the active window holding
    it (None: open)."""
    windows = WindowSet(await ctx.queue.windows(), ctx.now())
    out = []
    for store in ctx.config.stores:
        window = windows.blocking(store.name)
        out.append({"name": store.name, "kind": store.kind, "domains": list(store.domains),
                    "nodes": [node_name(store.name, i) for i in range(store.nodes)],
                    "window": None if window is None else window.name,
                    "inbound": None if window is None else window.inbound.value,
                    "open": window is None})
    return out
