"""``mailqueue node list|set``: see and flip mailbox node states from any process.

Node states live in the queue database, so a running server (``serve``, a rehearsal, the
pytest harness) follows a change within a second, the same way it follows window changes.
The nodes are those of the config: ``[[stores]] nodes = N`` gives a store ``STORE-1`` ..
``STORE-N`` (one node, ``STORE-1``, by default); any other name is an error.
"""

from __future__ import annotations

import json

import click

from mailqueue.cli._common import MAX_COUNT, FiniteFloatRange, config_option, in_service, load
from mailqueue.control.nodes import NodeMode
from mailqueue.service import nodes as service


@click.group(short_help="Mailbox nodes: list, set up/down/slow/flaky.")
def node() -> None:
    """Mailbox nodes: list their states, set one up, down, slow or flaky."""


@node.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per node.")
def node_list(config_path: str | None, as_json: bool) -> None:
    """Every configured node and its state (up unless set otherwise)."""
    config = load(config_path)
    for n in in_service(config, service.list_nodes):
        click.echo(json.dumps(service.node_json(n)) if as_json else n.describe())


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
    changed = in_service(config, lambda ctx: service.set_node(
        ctx, name, mode, latency=latency, failure_rate=failure_rate, fail_next=fail_next))
    click.echo(f"set {changed.describe()}")
