"""``mailqueue node list|set``: see and flip mailbox node states from any process.

Node states live in the queue database, so a running server (``serve``, a rehearsal, the
pytest harness) follows a change within a second, the same way it follows window changes.
The nodes are those of the config: ``[[stores]] nodes = N`` gives a store ``STORE-1`` ..
``STORE-N`` (one node, ``STORE-1``, by default); any other name is an error.
"""

from __future__ import annotations

import json

import click

from mailqueue.cli._common import MAX_COUNT, FiniteFloatRange, config_option, in_queue, load
from mailqueue.clock import SystemClock
from mailqueue.control.nodes import NodeMode, NodeState, find_node, mode_needs, node_name
from mailqueue.control.plane import set_nodes
from mailqueue.queue.store import ControlState
from mailqueue.timeparse import parse_duration


@click.group(short_help="Mailbox nodes: list, set up/down/slow/flaky.")
def node() -> None:
    """Mailbox nodes: list their states, set one up, down, slow or flaky."""


@node.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per node.")
def node_list(config_path: str | None, as_json: bool) -> None:
    """Every configured node and its state (up unless set otherwise)."""
    config = load(config_path)
    stored = {n.name: n for n in in_queue(config, lambda q: q.nodes())}
    for store in config.stores:
        for index in range(store.nodes):
            name = node_name(store.name, index)
            n = stored.get(name) or NodeState(name=name, store=store.name)
            click.echo(json.dumps({"name": n.name, "store": n.store, "mode": n.mode.value,
                                   "latency": n.latency, "failure_rate": n.failure_rate,
                                   "fail_next": n.fail_next}) if as_json else n.describe())


@node.command("set")
@config_option
@click.argument("name")
@click.argument("mode", type=click.Choice([m.value for m in NodeMode]))
@click.option("--latency", metavar="DURATION", default="0",
              help="Added time per delivery (slow, flaky), e.g. 30s.")
@click.option("--failure-rate", type=FiniteFloatRange(0, 1), default=0.0,
              help="Share of deliveries that fail (flaky).")
@click.option("--fail-next", type=click.IntRange(0, MAX_COUNT), default=0,
              help="Fail this many deliveries, then succeed (flaky).")
def node_set(config_path: str | None, name: str, mode: str, latency: str,
             failure_rate: float, fail_next: int) -> None:
    """Set node NAME (STORE-N, e.g. basic-2) to MODE."""
    config = load(config_path)
    counts = {s.name: s.nodes for s in config.stores}
    find_node(name, counts)  # a wrong name is named before the queue is opened
    delay = parse_duration(latency)
    needs = mode_needs(NodeMode(mode), latency=delay, failure_rate=failure_rate,
                       fail_next=fail_next)
    if needs:
        options = " or ".join(f"--{key.replace('_', '-')}" for key in needs)
        example = " (e.g. 30s)" if "latency" in needs else ""
        raise click.UsageError(f"a {mode} node needs {options}{example}")

    async def action(queue: ControlState) -> NodeState:
        changed = await set_nodes(queue, [name], NodeMode(mode), SystemClock().now(),
                                  counts=counts, latency=delay, failure_rate=failure_rate,
                                  fail_next=fail_next)
        return changed[0]

    click.echo(f"set {in_queue(config, action).describe()}")
