"""Scenarios replaying a traffic profile: the [traffic] keys, the week lined up, scale,
shift, the domain mix, and one-line errors."""

from __future__ import annotations

import copy
import itertools
import random
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from mailqueue.rehearsal.replay import ArrivalMap, expected, plan_replay, with_profile
from mailqueue.rehearsal.scenario import ScenarioError, scenario_from_dict
from mailqueue.rehearsal.traffic import plan_traffic, render_message
from mailqueue.timeparse import parse_time
from mailqueue.traffic.profile import Parse, ProfileBuilder, TrafficProfile, save_profile
from tests.cli_run import Mq, cli_runner, one_line_error
from tests.unit.test_scenario import BASE, SCENARIOS

BERLIN = ZoneInfo("Europe/Berlin")
CHICAGO = ZoneInfo("America/Chicago")
MONDAY = parse_time("2024-03-04 00:00", "Europe/Berlin")


def week_profile(days: int = 7, start: float = MONDAY, domains: dict[str, int] | None = None,
                 senders: tuple[str, ...] = ("gmail.example",)) -> TrafficProfile:
    """A log of ``days`` from a Monday in Berlin: on day d, hour h, (d + 1) * 10 + h
    messages — every weekday and hour has its own count."""
    builder = ProfileBuilder("Europe/Berlin", 60)
    rng = random.Random(1)
    domains = domains or {"own.example": 1}
    for day in range(days):
        for hour in range(24):
            at = start + day * 86400 + hour * 3600
            for _ in range((day + 1) * 10 + hour):
                builder.add(at + rng.random() * 3600, int(rng.lognormvariate(9, 1)), domains,
                            rng.choice(senders))
    builder.seen(start)
    builder.seen(start + days * 86400 - 1)
    return builder.build([], Parse())


def scenario(tmp_path: Path, profile: TrafficProfile, **traffic: Any) -> Any:
    save_profile(profile, tmp_path / "week.json")
    data = copy.deepcopy(BASE)  # Wed 26 June 2019 12:00 to Thu 12:00, Chicago
    data["traffic"] = {"profile": "week.json", **traffic}
    return scenario_from_dict(data, str(tmp_path / "s.toml"))


def test_each_moment_replays_the_same_weekday_and_hour_of_the_log(tmp_path: Path) -> None:
    loaded = scenario(tmp_path, week_profile())
    plan = plan_traffic(loaded, 1)
    by_hour = Counter(datetime.fromtimestamp(p.at, CHICAGO).strftime("%a %H") for p in plan)
    # Wednesday is the log's third day: (2 + 1) * 10 + hour, Thursday (3 + 1) * 10 + hour.
    assert by_hour["Wed 12"] == 42 and by_hour["Wed 23"] == 53
    assert by_hour["Thu 00"] == 40 and by_hour["Thu 11"] == 51
    assert len(plan) == sum(by_hour.values()) == sum(30 + h for h in range(12, 24)) + \
        sum(40 + h for h in range(12))
    assert plan == plan_traffic(loaded, 1) and plan != plan_traffic(loaded, 2)
    assert [p.seq for p in plan] == list(range(1, len(plan) + 1))
    assert all(a.at <= b.at for a, b in itertools.pairwise(plan))
    assert sum(expected(loaded, 3600)) == len(plan)


def test_scale_samples_or_multiplies(tmp_path: Path) -> None:
    whole = len(plan_traffic(scenario(tmp_path, week_profile()), 1))
    tenth = len(plan_traffic(scenario(tmp_path, week_profile(), scale="1/10"), 1))
    assert abs(tenth - whole / 10) < 4 * (whole * 0.1 * 0.9) ** 0.5
    assert len(plan_traffic(scenario(tmp_path, week_profile(), scale=2), 1)) == 2 * whole
    half_more = len(plan_traffic(scenario(tmp_path, week_profile(), scale=1.5), 1))
    assert abs(half_more - 1.5 * whole) < 4 * (whole * 0.25) ** 0.5


def test_a_log_shorter_than_a_week_replays_the_nearest_day(tmp_path: Path) -> None:
    loaded = scenario(tmp_path, week_profile(days=2))  # Monday and Tuesday only
    arrivals = ArrivalMap(loaded.replay, loaded.start, loaded.end, loaded.timezone)
    assert arrivals.coverage() == 1.0
    by_hour = Counter(datetime.fromtimestamp(p.at, CHICAGO).strftime("%a %H")
                      for p in plan_traffic(loaded, 1))
    assert by_hour["Wed 12"] == 20 + 12  # Tuesday's noon (the nearest day)
    assert by_hour["Thu 11"] == 20 + 11


def test_shift_plays_a_time_of_the_log_at_the_start(tmp_path: Path) -> None:
    profile = week_profile(days=1)
    loaded = scenario(tmp_path, profile, shift="2024-03-04 18:00")  # Monday 6 PM in Berlin
    plan = plan_traffic(loaded, 1)
    first_hour = [p for p in plan if p.at < loaded.start + 3600]
    assert len(first_hour) == 10 + 18
    # The log's day ends six hours later: the rest of the scenario replays nothing.
    assert max(p.at for p in plan) < loaded.start + 6 * 3600
    arrivals = ArrivalMap(loaded.replay, loaded.start, loaded.end, loaded.timezone)
    assert arrivals.coverage() == pytest.approx(6 / 24, abs=0.01)


