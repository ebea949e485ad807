"""The node rules each written once: which node a mailbox lives on, which settings a mode
needs, which names are nodes, and how many nodes a store may have. Every caller (the CLI,
scenarios, the control plane, the test harness) asks the same function."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mailqueue.access import mailbox_closed
from mailqueue.config import Config
from mailqueue.control.nodes import MAX_NODES, NodeMode, NodeState, mode_needs, node_index, node_of
from mailqueue.control.plane import set_nodes
from mailqueue.control.windows import WindowSet
from mailqueue.errors import ConfigError, NodeError
from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.rehearsal.scenario import ScenarioError, scenario_from_dict
from mailqueue.testing.options import MailqueueOptions, with_nodes
from tests.helpers import make_config, opened_store
from tests.unit.test_scenario import BASE


def test_node_of_is_the_node_a_mailbox_lives_on(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    store = config.stores[0].model_copy(update={"nodes": 4})
    for n in range(40):
        address = f"User{n}@Basic.Example"
        name = node_of("basic", 4, address)
        assert name == f"basic-{node_index(address, 4) + 1}"
        down = {name: NodeState(name=name, store="basic").changed(NodeMode.DOWN, 0.0)}
        closed = mailbox_closed(store, address.lower(), WindowSet((), 0.0), down)
        assert closed is not None and closed.node == name
    assert node_of("basic", 1, "anyone@basic.example") == "basic-1"


@pytest.mark.parametrize(("mode", "settings", "needs"), [
    (NodeMode.UP, {}, ()),
    (NodeMode.DOWN, {}, ()),
    (NodeMode.SLOW, {}, ("latency",)),
    (NodeMode.SLOW, {"latency": 0.5}, ()),
    (NodeMode.FLAKY, {}, ("failure_rate", "fail_next")),
    (NodeMode.FLAKY, {"latency": 3.0}, ("failure_rate", "fail_next")),
    (NodeMode.FLAKY, {"failure_rate": 0.1}, ()),
    (NodeMode.FLAKY, {"fail_next": 2}, ()),
])
def test_mode_needs(mode: NodeMode, settings: dict[str, Any], needs: tuple[str, ...]) -> None:
    assert mode_needs(mode, **settings) == needs


@pytest.fixture
async def queue(tmp_path: Path) -> AsyncIterator[SqlQueueStore]:
    async with opened_store(f"sqlite+aiosqlite:///{tmp_path / 'q.db'}") as store:
        yield store


async def test_set_nodes_checks_names_and_modes_before_changing_anything(
        queue: SqlQueueStore) -> None:
    counts = {"basic": 3, "hosted-exchange": 2}
    with pytest.raises(NodeError, match=r"^no node 'basic-4' \(basic has nodes "
                                        r"basic-1\.\.basic-3\)$"):
        await set_nodes(queue, ["basic-1", "basic-4"], NodeMode.DOWN, 0.0, counts=counts)
    with pytest.raises(NodeError, match=r"^a slow node needs latency$"):
        await set_nodes(queue, ["basic-1"], NodeMode.SLOW, 0.0, counts=counts)
    with pytest.raises(NodeError, match=r"^a flaky node needs failure_rate or fail_next$"):
        await set_nodes(queue, ["basic-1"], NodeMode.FLAKY, 0.0, counts=counts)
    assert await queue.nodes() == []
    changed = await set_nodes(queue, ["hosted-exchange-2", "basic-3"], NodeMode.SLOW, 5.0,
                              counts=counts, latency=2.0)
    assert [(n.name, n.store, n.mode, n.latency) for n in changed] == [
        ("hosted-exchange-2", "hosted-exchange", NodeMode.SLOW, 2.0),
        ("basic-3", "basic", NodeMode.SLOW, 2.0)]
    assert sorted(n.name for n in await queue.nodes()) == ["basic-3", "hosted-exchange-2"]


def test_a_scenario_of_many_nodes_names_an_unknown_one_in_one_short_line() -> None:
    data = copy.deepcopy(BASE)
    data["stores"][0]["nodes"] = MAX_NODES
    data["events"] = [{"at": "2019-06-26 18:00", "action": "node.down",
                       "nodes": ["basic-1000", f"basic-{MAX_NODES + 1}"]}]
    with pytest.raises(ScenarioError) as info:
        scenario_from_dict(data, "s.toml")
    assert str(info.value) == ("s.toml: events[0].nodes: no node 'basic-1001' "
                               "(basic has nodes basic-1..basic-1000)")
    data["events"][0]["nodes"] = ["basic-1000", "hosted-exchange-1"]
    loaded = scenario_from_dict(data, "s.toml")
    assert loaded.events[0].nodes == ("basic-1000", "hosted-exchange-1")


def test_a_scenario_node_event_needs_what_its_mode_needs() -> None:
    data = copy.deepcopy(BASE)
    data["events"] = [{"at": "2019-06-26 18:00", "action": "node.flaky", "store": "basic",
                       "latency": "5s"}]
    with pytest.raises(ScenarioError, match=r"events\[0\]: node\.flaky needs failure_rate "
                                            r"or fail_next$"):
        scenario_from_dict(data, "s.toml")


def options_config(tmp_path: Path) -> Config:
    return MailqueueOptions(stores={"basic": ["basic.example"],
                                    "exchange": ["exchange.example"]}).build(tmp_path)


@pytest.mark.parametrize(("count", "problem"), [
    (0, "Input should be greater than or equal to 1"),
    (MAX_NODES + 1, f"Input should be less than or equal to {MAX_NODES}"),
    (True, "Input should be a valid integer"),
    (2.0, "Input should be a valid integer"),
    ("2", "Input should be a valid integer"),
])
def test_node_counts_are_checked_by_the_config_model(tmp_path: Path, count: Any,
                                                     problem: str) -> None:
    config = options_config(tmp_path)
    expected = f"mailqueue test options: nodes: store 'basic': {problem}"
    with pytest.raises(ConfigError) as info:
        with_nodes(config, {"basic": count})
    assert str(info.value) == expected
    with pytest.raises(ConfigError) as info:
        MailqueueOptions(stores={"basic": ["basic.example"]},
                         nodes={"basic": count}).build(tmp_path)
    assert str(info.value) == expected


def test_with_nodes_changes_only_the_stores_it_names(tmp_path: Path) -> None:
    config = options_config(tmp_path)
    changed = with_nodes(config, {"exchange": MAX_NODES})
    assert [(s.name, s.nodes) for s in changed.stores] == [("basic", 1),
                                                            ("exchange", MAX_NODES)]
    assert changed.stores[0] is config.stores[0]
    assert changed.stores[1].model_dump() == {**config.stores[1].model_dump(),
                                              "nodes": MAX_NODES}
    assert with_nodes(config, None) is config and with_nodes(config, {}) is config
    with pytest.raises(ConfigError, match=r"^mailqueue test options: nodes: unknown store "
                                          r"'ghost' \(known: basic, exchange\)$"):
        with_nodes(config, {"ghost": 2})
