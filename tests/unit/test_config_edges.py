"""Config and scenario values that would validate loosely but cannot work (non-finite
numbers, booleans for integers, zero where zero cannot work, empty lists that would mean
"all", times and durations out of range): one line naming the key, through the real
command line, and nothing created."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_run import Mq, cli_runner, one_line_error, write_config

WINDOW = '\n[[windows]]\nname = "w"\nstart = "2030-01-01T00:00:00Z"\nend = "2030-01-02T00:00:00Z"\n'


@pytest.fixture
def mq(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Mq:
    return cli_runner(capsys, monkeypatch)


@pytest.mark.parametrize(("text", "says"), [
    # non-finite numbers, wherever a number goes
    ("[delivery]\nmax_rate = inf\n", "delivery.max_rate: Input should be a finite number"),
    ("[delivery]\nmax_rate = nan\n", "delivery.max_rate: Input should be a finite number"),
    ("[delivery]\nramp_from = nan\n", "delivery.ramp_from: Input should be a finite number"),
    ("[queue.retry]\nmultiplier = inf\n", "queue.retry.multiplier"),
    ("[queue.retry]\njitter = nan\n", "queue.retry.jitter"),
    ("[smtp]\nshutdown_grace = inf\n", "smtp.shutdown_grace: duration inf is out of range"),
    ("[delivery]\nlease = -inf\n", "delivery.lease"),
    # booleans, floats or text where an integer goes; text where a boolean goes
    ("[smtp]\nport = true\n", "smtp.port: Input should be a valid integer"),
    ("[smtp]\nport = 2525.0\n", "smtp.port: Input should be a valid integer"),
    ("[smtp]\nport = \"2525\"\n", "smtp.port: Input should be a valid integer"),
    ("[smtp]\nmax_connections = true\n", "smtp.max_connections"),
    ("[delivery]\nbatch_size = false\n", "delivery.batch_size"),
    ("[queue]\ncommit_batch = true\n", "queue.commit_batch"),
    ("[admin]\nport = true\n", "admin.port"),
    ("[admin]\nenabled = 1\n", "admin.enabled: Input should be a valid boolean"),
    ("[queue]\nwindow_time_counts = \"yes\"\n", "queue.window_time_counts"),
    ("[delivery]\nmax_rate = true\n", "delivery.max_rate: Input should be a valid number"),
    ("[smtp]\ntimeout = true\n", "smtp.timeout: not a duration: True"),
    # zero where zero cannot work
    ("[smtp]\ntimeout = 0\n", "smtp.timeout: Input should be greater than 0"),
    ("[delivery]\npoll_interval = 0\n", "delivery.poll_interval: Input should be greater"),
    ("[delivery]\nlease = \"0s\"\n", "delivery.lease: Input should be greater than 0"),
    ("[delivery]\nreclaim_interval = 0\n", "delivery.reclaim_interval"),
    ("[queue.retry]\ninitial_delay = 0\n", "queue.retry.initial_delay"),
    ("[queue.retry]\nmax_delay = \"0m\"\n", "queue.retry.max_delay"),
    ("[queue]\nmax_bytes = 0\n", "queue.max_bytes: Input should be greater than or equal to 1"),
    # an empty list that would silently mean "every store"
    (WINDOW.replace('name = "w"', 'name = "w"\nstores = []'),
     "windows[0].stores: an empty list names no store"),
    # durations, times and sizes out of range
    ("[queue]\nmax_lifetime = \"3000000d\"\n",
     "queue.max_lifetime: duration '3000000d' is out of range: a duration is at most 100 "
     "years (36500d)"),
    ("[queue.retry]\nmax_delay = \"3000000d\"\n", "queue.retry.max_delay: duration"),
    ("[queue]\nmax_lifetime = 1e300\n", "queue.max_lifetime: duration 1e+300 is out of range"),
    ("[queue]\ndelay_warning = \"99999999999999999999w\"\n", "queue.delay_warning"),
    ("[queue]\nmax_bytes = \"99999999999TiB\"\n",
     "queue.max_bytes: size '99999999999TiB' is out of range: a size is at most 8 EiB"),
    (WINDOW.replace('end = "2030-01-02T00:00:00Z"', 'end = "9999-12-31T23:00:00-05:00"'),
     "windows[0]: end: time '9999-12-31T23:00:00-05:00' is out of range: use a time between "
     "1970-01-01 and 9999-12-31 (UTC)"),
    (WINDOW.replace('start = "2030-01-01T00:00:00Z"', 'start = "1960-01-01T00:00:00Z"'),
     "windows[0]: start: time '1960-01-01T00:00:00Z' is out of range"),
    (WINDOW.replace('name = "w"', 'name = "bad name!"'), "windows[0].name: use letters"),
    # a name that goes on the wire and into headers
    ("[smtp]\nhostname = \"mx.example.com\\r\\nX-Injected: 1\"\n",
     "smtp.hostname: 'mx.example.com\\r\\nX-Injected: 1' is not a host name"),
    ("[smtp]\nhostname = \"mail server\"\n", "smtp.hostname: 'mail server' is not a host name"),
    ("[smtp]\nhostname = \"\"\n", "smtp.hostname: '' is not a host name"),
], ids=lambda v: v.strip().replace("\n", " ")[:60] if "[" in v else "")
def test_values_that_cannot_work_are_one_line_naming_the_key(
        tmp_path: Path, mq: Mq, text: str, says: str) -> None:
    config = write_config(tmp_path, text)
    one_line_error(mq("window", "list", "-c", config), f"{config}: {says}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mq.toml"]


SCENARIO = """
[scenario]
name = "t"
timezone = "America/Chicago"
start = "2027-03-02 16:00"
end = "2027-03-02 20:00"
{scenario}