def test_the_domain_mix_maps_to_the_scenario_stores(tmp_path: Path) -> None:
    profile = week_profile(domains={"basic.example": 1, "own.example": 1},
                           senders=("<>", "bank.example"))
    plan = plan_traffic(scenario(tmp_path, profile, stores={"hosted-exchange": 1.0}), 1)
    recipients = Counter(r.partition("@")[2] for p in plan for r in p.recipients)
    # basic.example is a store's domain; own.example is not: it goes by [traffic] stores.
    assert set(recipients) == {"basic.example", "exchange.example"}
    assert abs(recipients["basic.example"] - recipients["exchange.example"]) < \
        0.1 * len(plan)
    assert all(len(p.recipients) == 2 for p in plan)
    null = [p for p in plan if p.sender == ""]
    assert 0.4 < len(null) / len(plan) < 0.6
    assert b"Message-ID: <rehearsal-" in render_message(null[0], "UTC")


def test_sizes_follow_the_profile_under_the_server_limit(tmp_path: Path) -> None:
    profile = week_profile()
    plan = plan_traffic(scenario(tmp_path, profile), 1)
    sizes = sorted(p.size for p in plan)
    profile_median = sorted(low for low, _, n in profile.sizes for _ in range(n))[
        profile.totals.messages // 2]
    assert 0.8 < sizes[len(sizes) // 2] / profile_median < 1.25
    data = copy.deepcopy(BASE)
    save_profile(profile, tmp_path / "week.json")
    data["traffic"] = {"profile": "week.json"}
    data["server"] = {"smtp": {"max_message_size": "16KiB"}}
    capped = plan_traffic(scenario_from_dict(data, str(tmp_path / "s.toml")), 1)
    assert max(p.size for p in capped) == 16 * 1024


@pytest.mark.parametrize(("traffic", "message"), [
    ({"profile": 3}, "traffic.profile: give 24 hourly weights (a list) or a traffic profile "
                     "file (a string, e.g. \"profile.json\"), not 3"),
    ({"profile": ""}, "traffic.profile: name a traffic profile file"),
    ({"profile": "missing.json"}, "traffic.profile: "),
    ({"profile": "week.json", "rate": 10}, "traffic.rate: not used with a traffic profile"),
    ({"profile": "week.json", "senders": {"a.example": 1}}, "traffic.senders: not used"),
    ({"scale": 0.1}, "traffic.scale: applies to a traffic profile (profile = \"FILE\")"),
    ({"profile": [1.0] * 24, "shift": "week"}, "traffic.shift: applies to a traffic profile"),
    ({"profile": "week.json", "scale": 0}, "traffic.scale: give a positive number"),
    ({"profile": "week.json", "scale": "1/x"}, "traffic.scale: give a positive number"),
    ({"profile": "week.json", "scale": True}, "traffic.scale: give a positive number"),
    ({"profile": "week.json", "shift": "next tuesday"},
     "traffic.shift: give \"week\" or the time of the log that plays at the scenario's start"),
])
def test_bad_traffic_values_are_one_line_naming_the_key(tmp_path: Path, traffic: dict[str, Any],
                                                        message: str) -> None:
    save_profile(week_profile(days=1), tmp_path / "week.json")
    data = copy.deepcopy(BASE)
    data["traffic"] = traffic
    with pytest.raises(ScenarioError) as info:
        scenario_from_dict(data, str(tmp_path / "s.toml"))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith(str(tmp_path / "s.toml") + ": ")


def test_hourly_weights_stay_synthetic_traffic(tmp_path: Path) -> None:
    data = copy.deepcopy(BASE)
    data["traffic"] = {"rate": 50, "profile": [1.0] * 24}
    loaded = scenario_from_dict(data, "s.toml")
    assert loaded.replay is None and len(plan_traffic(loaded, 1)) > 500


def test_the_june_scenario_takes_a_profile_from_the_command_line(tmp_path: Path) -> None:
    from mailqueue.rehearsal.scenario import load_scenario

    save_profile(week_profile(), tmp_path / "week.json")
    june = load_scenario(SCENARIOS / "june-2019-upgrade.toml")
    replayed = with_profile(june, str(tmp_path / "week.json"), "1/20")
    assert replayed.replay is not None and replayed.file.traffic.connections == 8
    assert replayed.file.traffic.stores == june.file.traffic.stores
    plan = plan_replay(replayed, 1)
    by_day = Counter(datetime.fromtimestamp(p.at, CHICAGO).strftime("%a") for p in plan)
    assert by_day["Sat"] > by_day["Fri"] > by_day["Thu"]  # the log's own week, day by day


@pytest.fixture
def mq(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Mq:
    return cli_runner(capsys, monkeypatch)


def test_rehearse_profile_options_are_one_line_errors(tmp_path: Path, mq: Mq) -> None:
    june = SCENARIOS / "june-2019-upgrade.toml"
    one_line_error(mq("rehearse", june, "--scale", "0.1"),
                   "--scale and --shift apply to a traffic profile: give --profile FILE")
    one_line_error(mq("rehearse", june, "--profile", tmp_path / "none.json"),
                   "--profile: ", "none.json: no such file")
    save_profile(week_profile(days=1), tmp_path / "week.json")
    one_line_error(mq("rehearse", june, "--profile", tmp_path / "week.json", "--scale", "-1"),
                   "--scale: give a positive number")
    one_line_error(mq("rehearse", june, "--profile", tmp_path / "week.json", "--shift",
                      "soon"), "--shift: give \"week\" or the time of the log")
