"""Traffic plans: fixed by the seed, shaped by the profile and the timeline."""

from __future__ import annotations

import copy
from typing import Any

from mailqueue.rehearsal.scenario import scenario_from_dict
from mailqueue.rehearsal.traffic import plan_traffic, render_message
from tests.unit.test_scenario import BASE


def scenario(**traffic: Any) -> Any:
    data = copy.deepcopy(BASE)
    data["traffic"] = {"rate": 100, **traffic}
    data["events"] = [{"at": "2019-06-27 00:00", "action": "traffic", "factor": 0.0}]
    return scenario_from_dict(data, "t.toml")


def test_same_seed_same_plan() -> None:
    s = scenario(recipients=[0.5, 0.5])
    assert plan_traffic(s, 3) == plan_traffic(s, 3)
    assert plan_traffic(s, 3) != plan_traffic(s, 4)


def test_rate_follows_events_and_profile() -> None:
    plan = plan_traffic(scenario(), 1)
    cutoff = 1561611600  # 2019-06-27 00:00 CDT, when the factor drops to 0
    assert all(p.at < cutoff for p in plan)
    assert 900 < len(plan) < 1300  # 12 h at 100 an hour
    night = [1.0] * 24
    night[13] = 0.0
    quiet = plan_traffic(scenario(profile=night), 1)
    assert not [p for p in quiet if 1561572000 <= p.at < 1561575600]  # 13:00-14:00 CDT


def test_messages_go_to_the_configured_stores() -> None:
    plan = plan_traffic(scenario(recipients=[0, 0, 1], stores={"basic": 1.0},
                                 size_median=2048, size_max=4096), 1)
    assert all(len(p.recipients) == 3 for p in plan)
    assert all(r.endswith("@basic.example") for p in plan for r in p.recipients)
    data = render_message(plan[0], "America/Chicago")
    assert b"X-Rehearsal-Id: 1\r\n" in data and len(data) <= 4096 + 200
