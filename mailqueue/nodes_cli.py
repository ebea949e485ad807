"""``mailqueue node list|set``: see and flip mailbox node states from any process.

Node states live in the queue database, so a running server (a rehearsal, a drill) follows
a change within a second, the same way it follows window changes.
"""

from __future__ import annotations

import json

import click

from mailqueue.cli_common import MAX_COUNT, FiniteFloatRange, config_option, in_queue, load
from mailqueue.clock import SystemClock
from mailqueue.nodes import NodeMode, NodeState
from mailqueue.queue.models import ControlState
from mailqueue.timeparse import parse_duration


@click.group(short_help="Mailbox nodes: list, set up/down/slow/flaky.")
def node() -> None:
    """Mailbox nodes: list their states, set one up, down, slow or flaky."""


@node.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per node.")
def node_list(config_path: str | None, as_json: bool) -> None:
    """Every node whose state was set (nodes not listed are up)."""
    config = load(config_path)
    nodes = in_queue(config, lambda q: q.nodes())
    if not nodes:
        click.echo("no node states set (every node is up)")
    for n in nodes:
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
    store, _, index = name.rpartition("-")
    known = [s.name for s in config.stores]
    if store not in known or not index.isdigit() or int(index) < 1:
        raise click.UsageError(f"node {name!r}: use STORE-N with a store of "
                               f"{', '.join(known)} and N from 1")
    if mode == "slow" and parse_duration(latency) <= 0:
        raise click.UsageError("a slow node needs --latency (e.g. 30s)")
    if mode == "flaky" and not (failure_rate or fail_next):
        raise click.UsageError("a flaky node needs --failure-rate or --fail-next")

    async def action(queue: ControlState) -> NodeState:
        current = next((n for n in await queue.nodes() if n.name == name), None) or \
            NodeState(name=name, store=store)
        changed = current.changed(NodeMode(mode), SystemClock().now(),
                                  latency=parse_duration(latency),
                                  failure_rate=failure_rate, fail_next=fail_next)
        await queue.save_nodes([changed])
        return changed

    click.echo(f"set {in_queue(config, action).describe()}")
