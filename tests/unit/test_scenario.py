"""Scenario files: the shipped ones load, bad ones get one clear error naming the key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from mailqueue.rehearsal.scenario import ScenarioError, load_scenario, scenario_from_dict

SCENARIOS = Path(__file__).resolve().parents[2] / "config" / "scenarios"

BASE: dict[str, Any] = {
    "scenario": {"name": "t", "timezone": "America/Chicago", "start": "2019-06-26 12:00",
                 "end": "2019-06-27 12:00", "speed": 3600},
    "stores": [{"name": "basic", "domains": ["basic.example"], "nodes": 3},
               {"name": "hosted-exchange", "domains": ["exchange.example"]}],
    "windows": [{"name": "upgrade", "stores": ["basic"], "start": "2019-06-26 17:00",
                 "end": "2019-06-26 23:00"}],
    "events": [],
}


def scenario(*events: dict[str, Any], **changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data["events"] = list(events)
    data.update(changes)
    return data


def error(data: dict[str, Any]) -> str:
    with pytest.raises(ScenarioError) as info:
        scenario_from_dict(data, "s.toml")
    return str(info.value)


@pytest.mark.parametrize("name", ["quickstart.toml", "june-2019-upgrade.toml"])
def test_shipped_scenarios_load(name: str) -> None:
    loaded = load_scenario(SCENARIOS / name)
    assert loaded.end > loaded.start
    assert loaded.events and loaded.file.windows


def test_june_scenario_tells_the_story() -> None:
    june = load_scenario(SCENARIOS / "june-2019-upgrade.toml")
    window = june.file.windows[0]
    assert window.start_ts == 1561586400  # Wed 26 June 2019 5:00 PM CDT
    assert window.end_ts == 1561759200  # Fri 28 June 2019 5:00 PM CDT
    assert sorted(window.stores or []) == ["basic", "hosted-exchange"]
    assert june.info.name and "basic-1" in june.node_names()


# The provider's status updates (shared upgrade notice), Central time: every one of them is
# an event of the scenario, at its hour.
NOTICE_UPDATES = ["2019-06-26 19:00", "2019-06-27 05:00", "2019-06-27 12:00",
                  "2019-06-27 21:00", "2019-06-28 04:00", "2019-06-28 17:00",
                  "2019-06-28 20:00", "2019-06-29 01:00", "2019-06-29 07:00",
                  "2019-06-29 08:00", "2019-06-30 00:30"]


def test_june_scenario_follows_the_notice_to_the_hour() -> None:
    june = load_scenario(SCENARIOS / "june-2019-upgrade.toml")
    times = {june.time(e.at) for e in june.events}
    for update in NOTICE_UPDATES:
        assert update.replace(" ", "T") + ":00-05:00" in times, update
    # Extended at the announced end, not before; Exchange back at 12:30 AM Sunday.
    extends = [e for e in june.events if e.action == "window.extend"]
    assert june.time(extends[0].at) == "2019-06-28T17:00:00-05:00"
    assert extends[0].at_window_end
    [end] = [e for e in june.events if e.action == "window.end"]
    assert june.time(end.at) == "2019-06-30T00:30:00-05:00"
    assert end.at - june.file.windows[0].end_ts == 31.5 * 3600  # the overrun


def test_an_extension_may_come_at_the_planned_end_but_nothing_after() -> None:
    loaded = scenario_from_dict(scenario(
        {"at": "2019-06-26 23:00", "action": "window.extend", "window": "upgrade",
         "until": "2019-06-27 02:00"}), "s.toml")
    assert loaded.events[0].at_window_end
    assert "has already ended" in error(scenario(
        {"at": "2019-06-26 23:00", "action": "window.end", "window": "upgrade"}))
    assert "has already ended" in error(scenario(
        {"at": "2019-06-26 23:01", "action": "window.extend", "window": "upgrade",
         "until": "2019-06-27 02:00"}))


def test_local_times_take_the_scenario_zone() -> None:
    loaded = scenario_from_dict(scenario(), "s.toml")
    assert loaded.start == 1561568400  # 12:00 CDT
    assert loaded.file.windows[0].timezone == "America/Chicago"


def test_node_event_expands_a_store_to_its_nodes() -> None:
    loaded = scenario_from_dict(scenario(
        {"at": "2019-06-26 18:00", "action": "node.down", "store": "basic"}), "s.toml")
    assert loaded.events[0].nodes == ("basic-1", "basic-2", "basic-3")


@pytest.mark.parametrize(("events", "expected"), [
    ([{"at": "2019-06-26 18:00", "action": "node.down", "store": "mystery"}],
     "events[0].store: unknown store 'mystery' (known: basic, hosted-exchange)"),
    ([{"at": "2019-06-26 18:00", "action": "node.down", "nodes": ["basic-9"]}],
     "events[0].nodes: no node 'basic-9' (basic has nodes basic-1..basic-3)"),
    ([{"at": "2019-06-26 19:00", "note": "b"}, {"at": "2019-06-26 18:00", "note": "a"}],
     "events[1].at: events must be in time order"),
    ([{"at": "2019-06-28 18:00", "note": "late"}], "events[0].at: 2019-06-28T18:00:00-05:00 "
     "is outside the scenario"),
    ([{"at": "2019-06-26 23:30", "action": "window.extend", "window": "upgrade",
       "until": "2019-06-27 02:00"}], "window 'upgrade' has already ended"),
    ([{"at": "2019-06-26 20:00", "action": "window.end", "window": "nope"}],
     "unknown window 'nope'"),
    ([{"at": "2019-06-26 20:00", "action": "window.extend", "window": "upgrade"}],
     "window.extend needs until"),
    ([{"at": "2019-06-26 20:00", "action": "node.slow", "store": "basic"}],
     "node.slow needs latency"),
    ([{"at": "2019-06-26 20:00", "action": "traffic"}], "needs rate or factor"),
    ([{"at": "2019-06-26 20:00", "action": "explode"}], "events[0].action"),
    ([{"at": "yesterday"}], "not a time: 'yesterday'"),
])
def test_bad_events_name_what_to_fix(events: list[dict[str, Any]], expected: str) -> None:
    message = error(scenario(*events))
    assert message.startswith("s.toml: ")
    assert expected in message


def test_extending_then_acting_inside_the_new_end_is_fine() -> None:
    loaded = scenario_from_dict(scenario(
        {"at": "2019-06-26 22:00", "action": "window.extend", "window": "upgrade",
         "until": "2019-06-27 02:00"},
        {"at": "2019-06-27 01:00", "action": "window.end", "window": "upgrade"}), "s.toml")
    assert [e.action for e in loaded.events] == ["window.extend", "window.end"]


def test_other_mistakes() -> None:
    data = scenario()
    data["scenario"]["end"] = "2019-06-26 11:00"
    assert "scenario.end: must be after scenario.start" in error(data)
    data = scenario()
    data["windows"][0]["stores"] = ["basic", "ghost"]
    assert "windows[0].stores: unknown store 'ghost'" in error(data)
    data = scenario()
    data["traffic"] = {"rate": 10, "stores": {"ghost": 1.0}}
    assert "traffic.stores: unknown store 'ghost'" in error(data)
    data = scenario()
    data["traffic"] = {"profile": [1.0] * 23}
    assert "traffic.profile" in error(data)
    data = scenario()
    data["scenario"]["speeed"] = 2
    assert "scenario.speeed: unknown key" in error(data)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenario(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[scenario\n")
    with pytest.raises(ScenarioError, match="invalid TOML"):
        load_scenario(bad)


def test_a_remote_store_rehearses_on_its_hosts(tmp_path: Path) -> None:
    from mailqueue.errors import ConfigError
    from mailqueue.rehearsal.runner import build_config

    remote = {"name": "basic", "domains": ["basic.example"], "kind": "lmtp",
              "hosts": ["127.0.0.1:2424", "/run/lmtp"], "verify_path": "vmail",
              "timeouts": {"data_done": "30s"}}
    loaded = scenario_from_dict(scenario(stores=[remote]), str(tmp_path / "s.toml"))
    assert loaded.node_counts() == {"basic": 2}  # one node per host
    [store] = build_config(loaded, tmp_path / "work", 3600).stores
    assert store.kind == "lmtp" and store.nodes == 2 and store.path is None
    assert store.verify_path == tmp_path / "vmail"  # relative to the scenario file
    assert store.timeouts.data_done == 30
    bad = scenario(stores=[{**remote, "hosts": ["127.0.0.1:0"]}])
    with pytest.raises(ConfigError, match=r"stores\[0\]: hosts\[0\]: .* the port must be"):
        build_config(scenario_from_dict(bad, "s.toml"), tmp_path / "work", 3600)