[[stores]]
name = "basic"
domains = ["basic.example"]

[traffic]
rate = 10
{traffic}
{events}
"""


@pytest.mark.parametrize(("parts", "says"), [
    ({"scenario": "speed = inf"}, "scenario.speed: Input should be a finite number"),
    ({"scenario": "speed = true"}, "scenario.speed: Input should be a valid number"),
    ({"scenario": "sample = 0"}, "scenario.sample: Input should be greater than 0"),
    ({"scenario": "seed = true"}, "scenario.seed: Input should be a valid integer"),
    ({"traffic": "connections = 2.5"}, "traffic.connections"),
    ({"traffic": "size_sigma = nan"}, "traffic.size_sigma"),
    ({"traffic": 'stores = { basic = inf }'}, "traffic.stores.basic"),
    ({"events": '[[events]]\nat = "2027-03-02 17:00"\naction = "window.start"\n'
                'window = "bad name!"\nuntil = "2027-03-02 18:00"'}, "events[0].window"),
    ({"events": '[[events]]\nat = "2027-03-02 17:00"\naction = "node.slow"\nstore = "basic"\n'
                'latency = "3000000d"'}, "events[0].latency: duration '3000000d'"),
    ({"events": '[[events]]\nat = "2027-03-02 17:00"\naction = "node.flaky"\nstore = "basic"\n'
                f'fail_next = {2**40}'}, "events[0].fail_next"),
])
def test_scenario_values_that_cannot_work_are_one_line(tmp_path: Path, mq: Mq,
                                                       parts: dict[str, str], says: str) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(SCENARIO.format(**{"scenario": "", "traffic": "", "events": "",
                                           **parts}))
    one_line_error(mq("rehearse", scenario, "--out", tmp_path / "out"), f"{scenario}: {says}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]


def test_scenario_times_out_of_range(tmp_path: Path, mq: Mq) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(SCENARIO.format(scenario="", traffic="", events="").replace(
        '"2027-03-02 20:00"', '"9999-12-31 23:00"'))
    one_line_error(mq("rehearse", scenario, "--out", tmp_path / "out"),
                   "time '9999-12-31 23:00' is out of range")
