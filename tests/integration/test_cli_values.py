"""Times, durations, names and numbers from the command line: out of range or unusable is
one line before anything is stored, and nothing already stored breaks a read."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest

from mailqueue.config import load_config
from mailqueue.control.windows import Window, WindowState
from mailqueue.queue.sqlstore import SqlQueueStore
from tests.cli_run import Mq, cli_runner, one_line_error, write_config

HOUR = 3600.0
RANGE_TIME = "use a time between 1970-01-01 and 9999-12-31 (UTC)"
RANGE_DURATION = "a duration is at most 100 years (36500d)"


@pytest.fixture
def mq(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Mq:
    return cli_runner(capsys, monkeypatch)


@pytest.fixture
def config(tmp_path: Path, mq: Mq) -> Path:
    """A config whose queue exists and holds one active window, ``w``, ending in an hour."""
    path = write_config(tmp_path, '[queue]\nurl = "sqlite+aiosqlite:///queue.db"\n')
    assert mq("db", "upgrade", "-c", path).code == 0
    assert mq("window", "start", "w", "--for", "1h", "-c", path).code == 0
    return path


def windows(mq: Mq, config: Path) -> list[dict[str, object]]:
    listed = mq("window", "list", "--json", "-c", config)
    assert listed.code == 0, listed.err
    return [json.loads(line) for line in listed.out.splitlines()]


@pytest.mark.parametrize(("argv", "says"), [
    (["window", "start", "new", "--for", "3000000d"], RANGE_DURATION),
    (["window", "start", "new", "--until", "+3000000d"], RANGE_DURATION),
    (["window", "start", "new", "--until", "9999-12-31T23:00:00-05:00"], RANGE_TIME),
    (["window", "start", "new", "--until", "2030-01-01 12:00", "--timezone", "Mars/Base"],
     "unknown time zone 'Mars/Base'"),
    (["window", "start", "w", "--for", "3000000d"], RANGE_DURATION),
    (["window", "extend", "w", "--by", "3000000d"], RANGE_DURATION),
    (["window", "extend", "w", "--until", "1969-07-20T20:17:00Z"], RANGE_TIME),
    (["window", "extend", "w", "--until", "+3000000d"], RANGE_DURATION),
    (["window", "end", "w", "--wait", "--timeout", "3000000d"], RANGE_DURATION),
    (["queue", "list", "--older-than", "3000000d"], RANGE_DURATION),
    (["node", "set", "basic-1", "slow", "--latency", "3000000d"], RANGE_DURATION),
], ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_times_and_durations_out_of_range_are_one_line_and_store_nothing(
        mq: Mq, config: Path, argv: list[str], says: str) -> None:
    before = windows(mq, config)
    nodes_before = mq("node", "list", "--json", "-c", config).out
    one_line_error(mq(*argv, "-c", config), says)
    assert windows(mq, config) == before
    assert mq("node", "list", "--json", "-c", config).out == nodes_before


def test_an_extension_past_year_9999_is_refused(mq: Mq, config: Path) -> None:
    assert mq("window", "extend", "w", "--until", "9990-01-01T00:00:00Z", "-c", config
              ).code == 0
    before = windows(mq, config)
    one_line_error(mq("window", "extend", "w", "--by", "36500d", "-c", config),
                   "window 'w' would end at (time out of range", RANGE_TIME)
    assert windows(mq, config) == before


@pytest.fixture(params=["sqlite", "postgresql"])
def any_config(request: pytest.FixtureRequest, tmp_path: Path, mq: Mq) -> Path:
    """The ``config`` fixture's queue, in SQLite or in PostgreSQL."""
    if request.param == "sqlite":
        return Path(request.getfixturevalue("config"))
    url = request.getfixturevalue("pg_url")
    path = write_config(tmp_path, f'[queue]\nurl = "{url}"\n')
    assert mq("db", "upgrade", "-c", path).code == 0
    assert mq("window", "start", "w", "--for", "1h", "-c", path).code == 0
    return path


@pytest.mark.parametrize("end", [2.6e11, 1e300, math.inf], ids=["year-10240", "1e300", "inf"])
def test_a_stored_window_with_an_absurd_end_still_lists_and_ends(
        mq: Mq, any_config: Path, end: float) -> None:
    """A row no version of mailqueue should have stored: reads show it, ending it works."""
    config = any_config
    url = load_config(config, environ={}).queue.url

    async def store() -> None:
        queue = SqlQueueStore(url)
        await queue.open(create=False)
        try:
            await queue.save_window(Window(name="odd", stores=(), start=0.0, end=end,
                                           state=WindowState.ACTIVE, started_at=0.0))
        finally:
            await queue.close()

    asyncio.run(store())
    listed = mq("window", "list", "-c", config)
    assert listed.code == 0 and listed.err == ""
    line = next(x for x in listed.out.splitlines() if x.startswith("odd:"))
    assert "end=(time out of range" in line and "active" in line
    assert [w["end"] for w in windows(mq, config) if w["name"] == "odd"] == [
        f"(time out of range: {end:.6g})"]
    ended = mq("window", "end", "odd", "-c", config)
    assert ended.code == 0, ended.err
    assert mq("window", "list", "-c", config).code == 0


@pytest.mark.parametrize(("argv", "says"), [
    (["window", "start", "bad name!", "--for", "1h"],
     "window name 'bad name!': use letters, digits"),
    (["window", "start", ".hidden", "--for", "1h"], "window name '.hidden'"),
    (["window", "start", "a/b", "--for", "1h"], "window name 'a/b'"),
    (["window", "start", "new", "--for", "1h", "--stores", ","],
     "--stores: name at least one store"),
    (["window", "start", "new", "--for", "1h", "--stores", " , "],
     "--stores: name at least one store"),
    (["window", "start", "new", "--for", "1h", "--stores", "basic,nope"],
     "--stores: unknown store 'nope'"),
    (["queue", "list", "--limit", str(2**64)], "--limit"),
    (["node", "set", "basic-1", "flaky", "--fail-next", str(2**64)], "--fail-next"),
    (["node", "set", "basic-1", "flaky", "--failure-rate", "nan"],
     "'nan' is not a finite number"),
    (["node", "set", "nope-1", "down"], "no node 'nope-1' (known: basic-1"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_names_and_numbers_the_config_would_refuse_are_refused(
        mq: Mq, config: Path, argv: list[str], says: str) -> None:
    before = windows(mq, config)
    nodes_before = mq("node", "list", "--json", "-c", config).out
    one_line_error(mq(*argv, "-c", config), says)
    assert windows(mq, config) == before
    assert mq("node", "list", "--json", "-c", config).out == nodes_before


def test_a_window_for_some_stores_is_stored_with_them(mq: Mq, config: Path) -> None:
    started = mq("window", "start", "two", "--for", "1h", "--stores", "basic, basic", "-c",
                 config)
    assert started.code == 0, started.err
    assert [w["stores"] for w in windows(mq, config) if w["name"] == "two"] == [["basic"]]


@pytest.mark.parametrize("speed", ["inf", "nan", "-1", "0"])
def test_rehearse_speed_must_be_a_positive_finite_number(tmp_path: Path, mq: Mq,
                                                          speed: str) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text("")
    one_line_error(mq("rehearse", scenario, "--speed", speed, "--out", tmp_path / "out"),
                   "--speed")
    assert not (tmp_path / "out").exists()
